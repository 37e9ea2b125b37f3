# Everything the project needs is installed by these targets into .venv (Python 3.10+; 3.11 recommended).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs
# A second venv with the oldest Airflow pyproject.toml declares (the X of "apache-airflow>=X", padded to X.Y.Z).
OLDEST_VENV    ?= .venv-oldest
OLDEST_BIN     := $(OLDEST_VENV)/bin
OLDEST_STAMP   := $(OLDEST_VENV)/.installed
AIRFLOW_OLDEST := $(shell sed -nE 's/^[[:space:]]*"apache-airflow>=([0-9]+(\.[0-9]+)*).*/\1/p' pyproject.toml \
                    | head -n 1 | awk -F. '{ print $$1 "." ($$2 == "" ? 0 : $$2) "." ($$3 == "" ? 0 : $$3) }')

.PHONY: demo test test-fast test-oldest lint install sandbox clean bench docs

## demo: run the example DAG hve_daily_report through Airflow against the local sandbox, print the .eml
demo: $(STAMP)
	$(BIN)/python scripts/demo.py

## test: the whole test suite against the local sandbox (real MSAL, real smtplib, real Airflow)
test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

## test-fast: unit tests (row ledger and its state machine, pipeline replies, addresses, templates, config): no sandbox, no Airflow DB
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit tests/test_connection_config.py $(PYTEST_ARGS)

## test-oldest: the same suite in its own .venv-oldest, on the oldest Airflow pyproject.toml declares ("apache-airflow>=X")
test-oldest: $(OLDEST_STAMP)
	$(OLDEST_BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

## sandbox: run the sandbox in the foreground and print AIRFLOW_CONN_HVE_DEFAULT for your own DAGs
sandbox: $(STAMP)
	$(BIN)/python -m airflow_provider_hve.sandbox --mailbox ./mailbox

## lint: ruff (style, imports, bugbear) and mypy on the package
lint: $(STAMP)
	$(BIN)/ruff check airflow_provider_hve tests scripts example_dags benchmarks
	$(BIN)/ruff format --check airflow_provider_hve tests scripts example_dags benchmarks
	$(BIN)/mypy airflow_provider_hve

## docs: the documentation site (docs/, mkdocs.yml) in strict mode into site/; a broken link or anchor fails
docs: $(DOCS_STAMP)
	$(BIN)/mkdocs build --strict --site-dir site

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --python $(BIN)/python --quiet -e ".[test]" ruff mypy
	touch $(STAMP)

$(DOCS_STAMP): pyproject.toml $(STAMP)
	$(BIN)/uv pip install --python $(BIN)/python --quiet -e ".[docs]"
	touch $(DOCS_STAMP)

# apache-airflow pins its own apache-airflow-core and apache-airflow-task-sdk exactly, so one pin is enough.
$(OLDEST_STAMP): pyproject.toml
	@test -n "$(AIRFLOW_OLDEST)" || { echo 'no "apache-airflow>=X" line found in pyproject.toml' >&2; exit 1; }
	test -x $(OLDEST_BIN)/python || $(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_BIN)/python -m pip install --quiet --upgrade pip uv
	$(OLDEST_BIN)/uv pip install --python $(OLDEST_BIN)/python --quiet -e ".[test]" "apache-airflow==$(AIRFLOW_OLDEST)"
	$(OLDEST_BIN)/python -c "import airflow, sys; sys.exit(airflow.__version__ != '$(AIRFLOW_OLDEST)' and 'installed Airflow ' + airflow.__version__ + ', wanted $(AIRFLOW_OLDEST)')"
	touch $(OLDEST_STAMP)

clean:
	rm -rf $(VENV) $(OLDEST_VENV) mailbox site .pytest_cache build *.egg-info

## bench: the bulk benchmark (this provider vs apache-airflow-providers-smtp vs a bare smtplib loop), ~12 min
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_bulk.py --json benchmarks/results.json
