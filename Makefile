# The README's two commands. Each makes its own virtual environment in .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MNIST_DIR ?= ../shared/data/mnist

.PHONY: test mnist clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel

# the whole test suite; PyTorch is an optional cross-check (tests skip visibly without it)
test: $(PY)
	$(PY) -m pip install --quiet -e '.[cpu,test]'
	$(PY) -m pip install --quiet torch==2.13.0 || echo 'PyTorch not installed: its cross-check tests will be skipped'
	$(PY) -m pytest -ra tests

# the project's main job on MNIST from $(MNIST_DIR)
mnist: $(PY)
	$(PY) -m pip install --quiet -e '.[cpu]'
	$(PY) recipes/mnist_demo.py --data-dir $(MNIST_DIR)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
