"""Apache Airflow provider for Microsoft 365 High Volume Email (HVE)."""

from __future__ import annotations

__version__ = "0.1.0"
