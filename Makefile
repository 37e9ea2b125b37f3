# Everything the project needs is installed by these targets into .venv (Python 3.10+; 3.11 recommended).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs
# Compatibility legs: one venv per Airflow line, each installed from the pinned constraint set
# constraints/airflow-<leg>.txt (resolved by `make constraints`, see docs/compatibility.md).
# A leg is a minor line (its newest patch) or an exact version (the floor pyproject.toml declares).
COMPAT_LEGS ?= 2.11.0 2.11 3.0 3.1 3.2
# The deployment test (make test-deploy): the newest Airflow, 3.1 (the task SDK's unlocked supervisor channel) and the newest 2.11, each in .venv-deploy-<leg> from
# constraints/airflow-<leg>.txt plus constraints/deploy-<leg>.txt (scripts/deploy/constraints.sh).
DEPLOY_LEGS ?= 3.3 3.1 2.11
AIRFLOW     ?= 3.2
CONSTRAINTS  = constraints/airflow-$(AIRFLOW).txt
# What every leg runs: connection (form metadata, and what each form posts to Test, included), hook, operator, notifier, e-mail backend, the
# example DAGs under dag.test(), and the compatibility tests themselves.
# (tests/test_deadline_alert.py runs a real scheduler + triggerer; it skips, saying why, before Airflow 3.1.)
# Alerts (notifier, backend, smtp_default), template injection (rows, mapped XCom values) and the README DAG too.
# The alert listener in-process (this version's hook specs, digests, journal; ~15-25 s); its real-scheduler test
# (tests/test_alert_listener_e2e.py, 70-150 s a leg) runs with `make test` on the newest Airflow and on the 2.11 leg.
COMPAT_TESTS ?= tests/test_compat.py tests/test_connection_config.py tests/test_connection_form.py tests/test_smtp_session.py \
                tests/test_operator.py tests/test_example_dags.py tests/test_deadline_alert.py \
                tests/test_alerts.py tests/test_template_injection.py tests/test_readme.py \
                tests/test_alert_listener.py tests/test_alert_message_id.py
# Tests one leg runs besides COMPAT_TESTS: the alert listener under a real scheduler on 2.11, the other end of the
# range from make test's 3.3 (3.1 and 3.2 pass it too, run by hand: docs/alerts.md).
COMPAT_TESTS_2.11 ?= tests/test_alert_listener_e2e.py
UV           = $(BIN)/uv

.PHONY: demo test test-fast test-wheel bench-import test-mta test-browser test-deploy test-compat test-compat-all constraints lint install sandbox clean bench bench-build bench-window bench-outbox docs

## demo: run the example DAG hve_daily_report through Airflow against the local sandbox, print the .eml
demo: $(STAMP)
	$(BIN)/python scripts/demo.py

## test: the whole test suite against the local sandbox (real MSAL, real smtplib, real Airflow); tests/mta, tests/deploy,
##       tests/browser aside
test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider --ignore=tests/mta --ignore=tests/deploy --ignore=tests/browser $(PYTEST_ARGS)

## test-mta: the provider against a real Postfix + Dovecot (installed with apt where missing; needs root), ~1 min
test-mta: $(STAMP)
	scripts/mta/install.sh
	HVE_MTA_REQUIRED=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/mta $(PYTEST_ARGS)

## test-browser: the connection form in headless Chromium (Debian's, driven by Playwright) on a real Airflow 3.3 API
##               server and 2.11 webserver; installs Chromium (apt, needs root) and Playwright where missing and the
##               2.11 venv if absent; screenshots to HVE_SCREENSHOTS (printed); ~1.5 min once installed
test-browser: $(STAMP) constraints/airflow-2.11.txt
	scripts/browser/install.sh $(VENV)
	@COMPAT_INSTALL_ONLY=1 scripts/compat_leg.sh 2.11 "$(PYTHON)" "$(UV)"
	@shots="$${HVE_SCREENSHOTS:-$$(mktemp -d /tmp/hve-browser-screenshots.XXXXXX)}"; \
	echo "== browser screenshots go to $$shots"; \
	HVE_BROWSER_REQUIRED=1 HVE_SCREENSHOTS="$$shots" $(BIN)/python -m pytest -q -p no:cacheprovider tests/browser $(PYTEST_ARGS)

