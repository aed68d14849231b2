# Two entry points: `make demo` (harden the embedded example) and `make test`.
# Both create .venv on first use and install the project with pinned versions (constraints.txt).
VENV ?= .venv
PY := $(VENV)/bin/python
EXAMPLE := examples/fashion_mnist
# Parallel where cores allow (pytest-xdist); one worker per core, at most 4.
WORKERS ?= $(shell $(PY) -c "import os; print(max(1, min(4, len(os.sched_getaffinity(0)))))" 2>/dev/null || echo 1)

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[cpu,torch,eval,openvino,dev]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	mkdir -p out
	$(VENV)/bin/mstransform $(EXAMPLE)/model.onnx --data $(EXAMPLE)/calib.npz --alpha 0.2 \
	    -o out/model.meansparse.onnx --save-stats out/model.stats.npz --eval $(EXAMPLE)/test.npz

test: $(VENV)/.installed
	$(VENV)/bin/lint-imports
	$(PY) -m pytest tests -n $(WORKERS)

.PHONY: install demo test
