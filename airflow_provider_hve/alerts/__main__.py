"""``python -m airflow_provider_hve.alerts flush``: see :mod:`airflow_provider_hve.alerts.cli`."""

from __future__ import annotations

import sys

from airflow_provider_hve.alerts.cli import main

sys.exit(main())
