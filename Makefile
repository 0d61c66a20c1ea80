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
# Every other package at the exact version of the lock file (pip constraints), so that a fresh clone
# installs what was tested; `make lock` refreshes it. LOCK= (empty) installs the newest allowed versions.
LOCK ?= configs/lock.txt
# A CUDA build of torch pins its own Triton release: on a GPU machine the lock's Triton (the one the CPU
# tests ran) is left out.
LOCK_USED := $(if $(LOCK),$(if $(HAS_GPU),$(VENV)/lock-gpu.txt,$(LOCK)))
PIP_C := $(if $(LOCK_USED),-c $(LOCK_USED))

.PHONY: setup test demo demo-full lint format bench lock versions clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py Makefile $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if [ -n "$(HAS_GPU)" ] && [ -n "$(LOCK)" ]; then grep -v '^triton==' $(LOCK) > $(VENV)/lock-gpu.txt; fi
	$(PY) -m pip install -q $(PIP_C) --upgrade pip setuptools wheel
	@if [ -n "$(HAS_GPU)" ]; then echo "voxmix: NVIDIA GPU found: installing the CUDA build of torch $(TORCH_VERSION)"; \
	 else echo "voxmix: no GPU: installing the CPU build of torch $(TORCH_VERSION)"; fi
	$(PY) -m pip install -q $(PIP_C) "torch==$(TORCH_VERSION)" $(TORCH_PIP_ARGS)
	# --no-build-isolation: csrc/ compiles against the torch installed above, never a freshly fetched one.
	$(PY) -m pip install -q $(PIP_C) --no-build-isolation -e ".[train,dev]"
	@touch $(STAMP)

versions: setup
	@$(PY) scripts/versions.py $(if $(LOCK),--lock $(LOCK))

test: versions
	$(PY) -m pytest -q tests

# Newest allowed versions in a clean environment; lint + tests there; only then configs/lock.txt is replaced.
lock:
	PYTHON=$(PYTHON) TORCH_VERSION=$(TORCH_VERSION) TORCH_PIP_ARGS="$(TORCH_PIP_ARGS)" LOCK=$(or $(LOCK),configs/lock.txt) \
	  bash scripts/lock.sh

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
	rm -rf $(VENV) .venv-lock build *.egg-info .pytest_cache .ruff_cache
