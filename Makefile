# The README's two commands. Each makes its own virtual environment in .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MNIST_DIR ?= ../shared/data/mnist
RUN_DIR ?= runs/mnist
FASHION_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test mnist fashion-mnist clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel

# Debian's dataset-fashion-mnist (tests that need it skip visibly when it cannot be installed)
fashion-mnist:
	@test -f $(FASHION_DIR)/train-images-idx3-ubyte.gz || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; } || \
	  echo 'dataset-fashion-mnist not installed: Fashion-MNIST tests will be skipped'

# the whole test suite; PyTorch is an optional cross-check (tests skip visibly without it)
test: $(PY) fashion-mnist
	$(PY) -m pip install --quiet -e '.[cpu,recipes,test]'
	$(PY) -m pip install --quiet torch==2.13.0 || echo 'PyTorch not installed: its cross-check tests will be skipped'
	$(PY) -m pytest -ra tests

# the project's main job: pretrain LeNet on digits 0-4, fine-tune on 5-9 with 100 examples
# per class, and train the same model from scratch on those examples for comparison
mnist: $(PY)
	$(PY) -m pip install --quiet -e '.[cpu,recipes]'
	$(PY) recipes/mnist_pretrain.py --model lenet --optimizer adanag --classes 0-4 --epochs 3 --lr-schedule constant \
	  --data-dir $(MNIST_DIR) --out $(RUN_DIR)/pretrain.json --save $(RUN_DIR)/lenet-0-4.params \
	  --log $(RUN_DIR)/metrics.jsonl
	$(PY) recipes/mnist_finetune.py --pretrained $(RUN_DIR)/lenet-0-4.params --classes 5-9 \
	  --shots 100 --lr-schedule constant --compare-scratch --data-dir $(MNIST_DIR) --out $(RUN_DIR)/finetune.json \
	  --log $(RUN_DIR)/metrics.jsonl

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
