# Developer and CI entry points. torch is installed first and pinned through a constraints
# file, so no dependency (transformers, onnxscript, ...) can pull a different torch build.

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
TORCH_VERSION := 2.13.0
CONSTRAINTS := $(VENV)/constraints.txt
STAMP := $(VENV)/.installed

.PHONY: venv test lint typecheck demo demo-training-free wheel check-wheel

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --upgrade pip
	$(VPY) -m pip install torch==$(TORCH_VERSION)
	printf 'torch==%s\n' '$(TORCH_VERSION)' > $(CONSTRAINTS)
	$(VPY) -m pip install -c $(CONSTRAINTS) -e '.[all]'
	touch $(STAMP)

# Two pytest runs: the main suite, then the TFLite conversions (slow, each converts with litert-torch;
# loadgroup keeps tests that share one converted file on one worker).
test: venv
	$(VPY) -m pytest -n 2 -q -m "not tflite" tests
	$(VPY) -m pytest -n 2 -q -m tflite --dist loadgroup tests

lint: venv typecheck
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy on the packages listed in [tool.mypy] of pyproject.toml. export/ and runtime/ install as
# sttabt_edge.export / sttabt_edge.runtime (package-dir), which mypy cannot map, so it checks a tree
# of symlinks with the installed layout (build/mypy; error paths read sttabt_edge/export/...).
MYPY_TREE := build/mypy
typecheck: venv
	rm -rf $(MYPY_TREE) && mkdir -p $(MYPY_TREE)/sttabt_edge
	for f in sttabt_edge/*; do ln -s "$(CURDIR)/$$f" $(MYPY_TREE)/sttabt_edge/; done
	ln -s "$(CURDIR)/export" $(MYPY_TREE)/sttabt_edge/export
	ln -s "$(CURDIR)/runtime" $(MYPY_TREE)/sttabt_edge/runtime
	cd $(MYPY_TREE) && "$(CURDIR)/$(VENV)/bin/mypy" --config-file "$(CURDIR)/pyproject.toml"

# The main job: `compress` MiniLM-SST2 to within 1 point of dense on a held-out split of its training
# data, in a 5-minute training budget (about 10 min in all on 2 cores); a rerun reuses finished stages.
SHARED ?= ../shared
DEMO_OUT ?= quickstart_out
demo: venv
	$(VENV)/bin/sttabt-edge compress --model $(SHARED)/models/minilm-l6-sst2 \
	    --data $(SHARED)/data/glue/SST-2 --max-drop 1.0 --budget-minutes 5 --quantize int8 \
	    --max-length 64 --out $(DEMO_OUT) --resume

# The training-free walk (distil, calibrate one keep ratio, export, verify, bench): benchmarks/quickstart.py
demo-training-free: venv
	$(VPY) benchmarks/quickstart.py

# The wheel (pure Python) into dist/; `pip install dist/sttabt_edge-*.whl` is the torch-free runtime.
wheel:
	PYTHON=$(if $(wildcard $(VPY)),$(VPY),$(PYTHON)) scripts/build_wheel.sh dist

# A fresh venv with only that wheel (dependencies from the package index, no torch): import the
# runtime, `sttabt-edge run/bench/info` on exported models. Needs network; not part of `make test`.
check-wheel: venv
	scripts/check_wheel.sh
