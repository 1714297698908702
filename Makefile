# The two commands the README promises. Both install what they need first.
PYTHON ?= python3
export HF_HUB_OFFLINE ?= 1
export RAY_AUTH_MODE ?= disabled

.PHONY: setup test demo bench

setup:
	scripts/system-deps.sh
	$(PYTHON) -m pip install -q -e '.[dev]'

test: setup
	$(PYTHON) -m pytest -q tests

demo: setup
	clipsep-ray demo --out demo-out

bench: setup
	$(PYTHON) benchmarks/bench_separate.py
