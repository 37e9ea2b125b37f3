"""
Where a task keeps what it sent across its retries: ``task_state_store`` (Airflow 3.3+), or Airflow Variables.

Both operators remember what a failed try delivered (and what it handed over without an answer) so that the
next try sends nothing twice. Airflow 3.3 gives each task instance a ``task_state_store`` for exactly this.
Before 3.3 the store every worker of a deployment sees and that survives a retry is the metadata database,
reached the supported way: Airflow Variables (the ORM on 2.11, the task SDK's API on 3.0 to 3.2). XCom is
cleared when the next try starts, so it cannot serve.

:class:`VariableStore` gives Variables ``task_state_store``'s ``get`` / ``set`` / ``delete``, scoped to one task
instance, with an index of its keys so that :meth:`VariableStore.clear` removes them all once the task has
succeeded. A task instance that never succeeds leaves its Variables (``hve_state.<hash>.*``, each described with
its DAG, run and task) until they are deleted: see docs/reliability.md.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
from typing import Any

from airflow_provider_hve.exceptions import HveError

log = logging.getLogger(__name__)

VARIABLE_PREFIX = "hve_state."
"""Every Variable this provider writes starts with this."""
_INDEX = "index"
COMPLETED_KEY = "hve/completed"
"""Set once a try sent everything it had to: a later try of the task instance sends nothing (its value says what)."""


class VariableStore:
    """
    ``task_state_store``'s interface on Airflow Variables, for one task instance.

    Each write is read back: the task SDK's ``Variable.set`` logs a failure and returns (Airflow 3.0 to 3.2),
    and a record that silently was not kept would let a retry send again.

    Reads go through an index of the keys written: a key not in it is not asked for (Airflow 3.0 and 3.1 log an
    error for every Variable not found), and on a task instance's first try nothing is read at all.

    :param dag_id: with ``run_id``, ``task_id`` and ``map_index``, names the task instance in every try.
    :param first_try: this is the task instance's first try: no earlier try can have written anything.
    """

    def __init__(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1, *, first_try: bool = False) -> None:
        scope = "\0".join((dag_id, run_id, task_id, str(map_index)))
        self._prefix = VARIABLE_PREFIX + hashlib.sha256(scope.encode()).hexdigest()[:32] + "."
        mapped = f"[{map_index}]" if map_index >= 0 else ""
        self._description = (
            f"airflow-provider-hve: what {dag_id}.{task_id}{mapped} of run {run_id} delivered, kept across its "
            "retries; deleted when the task succeeds."
        )[:1000]
        self._keys: builtins.set[str] | None = builtins.set() if first_try else None
        self._index_written = False
        self._completed: Any = None

    def get(self, key: str, default: Any = None) -> Any:
        keys = self._index()
        if key == COMPLETED_KEY:
            return default if self._completed is None else self._completed
        if key not in keys:
            return default
        return self._get(self._name(key), default)

    def set(self, key: str, value: Any) -> None:
        if key == COMPLETED_KEY:
            self._complete(value)
            return
        keys = self._index()
        if key not in keys:
            self._set(self._name(_INDEX), sorted(keys | {key}))  # the index first: a record is never unlisted
            self._keys, self._index_written = keys | {key}, True
        self._set(self._name(key), value)

    def delete(self, key: str) -> None:
        self._delete(self._name(key))
        keys = self._index()
        if key in keys:
            self._set(self._name(_INDEX), sorted(keys - {key}))
            self._keys, self._index_written = keys - {key}, True

    def _complete(self, value: Any) -> None:
        """
        Everything was sent: say so in the index first (read back), then delete the records and, if all went, the
        index. A kill or a failed delete on the way leaves the index saying "completed", so a retry sends nothing;
        never the records without the index, which would make a retry send their rows again.
        """
        keys = self._index()
        if not keys and not self._index_written and self._completed is None:
            return  # nothing was ever written: nothing to delete
        index = self._name(_INDEX)
        self._set(index, {"completed": value})
        self._completed, self._keys = value, builtins.set()
        left = []
        for name in [self._name(key) for key in sorted(keys)]:
            try:
                self._delete(name)
            except Exception as exc:  # the send is done; a Variable left over only costs room
                left.append(name)
                log.warning("Could not delete Variable %r (%s: %s)", name, type(exc).__name__, exc)
        if left:
            log.warning(
                "%d Variable(s) of %s are left over; the index %r says the task completed, so a retry sends nothing. "
                "Delete them with `airflow variables delete` (docs/reliability.md).",
                len(left),
                self._description.split(":")[0],
                index,
            )
            return
        try:
            self._delete(index)
        except Exception as exc:
            log.warning(
                "Could not delete Variable %r (%s: %s); it only says the task completed.",
                index,
                type(exc).__name__,
                exc,
            )

    # -- Variables -----------------------------------------------------------------------------------------

    def _name(self, key: str) -> str:
        # Hashed: short (Variables allow 250 characters), nothing the REST path of Airflow 3's API would split ("/"),
        # and no word such as "password" from a task id that would make Airflow's masker hide the values it reads.
        if key == _INDEX:
            return self._prefix + _INDEX
        return self._prefix + hashlib.sha256(key.encode()).hexdigest()[:24]

    def _index(self) -> builtins.set[str]:
        if self._keys is None:
            value = self._get(self._name(_INDEX), []) or []
            if isinstance(value, dict):  # {"completed": ...}: an earlier try sent everything
                self._completed, value = value.get("completed"), []
            self._keys = set(value)
        return self._keys

    @staticmethod
    def _get(name: str, default: Any) -> Any:
        from airflow.providers.common.compat.sdk import Variable

        from airflow_provider_hve.auth import SDK_LOCK

        # The second argument is the default on every version (default_var on 2.11, default on 3.x).
        with SDK_LOCK:
            return Variable.get(name, default, deserialize_json=True)

    def _set(self, name: str, value: Any) -> None:
        from airflow.providers.common.compat.sdk import Variable

        from airflow_provider_hve.auth import SDK_LOCK

        with SDK_LOCK:
            Variable.set(name, value, description=self._description, serialize_json=True)
        kept = self._get(name, None)
        if json.dumps(kept, sort_keys=True) != json.dumps(value, sort_keys=True):
            raise HveError(
                f"Airflow did not keep Variable {name!r} ({self._description.split(', kept')[0]}): a retry could "
                "send again, so nothing more is sent. Check that tasks may write Variables (the API server's log "
                "says why it refused); to send without a record (a retry may then mail a recipient twice), set "
                "at_least_once=True on the task."
            )

    @staticmethod
    def _delete(name: str) -> None:
        from airflow.providers.common.compat.sdk import Variable

        from airflow_provider_hve.auth import SDK_LOCK

        with SDK_LOCK:
            Variable.delete(name)
