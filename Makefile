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

.PHONY: setup test demo demo-full study lint format bench lock versions clean

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

# 5 phantom domains (incl. the positive control ct_abdomen_twin), 18 pilots of 2400 samples (pairs design),
# finals at 4x the largest pilot, proportional and law-optimal, 3 seeds each: made to fit 15 min on 2
# cores (the estimate is next to DEMO_PILOT_SAMPLES in trainer/study/options.py).
demo: setup
	$(PY) scripts/demo.py

# The demo, then the evaluation protocol (docs/downstream.md, "The evaluation protocol", round 3): the
# supervised positive control (trained on other phantoms' token labels), probes on the final and every
# layer's tokens, the side task, context tasks, label-efficiency curves, each MAE arm against random and
# the per-domain table, on the demo's final encoders (all seeds). Time on 2 cores: see docs/downstream.md.
# (scripts/evaluate_demo.py --control target runs round 2's target-domain controls instead.)
demo-full: setup
	$(PY) scripts/demo.py --downstream no
	$(PY) scripts/evaluate_demo.py --out demo

# The same loop at a larger scale, wanted within 60 min on 2 cores (not measured yet; estimated ~35-40 min
# with the demo's rates: 24 pilots ~8 min, fit ~5 min, 30 final runs at 2x/4x/8x ~23 min): + mri_abdomen
# (6 domains: 6 + 15 fitted pilots + 3 held out), 5 seeds per allocation, unseen budgets at 2x, 4x and 8x
# the largest pilot. Output in study/.
STUDY_DOMAINS := ct_abdomen ct_abdomen_twin ct_chest mri_abdomen mri_brain pet_wholebody
study: setup
	$(PY) scripts/demo.py --out study --domains $(STUDY_DOMAINS) --final-seeds 5 --scales 2,4,8 --downstream no
	$(PY) scripts/evaluate_demo.py --out study --tag _x8 --control-scale 2

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
