# ShiftRec — the list of verbs. CI calls `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PROTO_SRC := $(wildcard protos/shiftrec/v1/*.proto)
GEN_STAMP := gen/.stamp
DATASETS ?= ../shared/datasets
SOAK_MINUTES ?= 10

.PHONY: help setup protos demo test lint bench-ingest bench-serve bench-cuda bench-scale bench-quality bench-train report-train bench-transfer bench-drift bench-migration soak clean

help:  ## list the verbs
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	mkdir -p gen/shiftrec/v1 && touch gen/shiftrec/__init__.py gen/shiftrec/v1/__init__.py
	$(BIN)/pip install -q -c constraints.txt -e '.[train,dev]'
	touch $@

setup: $(STAMP) $(GEN_STAMP)  ## create .venv, install pinned dependencies, generate proto code

$(GEN_STAMP): $(PROTO_SRC) $(STAMP)
	rm -rf gen/shiftrec/v1 && mkdir -p gen/shiftrec/v1
	$(BIN)/python -m grpc_tools.protoc -I protos --python_out=gen --pyi_out=gen --grpc_python_out=gen $(PROTO_SRC)
	touch gen/shiftrec/__init__.py gen/shiftrec/v1/__init__.py
	touch $@

protos: $(GEN_STAMP)  ## generate Python code and .pyi stubs from protos/ into gen/

demo: setup  ## the whole pipeline end to end on embedded defaults (DATA=path for real data)
	$(BIN)/shiftrec demo $(if $(DATA),--data $(DATA))

test: lint  ## ruff and mypy, then the whole test suite
	$(BIN)/python -m pytest -q tests

lint: setup  ## ruff over the code and tests; mypy over services/, shared/ and app/ (pyproject.toml)
	$(BIN)/ruff check services training shared app tests
	$(BIN)/mypy

bench-ingest: setup  ## events/s through gRPC into SQLite and PostgreSQL vs the raw insert rate
	$(BIN)/python -m tests.bench.ingest --out var/bench/ingest.json

bench-serve: setup  ## Recommend p50/p95/p99 end to end at fixed rates; ONNX Runtime vs PyTorch eager
	$(BIN)/python -m tests.bench.serve --datasets $(DATASETS) --out var/bench/serve.json

bench-cuda: setup  ## model alone on a GPU: ORT CUDA vs CPU vs PyTorch, 12k and 1M items, batch 1/32/256 (says so without one)
	$(BIN)/python -m tests.bench.cuda --out var/bench/cuda.json

bench-scale: setup  ## store growth to 10M events; catalogue to 1M items (model call, RSS); Recommend end to end at 12k/100k/1M (retrieval path, recall); PNG
	$(BIN)/python -m tests.bench.scale --out var/bench/scale.json

bench-quality: setup  ## served = evaluated: import (holdout 1), train from the store, serve, HR/NDCG vs offline
	$(BIN)/python -m tests.bench.quality --datasets $(DATASETS) --out var/bench/quality.json

bench-train: setup  ## seconds per epoch, time to NDCG@10 0.05, peak memory (CPU; --device cuda on a GPU box)
	$(BIN)/python -m training.experiments.bench --datasets $(DATASETS) --out var/bench/train.json

report-train: setup  ## quality table: Beauty + Sports, model 3 seeds, ablation 1, baselines (resumable; ~2.6 h on 2 cores)
	$(BIN)/python -m training.experiments.report --datasets $(DATASETS) --seeds 3 --ablation-seeds 1 --out var/reports/training

bench-transfer: setup  ## Sports -> Beauty at 5/20/100 % of users, cold-start items, temporal fine-tune, shared shoppers
	$(BIN)/python -m training.experiments.transfer --datasets $(DATASETS) --out var/bench/transfer.json

bench-drift: setup  ## AUC of the drift score as a predictor of a next event in a new category
	$(BIN)/python -m tests.bench.drift --datasets $(DATASETS) --out var/bench/drift.json

bench-migration: setup  ## P(move) AUC/ECE, destinations, moved/stayed NDCG vs the model before and baselines (resumable; ~1.25 h)
	$(BIN)/python -m tests.bench.migration --datasets $(DATASETS) --domains Sports_and_Outdoors,Beauty \
		--seeds 1,3 --coarse-seeds 0,1 --max-minutes 28 --out var/bench/migration.json

soak: setup  ## Recommend 200/s + 10,000 events/s for SOAK_MINUTES (default 10): errors, p99, memory growth
	$(BIN)/python -m tests.soak.run --minutes $(SOAK_MINUTES) --out var/bench/soak.json

clean:  ## remove generated code, the virtualenv and local data
	rm -rf gen $(VENV) var .pytest_cache .mypy_cache
