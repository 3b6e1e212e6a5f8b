# The two commands a newcomer needs: `make demo` and `make test`. Both install first.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/pcipass demo --once

test: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest

bench: install
	$(VENV)/bin/python bench/inventory.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
