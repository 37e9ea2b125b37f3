# Everything the project needs is installed by these targets into .venv (Python 3.10+; 3.11 recommended).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint install sandbox clean bench

## demo: run the example DAG hve_daily_report through Airflow against the local sandbox, print the .eml
demo: $(STAMP)
	$(BIN)/python scripts/demo.py

## test: the whole test suite against the local sandbox (real MSAL, real smtplib, real Airflow)
test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

## sandbox: run the sandbox in the foreground and print AIRFLOW_CONN_HVE_DEFAULT for your own DAGs
sandbox: $(STAMP)
	$(BIN)/python -m airflow_provider_hve.sandbox --mailbox ./mailbox

## lint: ruff (style, imports, bugbear) and mypy on the package
lint: $(STAMP)
	$(BIN)/ruff check airflow_provider_hve tests scripts example_dags benchmarks
	$(BIN)/ruff format --check airflow_provider_hve tests scripts example_dags benchmarks
	$(BIN)/mypy airflow_provider_hve

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --python $(BIN)/python --quiet -e ".[test]" ruff mypy
	touch $(STAMP)

clean:
	rm -rf $(VENV) mailbox .pytest_cache build *.egg-info

## bench: the bulk benchmark (this provider vs apache-airflow-providers-smtp vs a bare smtplib loop), ~12 min
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_bulk.py --json benchmarks/results.json
