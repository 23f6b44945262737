"""Token-weighted perplexity from summed negative log-likelihoods (an `evaluate` module kept in the repo).

The model forward pass stays in `bmwlm.modeling.evaluate_nll`; this module only turns what it
returns into a loss and a perplexity, so the arithmetic lives in one place and reads the same
everywhere. Each input row is one chunk of scored text (a window, or a batch of windows): the sum
of its next-token negative log-likelihoods (nats) and the number of tokens predicted in it. The loss
is the token-weighted mean, sum(nll) / sum(tokens), not a mean of per-chunk means, so a short
final window counts for exactly as many tokens as it has.

Load it without the model hub:
    metric = evaluate.load("/abs/path/to/metrics/perplexity")
    metric.compute(nll=[812.3, 20.1], tokens=[255, 9])

One import per line: evaluate's dependency scanner misreads `import a, b`.
"""
import math

import datasets
import evaluate

_DESCRIPTION = """
Token-weighted language-model loss and perplexity. Inputs are, per chunk of text, the summed
next-token negative log-likelihood in nats (`nll`) and the number of predicted tokens (`tokens`).
loss = sum(nll) / sum(tokens); perplexity = exp(loss).
"""

_KWARGS_DESCRIPTION = """
Args:
    nll (`list` of `float`): summed negative log-likelihood (natural log) of each chunk.
    tokens (`list` of `int`): number of tokens predicted in each chunk (> 0 in total).
Returns:
    loss (`float`): token-weighted mean negative log-likelihood per token.
    perplexity (`float`): exp(loss).
    tokens (`int`): total predicted tokens.
    chunks (`int`): number of chunks given.
Examples:
    >>> metric = evaluate.load("metrics/perplexity")
    >>> metric.compute(nll=[2 * math.log(10), math.log(10)], tokens=[2, 1])["perplexity"]
    10.000000000000002
"""

_CITATION = ""


class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"nll": datasets.Value("float64"), "tokens": datasets.Value("int64")}
            ),
        )

    def _compute(self, nll, tokens):
        if len(nll) != len(tokens):
            raise ValueError(f"nll has {len(nll)} entries but tokens has {len(tokens)}")
        if any(n < 0 for n in tokens):
            raise ValueError("token counts must not be negative")
        total_tokens = int(sum(tokens))
        if total_tokens <= 0:
            raise ValueError("no predicted tokens: cannot compute a perplexity")
        loss = math.fsum(float(x) for x in nll) / total_tokens
        return {
            "loss": loss,
            "perplexity": math.exp(loss),
            "tokens": total_tokens,
            "chunks": len(tokens),
        }
