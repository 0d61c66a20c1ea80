# voxmix: `make demo` and `make test` set up .venv themselves (idempotent; fast once set up).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.voxmix-installed
# torch is installed first and explicitly. Without an NVIDIA GPU the CPU build is used; where no local
# CPU wheel is configured for pip, pass TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu".
TORCH_VERSION  ?= 2.13.0
TORCH_PIP_ARGS ?=
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)

.PHONY: setup test demo demo-full lint format bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	@if [ -n "$(HAS_GPU)" ]; then echo "voxmix: NVIDIA GPU found: installing the CUDA build of torch $(TORCH_VERSION)"; \
	 else echo "voxmix: no GPU: installing the CPU build of torch $(TORCH_VERSION)"; fi
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)" $(TORCH_PIP_ARGS)
	# --no-build-isolation: csrc/ compiles against the torch installed above, never a freshly fetched one.
	$(PY) -m pip install -q --no-build-isolation -e ".[train,dev]"
	@touch $(STAMP)

test: setup
	$(PY) -m pytest -q tests

demo: setup
	$(PY) scripts/demo.py

# The demo, then the full downstream protocol (5 seeds, scratch control): about 6 more minutes on 2 cores.
demo-full: setup
	$(PY) scripts/demo.py --downstream no
	$(PY) -m trainer.compare_encoders demo/final/final-proportional/encoder.pt \
	  demo/final/final-transfer_aware/encoder.pt --names proportional,transfer_aware --config cpu_full \
	  --seeds 5 --scratch --phantoms demo/downstream --out demo/downstream/comparison_full.json

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) benchmarks/bench_lawfit.py
	$(PY) benchmarks/bench_loader.py --quick
	$(PY) benchmarks/bench_patch_embed.py --threads 1
	$(PY) benchmarks/bench_mae_loss.py --threads 1
	$(PY) benchmarks/bench_attention.py --threads 1
	$(PY) benchmarks/bench_train.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
