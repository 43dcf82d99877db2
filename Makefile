# flowscope: the two commands of the README, plus helpers. Run as root.
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python

.PHONY: setup test demo lint bench clean

setup:
	@bash scripts/setup.sh

test: setup
	@bash scripts/test.sh

demo: setup
	@bash scripts/demo.sh

lint: setup
	@$(VENV)/bin/ruff check .

bench: setup
	@$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache
