# The two set-up commands of README.md: `make run` and `make test`.
# Both create the virtualenv .venv on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= etc/vernemq.conf
# Parallel test workers: the machine has 2 cores.
WORKERS ?= 2

.PHONY: run test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Editable install in "compat" mode: it puts the checkout itself on sys.path,
# so Twisted's plugin loader finds twisted/plugins/vmqtw_plugins.py (a PEP 660
# editable install would not).  The plugin cache is regenerated afterwards.
$(VENV)/.installed: setup.py $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	$(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/twistd -n vmqtw --config $(CONFIG)

# Types first (a few seconds; configuration in pyproject.toml), then the suite.
test: install
	$(BIN)/python -m mypy vmqtw
	$(BIN)/python -m pytest -n $(WORKERS) -q tests

clean:
	rm -rf $(VENV) build *.egg-info dropin.cache twisted/plugins/dropin.cache .mypy_cache