## test-deploy: a real deployment on Airflow 3.3, 3.1 and 2.11 (PostgreSQL + Redis from apt where missing, needs root;
##              CeleryExecutor, two workers): a worker SIGKILLed mid-merge, HVE down 30 s; ~10 min. DEPLOY_LEGS="3.3"
test-deploy: $(STAMP)
	scripts/deploy/install.sh
	@scripts/deploy/run.sh "$(PYTHON)" "$(UV)" "$(DEPLOY_LEGS)" $(PYTEST_ARGS)

## test-fast: unit tests (row ledger and its state machine, pipeline replies, addresses, templates, config): no sandbox, no Airflow DB
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit tests/test_connection_config.py $(PYTEST_ARGS)

## test-wheel: build wheel + sdist (python -m build), twine check, install the wheel in a fresh venv beside each Airflow
##             of WHEEL_LEGS (from constraints/), parse the five example DAGs with a DagBag and dag.test() the four
##             that need no triggerer, with the provider from the wheel, not the checkout; ~2 min. WHEEL_LEGS="3.3"
WHEEL_LEGS ?= 3.3 2.11
test-wheel: $(STAMP)
	@scripts/test_wheel.sh "$(PYTHON)" "$(UV)" $(WHEEL_LEGS)

## test-compat: the compatibility tests on one Airflow line in its own venv: make test-compat AIRFLOW=3.1
test-compat: $(STAMP) $(CONSTRAINTS)
	@scripts/compat_leg.sh "$(AIRFLOW)" "$(PYTHON)" "$(UV)" $(COMPAT_TESTS) $(COMPAT_TESTS_$(AIRFLOW)) $(PYTEST_ARGS)

## test-compat-all: every leg of COMPAT_LEGS in turn (2.11.0 is the floor pyproject.toml declares)
test-compat-all: $(STAMP)
	@for leg in $(COMPAT_LEGS); do $(MAKE) --no-print-directory test-compat AIRFLOW=$$leg || exit 1; done

## constraints: resolve the pinned constraint sets again (newest patch of each line), e.g. after a release
constraints: $(STAMP)
	@for leg in $(COMPAT_LEGS) 3.3; do scripts/compat_constraints.sh "$$leg" "$(UV)" || exit 1; done

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

# The newest Airflow, from its pinned set (resolved by `make constraints` like the legs').
NEWEST_CONSTRAINTS := constraints/airflow-3.3.txt

$(STAMP): pyproject.toml $(NEWEST_CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --python $(BIN)/python --quiet -c $(NEWEST_CONSTRAINTS) -e ".[test]" ruff mypy
	touch $(STAMP)

$(DOCS_STAMP): pyproject.toml $(STAMP)
	$(BIN)/uv pip install --python $(BIN)/python --quiet -c $(NEWEST_CONSTRAINTS) -e ".[docs]"
	touch $(DOCS_STAMP)

clean:
	rm -rf $(VENV) .venv-airflow-* .venv-deploy-* mailbox site .pytest_cache build *.egg-info

## bench-build: mail-merge message building alone (email package vs compiled, peak memory 10k vs 100k rows), ~1 min
bench-build: $(STAMP)
	$(BIN)/python benchmarks/bench_build.py --json benchmarks/results-build.json

## bench-import: the import of the operator and the notifier after Airflow and its BaseOperator/BaseNotifier, beside the
##               SMTP provider's (CPU ms, median of 31, PASS/FAIL within the printed noise tolerance), ~30 s
bench-import: $(STAMP)
	$(BIN)/python benchmarks/bench_import.py

## bench-window: bdat_window caps at 20 ms RTT (delay proxy): the rate (median of 3 rounds) against the rows a reset leaves unknown, ~4 min
bench-window: $(STAMP)
	$(BIN)/python benchmarks/bench_window.py

## bench-outbox: an alert raised during a 10-minute HVE outage, delivered by the maintenance DAG's schedule and loop:
##               lateness after HVE's return (< 60 s) and copies (1), PASS/FAIL; ~11 min. BENCH_ARGS="--outage-minutes 1"
bench-outbox: $(STAMP)
	$(BIN)/python benchmarks/bench_outbox_outage.py $(BENCH_ARGS)

## bench: the bulk benchmark with a PASS/FAIL row per target of issue 18 (sliding window: 20 ms vs 0 ms, vs the bare
##        loop, Postfix 10 ms vs 0 ms, 4 sessions vs 1, unknown per reset vs rate x RTT, memory), ~15 min; the Postfix
##        row needs root (scripts/mta/install.sh). Quick run (~5 min): make bench BENCH_ARGS="--quick"; BENCH_ARGS="--help"
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_bulk.py --json benchmarks/results.json $(BENCH_ARGS)
