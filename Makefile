# Two entry points: `make demo` (harden the embedded example) and `make test`.
# Both create .venv on first use and install the project with pinned versions (constraints.txt).
VENV ?= .venv
PY := $(VENV)/bin/python
EXAMPLE := examples/fashion_mnist

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[cpu,torch,dev,eval]'
	# torchattacks declares torchvision, which would pull a CUDA torch; it runs without it (PGD only)
	$(PY) -m pip install -q --no-deps torchattacks==3.5.1
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	mkdir -p out
	$(VENV)/bin/mstransform $(EXAMPLE)/model.onnx --data $(EXAMPLE)/calib.npz --alpha 0.2 \
	    -o out/model.meansparse.onnx --eval $(EXAMPLE)/test.npz

test: $(VENV)/.installed
	$(PY) -m pytest tests

.PHONY: install demo test
