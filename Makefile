# trtq: two commands on a fresh machine — `make demo` and `make test`. Both install what they need.
PYTHON     ?= python3
VENV       ?= .venv
# The CPU build of torch 2.13.0 lies on this workplace's disk; on a GPU machine pass TORCH_SPEC='torch'.
TORCH_SPEC ?= torch==2.13.0
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed
OUT        ?= out

.PHONY: install demo test train-zoo table-winograd table-hqdit gpu-check clean help

help:
	@echo "make demo       quantize the zoo models, sample FP vs quantized, write $(OUT)/demo/report.md + grid.png"
	@echo "make test       run the test suite (GPU/TensorRT tests skip with a reason on machines without them)"
	@echo "make train-zoo  retrain the embedded digits models (seeded; uses CUDA when present)"
	@echo "make table-winograd  docs/winograd.md: Winograd W8A8 ablations on digits-unet"
	@echo "make table-hqdit     docs/hqdit.md: FP4 W4A4 / HQ-DiT ablations on digits-dit and digits-unet"
	@echo "make gpu-check  the tests that need a CUDA GPU (pytest -m gpu)"
	@echo "make install    create $(VENV) with trtq and its dependencies"

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,modelopt]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/trtq demo --out $(OUT)/demo

test: $(STAMP)
	$(PY) -m pytest -q

train-zoo: $(STAMP)
	$(PY) -m trtq.zoo.train --out trtq/zoo/weights

table-winograd: $(STAMP)
	$(PY) -m trtq.eval.tables.winograd --out docs/winograd.md

table-hqdit: $(STAMP)
	$(PY) -m trtq.eval.tables.hqdit --out docs/hqdit.md

gpu-check: $(STAMP)
	$(PY) -m pytest -q -m gpu

clean:
	rm -rf $(OUT) .pytest_cache
