# The two commands: `make demo` and `make test`. Both create .venv and install into it on first use.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format install clean bench browser docs

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m amc.cli.demo

# Headless Chromium for the MLflow UI test (tests/test_mlflow_ui.py): Debian's package, installed once
# (skipped when `command -v chromium` finds one). Without it the UI test fails in CI and is skipped elsewhere.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  echo "installing chromium (apt-get) for the MLflow UI test"; \
	  { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; } \
	  || echo "make: could not install chromium (needs apt-get and root); the MLflow UI test cannot run" >&2; }

# ruff (configured in pyproject.toml): lint and format check, as CI runs them; `make format` rewrites in place
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# the documentation site (mkdocs.yml, docs/) into site/, strictly: a warning, a broken link or anchor, or a missing
# reference fails the build; its CLI, config and results sections are generated from the code and the JSON results
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .cache mlflow.db site
