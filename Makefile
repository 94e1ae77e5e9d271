# Two commands do all set-up on a fresh machine:
#   make demo   -> the Gradio Space with the bundled model on http://127.0.0.1:7860 (offline)
#   make test   -> ruff + the whole test suite (what .ci/run calls)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hfxray-installed

.PHONY: setup demo test test-lean lint model onnx bench bench-venv browser clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch/torchvision pinned to the releases this kind of machine has on disk; the ranges in
	# pyproject.toml admit them and newer-but-capped ones.
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# Debian's Chromium for the end-to-end browser test (no browser download is possible offline).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "install Debian's chromium (sudo apt-get install chromium) for the browser test"; fi; }

demo: setup
	HF_HUB_OFFLINE=1 $(PY) space/app.py

lint: setup
	$(VENV)/bin/ruff check hfxray scripts tests space benchmarks

test: setup browser lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -ra --durations=15

# The inference-only install (no torch, transformers, datasets) in a second small venv: predict.py
# and the Space (without Grad-CAM) must work there with the bundled model.onnx (tests/lean_check.py).
LEAN_VENV ?= .venv-lean
LEAN_STAMP := $(LEAN_VENV)/.hfxray-lean-installed

$(LEAN_STAMP): requirements-inference.txt requirements-space-lean.txt pyproject.toml
	test -x $(LEAN_VENV)/bin/python || python3 -m venv $(LEAN_VENV)
	$(LEAN_VENV)/bin/python -m pip install -q -r requirements-space-lean.txt
	touch $(LEAN_STAMP)

test-lean: $(LEAN_STAMP)
	# hfxray itself without its (torch) dependencies; reinstalled every time so the code is current
	$(LEAN_VENV)/bin/python -m pip install -q --no-deps --force-reinstall .
	HF_HUB_OFFLINE=1 $(LEAN_VENV)/bin/python tests/lean_check.py

# Reproduce the bundled default model from the shared data (seed + cxr-multisource; offline ImageNet backbone).
model: setup
	HF_HUB_OFFLINE=1 $(PY) scripts/make_default_model.py --data_dir ../shared/data/covid19-xray/train ../shared/data/cxr-multisource

# The fastai baseline (the original recipe) in a venv of its own: fastai in .venv would change the
# exact packages the tests run on. benchmarks/run.py and scale.py run it with --fastai_python.
BENCH_VENV ?= .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.hfxray-bench-installed

$(BENCH_STAMP):
	test -x $(BENCH_VENV)/bin/python || python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" "fastai==2.8.12"
	touch $(BENCH_STAMP)

bench-venv: $(BENCH_STAMP)

bench: setup bench-venv
	HF_HUB_OFFLINE=1 $(PY) benchmarks/run.py --fastai_python $(BENCH_VENV)/bin/python

clean:
	rm -rf $(VENV) $(LEAN_VENV) $(BENCH_VENV) .pytest_cache .ruff_cache
