"""Fast unit tests: no sandbox, no Airflow metadata DB. `make test-fast` runs this folder alone."""

from __future__ import annotations

import os
import tempfile

# Importing the provider imports airflow (its exceptions): keep Airflow's home out of the user's.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="hve-unit-airflow-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
