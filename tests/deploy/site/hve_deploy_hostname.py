"""``[core] hostname_callable`` of the deployment test: each Airflow process names itself by HVE_DEPLOY_HOSTNAME.

Both Celery workers run on one machine, so the default (the machine's FQDN) would record the same host for every
task instance; with this, a task instance's ``hostname`` says which worker ran the try (``worker-1``...).
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    return os.environ.get("HVE_DEPLOY_HOSTNAME") or socket.getfqdn()
