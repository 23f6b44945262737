"""Block removal, parameter counting and packing on tiny random GPT-2 and Llama models."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from bmwlm.modeling import count_parameters, evaluate_nll, get_blocks, load_model, model_slug, remove_block
from bmwlm.windows import pack_documents


@pytest.fixture(params=["tiny_gpt2_dir", "tiny_llama_dir"])
def tiny_model_dir(request):
    return request.getfixturevalue(request.param)


def test_removing_a_block_keeps_forward_backward_generate_save_and_reload_working(tiny_model_dir, tmp_path):
    model = load_model(tiny_model_dir)
    before = count_parameters(model)
    remove_block(model, 1)
    assert len(get_blocks(model)) == 3
    assert count_parameters(model) < before
    ids = torch.randint(0, 100, (2, 16))
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    model.eval()
    gen = model.generate(ids[:1, :4], max_new_tokens=5, do_sample=False, use_cache=True)
    assert gen.shape[1] == 9
    no_cache = model.generate(ids[:1, :4], max_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(gen, no_cache)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert len(get_blocks(reloaded)) == 3
    assert reloaded.config.num_hidden_layers == 3
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, reloaded(ids).logits, atol=1e-5)


def test_removed_block_is_the_requested_one_and_the_rest_are_renumbered(tiny_model_dir):
    model = load_model(tiny_model_dir)
    kept = [get_blocks(model)[i] for i in (0, 1, 3)]
    remove_block(model, 2)
    assert list(get_blocks(model)) == kept
    # every module that knows its block's position (the KV cache's layer_idx) now says where it sits
    positions = [{m.layer_idx for m in b.modules() if hasattr(m, "layer_idx")} for b in get_blocks(model)]
    assert positions == [{0}, {1}, {2}]
    assert model.config.num_hidden_layers == 3


def test_remove_block_rejects_missing_index(tiny_model_dir):
    model = load_model(tiny_model_dir)
    with pytest.raises(IndexError, match="4 blocks"):
        remove_block(model, 4)


def test_packing_leaves_no_padding_and_crosses_documents_only_after_eos():
    eos = 0
    docs = [[5, 6, 7], [8, 9], [10, 11, 12, 13, 14], [15]]
    blocks = pack_documents(docs, block_size=4, eos_id=eos)
    assert all(len(b) == 4 for b in blocks)
    flat = [t for b in blocks for t in b]
    stream = [5, 6, 7, 0, 8, 9, 0, 10, 11, 12, 13, 14, 0, 15, 0]
    assert flat == stream[: len(flat)]
    # every switch from one document to the next is preceded by EOS
    doc_of = {t: i for i, d in enumerate(docs) for t in d}
    for a, b in zip(flat, flat[1:]):
        if a != eos and b != eos:
            assert doc_of[a] == doc_of[b]


def test_model_slug_names_default_and_paths():
    assert model_slug("smollm2-135m") == "SmolLM2-135M"
    assert model_slug("openai-community/gpt2") == "gpt2"
    assert model_slug("/x/y/my-model/") == "my-model"


def test_packing_with_tail_keeps_every_token_for_evaluation():
    blocks = pack_documents([[5, 6, 7], [8, 9]], block_size=4, eos_id=0, keep_tail=True)
    assert blocks == [[5, 6, 7, 0], [8, 9, 0]]


def test_evaluate_nll_counts_every_predicted_token_and_matches_the_model_loss(tiny_llama_dir):
    model = load_model(tiny_llama_dir)
    blocks = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12, 13]]
    nll, n = evaluate_nll(model, blocks, batch_size=2, bf16=False)
    assert n == 4 + 4 + 2
    with torch.no_grad():
        ids = torch.tensor(blocks[:2])
        loss2 = model(input_ids=ids, labels=ids).loss.item()
        loss1 = model(input_ids=torch.tensor(blocks[2:]), labels=torch.tensor(blocks[2:])).loss.item()
    assert nll == pytest.approx(loss2 * 8 + loss1 * 2, rel=1e-4)
