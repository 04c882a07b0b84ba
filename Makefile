# Set-up and checks.  `make test` and `make demo` work on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python

.PHONY: venv test demo bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all]'
	touch $@

## make test: unit, property, replay and (where smtpd is installed) e2e tests
test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

## make demo: example filters against simulated smtpd sessions (no smtpd needed)
demo: venv
	$(PY) -m smtpd_filter_sdk.testing.demo

## make bench: throughput and memory, side by side with the anchors if installed
bench: venv
	$(PY) bench/run.py --suite

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
