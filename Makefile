# edgekd: every target builds .venv itself on first use, so a fresh clone needs only `make`.
#   make pipeline                      the whole staged pipeline on the embedded default dataset
#   make test                          lint + the test suite
#   make data ARGS="data.generator.size=tiny"   any stage target takes key.sub=value overrides
#   make <training target> NPROC=2     runs a training target under torchrun (DDP)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.edgekd-setup
CONFIG ?= configs/pipelines/default.yaml
ARGS   ?=
NPROC  ?= 1
PYTEST_ARGS ?=
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
EDGEKD := $(VENV)/bin/edgekd
# A training command runs as `edgekd` for one process and under torchrun (`-m pipeline`, the same CLI) for several.
TRAIN_RUN = $(if $(filter 1,$(NPROC)),$(EDGEKD),$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC) -m pipeline)

.DEFAULT_GOAL := help
.PHONY: test-fast help setup fashion-mnist data teacher student distill export quantize qat qat-ablation ablation detection-errors ablation-heads pipeline status report bench-train bench-openvino bench-openvino-layers bench-nms export-trt benchmark test lint clean

help: ## list the targets
	@echo "edgekd stages (pipeline/stage_table.py; each takes ARGS=\"key.sub=value ...\", CONFIG=path, NPROC=N):"
	@$(PYTHON) -m pipeline.stage_table
	@echo "other targets:"
	@grep -E '^[a-z][a-z0-9-]*:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# A stage of pipeline/stage_table.py with no target below runs as `edgekd run --stages <it>` (a name that is
# no stage ends with edgekd's one line listing the stages).
.DEFAULT:
	@$(MAKE) --no-print-directory $(STAMP)
	$(EDGEKD) run --config $(CONFIG) --stages $@ $(ARGS)

setup: $(STAMP) ## build .venv once (torch, runtimes, dev tools) and install Fashion-MNIST

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --disable-pip-version-check -q -e ".[dev]"
	@$(MAKE) --no-print-directory fashion-mnist
	@touch $@
	@echo "setup done: $(VENV)"

fashion-mnist: ## install Debian's dataset-fashion-mnist when running as root and it is missing
	@if [ -f $(FASHION_MNIST) ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian package dataset-fashion-mnist"; \
	  apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; } || \
	  echo "warning: apt-get could not install dataset-fashion-mnist; the generator will try torchvision's download"; \
	else \
	  echo "note: $(FASHION_MNIST) is missing and this is not root: the generator will try torchvision's download"; \
	  echo "      (or set data.generator.fashion_mnist_dir to a folder holding the four idx .gz files)"; \
	fi

data: $(STAMP)
	$(EDGEKD) run --config $(CONFIG) --stages data $(ARGS)

teacher: $(STAMP)
	$(TRAIN_RUN) train --config $(CONFIG) --role teacher --resume teacher.checkpoint=null $(ARGS)

student: $(STAMP)
	$(TRAIN_RUN) train --config $(CONFIG) --role student --resume $(ARGS)

distill: $(STAMP)
	$(TRAIN_RUN) distill --config $(CONFIG) --resume $(if $(TEACHER),--teacher $(TEACHER)) $(if $(METHOD),distill.method=$(METHOD)) $(ARGS)

export: $(STAMP)
	$(EDGEKD) export --config $(CONFIG) $(ARGS)

quantize: $(STAMP)
	$(EDGEKD) quantize --config $(CONFIG) $(ARGS)

qat: $(STAMP)
	$(EDGEKD) run --config $(CONFIG) --stages qat $(ARGS)

qat-ablation: $(STAMP) ## benchmark: QAT with the task losses alone, BCKD, softmax KD -> runs/<run>/qat-ablation/qat-ablation.md
	$(EDGEKD) qat-ablation --config $(CONFIG) $(ARGS)

export-trt: $(STAMP) ## TensorRT engine (PRECISION=fp32|fp16|int8) on a GPU box or Jetson -> runs/<run>/engines/
	$(EDGEKD) engines --config $(CONFIG) --precision $(or $(PRECISION),fp16) $(ARGS)

benchmark: $(STAMP)
	$(EDGEKD) benchmark --config $(CONFIG) $(ARGS)

ablation: $(STAMP) ## benchmark: student with none, kd, ld, bckd, bckd cls/loc only -> runs/ablation/ablation.md (SEEDS=0,1,2: mean and paired gain over seeds)
	$(EDGEKD) ablation --config $(CONFIG) $(if $(TEACHER),--teacher $(TEACHER)) $(if $(SEEDS),--seeds $(SEEDS)) $(ARGS)

detection-errors: $(STAMP) ## diagnostic: AP50 each error type costs (TIDE) for PRED='runs/ablation/*/predictions.json'
	$(EDGEKD) detection-errors $(or $(PRED),$(wildcard runs/ablation/*/predictions.json)) $(ARGS)

ablation-heads: $(STAMP) ## benchmark: RetinaNet, FCOS, ATSS teacher, student alone and BCKD -> runs/ablation-heads/
	$(EDGEKD) ablation-heads --config $(CONFIG) $(if $(HEADS),--heads $(HEADS)) $(ARGS)

bench-train: $(STAMP) ## seconds per step, images/s and peak memory of teacher and student training
	$(EDGEKD) bench-train --config $(CONFIG) --json runs/bench-train.json $(ARGS)

bench-openvino: $(STAMP) ## our OpenVINO latency vs benchmark_app on the quantize stage's IRs (RUN=default)
	$(EDGEKD) bench-openvino $(wildcard runs/$(or $(RUN),default)/quantize/openvino/model_*.xml) $(ARGS)

bench-openvino-layers: $(STAMP) ## where the OpenVINO FP32/FP16/INT8 IRs spend their time, per layer kind (RUN=default)
	$(EDGEKD) bench-openvino --layers --json runs/bench-openvino-layers.json \
		$(addprefix runs/$(or $(RUN),default)/quantize/openvino/model_,fp32.xml fp16.xml int8.xml) $(ARGS)

bench-nms: $(STAMP) ## deploy/'s numpy NMS against torchvision's, same kept set checked -> runs/bench-nms.json
	$(EDGEKD) bench-nms $(ARGS)

pipeline: $(STAMP) ## every stage, skipping those done, resuming the interrupted (FROM=stage reruns from it; METHOD=kd ...)
	$(EDGEKD) run --config $(CONFIG) $(if $(FROM),--from $(FROM)) $(if $(METHOD),distill.method=$(METHOD)) $(ARGS)

status: $(STAMP) ## each stage of the run: done, stale (settings or inputs changed), failed or pending
	$(EDGEKD) status --config $(CONFIG) $(ARGS)

report: $(STAMP)
	$(EDGEKD) run --config $(CONFIG) --stages report $(ARGS)

lint: $(STAMP) ## ruff over the project
	$(VENV)/bin/ruff check .

test: $(STAMP) lint ## lint, then the test suite (what CI runs)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) lint ## lint, then every test not marked slow (over 5 s): the subset to run while editing
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

clean: ## remove runs/ (keeps .venv and data/)
	rm -rf runs
