# trtq: two commands on a fresh machine — `make demo` and `make test`. Both install what they need.
PYTHON     ?= python3
VENV       ?= .venv
# The CPU build of torch 2.13.0 lies on this workplace's disk; on a GPU machine pass TORCH_SPEC='torch'.
TORCH_SPEC ?= torch==2.13.0
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed
OUT        ?= out
# make run / make profile: MODEL (zoo name or model dir), RECIPE or ARTIFACT (neither: FP), BACKEND(S), STEPS, DEVICE
# make build-engine: MODEL, RECIPE, the batch profile MIN:OPT:MAX and (optional) latent resolution MIN:OPT:MAX
MODEL      ?= digits-unet
RECIPE     ?= w8a8-minmax
ARTIFACT   ?=
BACKEND    ?= auto
BACKENDS   ?= eager,onnxruntime
STEPS      ?= 20
DEVICE     ?= cpu
LABELS     ?= 0,1,2,3,4,5,6,7,8,9
PROFILE    ?= 1:2:4
RESOLUTION ?=
SOURCE_ARG  = $(if $(ARTIFACT),--artifact $(ARTIFACT),$(if $(RECIPE),--recipe $(RECIPE),))

.PHONY: run profile install demo test test-all build-engine train-zoo table-winograd table-hqdit table-w8a8 gpu-check bench fuzz clean help

help:
	@echo "make demo       quantize the zoo models, sample FP vs quantized, write $(OUT)/demo/report.md + grid.png"
	@echo "make test       run the test suite (GPU/TensorRT tests skip with a reason on machines without them)"
	@echo "make test-all   the test suite plus the slow tier (the full export matrix: every recipe family x model)"
	@echo "make build-engine MODEL=digits-unet RECIPE=w8a8-minmax PROFILE=1:2:4 [RESOLUTION=16:32:64]"
	@echo "                export to ONNX and build a TensorRT engine into engines/ (needs TensorRT + a CUDA GPU)"
	@echo "make train-zoo  retrain the embedded digits models (seeded; uses CUDA when present)"
	@echo "make table-winograd  docs/winograd.md: Winograd W8A8 ablations on digits-unet"
	@echo "make table-hqdit     docs/hqdit.md: FP4 W4A4 / HQ-DiT ablations on digits-dit and digits-unet"
	@echo "make table-w8a8      docs/w8a8.md: W8A8 recipes vs modelopt, per-layer-class sensitivity"
	@echo "make gpu-check  the tests that need a CUDA GPU (pytest -m gpu)"
	@echo "make bench      kernel + model benchmarks on a CUDA GPU -> docs/benchmarks/{winograd,fp4}-<gpu>.{json,md}"
	@echo "make fuzz       20,000 seeded artifact/recipe mutations + 300 on a zoo artifact (0 failures allowed)"
	@echo "make run        images for LABELS on an accelerated pipeline -> $(OUT)/run/ (PNGs, grid.png, run.json)"
	@echo "                MODEL=$(MODEL) RECIPE=$(RECIPE) (or ARTIFACT=dir; RECIPE= for FP) BACKEND=$(BACKEND)"
	@echo "                (auto|eager|torch|onnxruntime|tensorrt) STEPS=$(STEPS) DEVICE=$(DEVICE) LABELS=$(LABELS)"
	@echo "make profile    latency per image/step and time per layer class, FP vs quantized, one bar per backend"
	@echo "                -> $(OUT)/profile/ (profile.json, latency.png, layers.png); MODEL RECIPE ARTIFACT DEVICE as"
	@echo "                above, BACKENDS=$(BACKENDS) (comma-separated), STEPS=$(STEPS); CPU numbers are labelled so"
	@echo "make install    create $(VENV) with trtq and its dependencies"

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,modelopt]"
	# TensorRT's type stubs, for mypy; --no-deps: their `tensorrt` dependency downloads from NVIDIA at install
	$(PY) -m pip install -q --no-deps "tensorrt-stubs==10.13.0.35.1"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/trtq demo --out $(OUT)/demo

run: $(STAMP)
	$(VENV)/bin/trtq run --model $(MODEL) $(SOURCE_ARG) --backend $(BACKEND) --steps $(STEPS) --device $(DEVICE) \
		--labels $(LABELS) --out $(OUT)/run

profile: $(STAMP)
	$(VENV)/bin/trtq profile --model $(MODEL) $(SOURCE_ARG) --backends $(BACKENDS) --steps $(STEPS) \
		--device $(DEVICE) --out $(OUT)/profile

# CI's tier: everything but the `slow` matrix (each export family once, each model once). test-all adds it.
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q

# Exports MODEL with RECIPE to out/onnx/ and checks it, then builds engines/<key>/ (a cache hit if built
# before). Without TensorRT or a GPU it stops after the export with one line and exit status 2.
build-engine: $(STAMP)
	$(VENV)/bin/trtq build --model $(MODEL) --recipe $(RECIPE) --batch $(PROFILE) $(if $(RESOLUTION),--resolution $(RESOLUTION))

train-zoo: $(STAMP)
	$(PY) -m trtq.zoo.train --out trtq/zoo/weights

table-winograd: $(STAMP)
	$(PY) -m trtq.eval.tables.winograd --out docs/winograd.md

table-hqdit: $(STAMP)
	$(PY) -m trtq.eval.tables.hqdit --out docs/hqdit.md

table-w8a8: $(STAMP)
	$(PY) -m trtq.eval.tables.w8a8 --out docs/w8a8.md

gpu-check: $(STAMP)
	$(PY) -m pytest -q -m gpu

# Benchmarks need a CUDA GPU (each exits 2 with one line where there is none).
bench: $(STAMP)
	$(PY) -m trtq.bench.winograd --out docs/benchmarks
	$(PY) -m trtq.bench.fp4 --out docs/benchmarks

fuzz: $(STAMP)
	$(PY) -m trtq.io.fuzz --cases 20000 --zoo-cases 300

clean:
	rm -rf $(OUT) .pytest_cache
