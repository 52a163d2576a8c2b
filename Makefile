# The README's two commands. Each makes its own virtual environment in .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MNIST_DIR ?= ../shared/data/mnist
RUN_DIR ?= runs/mnist
FASHION_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test mnist fashion-mnist bench-peers clean

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

# the step benchmark's peers (benchmarks/bench_step.py, state_error.py): PyTorch and
# bitsandbytes, whose 8-bit Adam has a CPU path (--no-deps: it needs only torch, numpy and
# packaging, which are there; pip would otherwise be free to move numpy past MXNet's < 1.24)
bench-peers: $(PY)
	$(PY) -m pip install --quiet -e '.[cpu,recipes,test]'
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet --no-deps bitsandbytes==0.50.2

# the project's main job, every recipe with its own defaults: pretrain LeNet on digits 0-4;
# fine-tune it on 5-9 from 10 and from 100 examples per class, each against the same model
# trained from scratch on those examples; stream all of 5-9 into the 0-4 model in real time
mnist: $(PY)
	$(PY) -m pip install --quiet -e '.[cpu,recipes]'
	$(PY) recipes/mnist_pretrain.py --classes 0-4 --data-dir $(MNIST_DIR) \
	  --out $(RUN_DIR)/pretrain.json --save $(RUN_DIR)/lenet-0-4.params --log $(RUN_DIR)/metrics.jsonl
	for shots in 10 100; do \
	  $(PY) recipes/mnist_finetune.py --pretrained $(RUN_DIR)/lenet-0-4.params --shots $$shots \
	    --compare-scratch --data-dir $(MNIST_DIR) --out $(RUN_DIR)/finetune_$${shots}_shots.json \
	    --log $(RUN_DIR)/metrics.jsonl || exit 1; \
	done
	$(PY) recipes/mnist_stream.py --pretrained $(RUN_DIR)/lenet-0-4.params --data-dir $(MNIST_DIR) \
	  --out $(RUN_DIR)/stream.json --log $(RUN_DIR)/metrics.jsonl

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
