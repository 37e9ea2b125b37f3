"""
Commands run in a process of their own that starts with Airflow already imported.

A fresh ``python -m ...`` spends 5-15 s of a 2-core CI machine importing Airflow before it does anything; a test
that starts several (the outbox's concurrent flushers, the command-line flush) paid that every time, on every leg.
Here one forkserver (multiprocessing's: a single-threaded interpreter started from ``sys.executable``, not a fork of
the test process, its sandbox threads or its caches) imports Airflow and the provider once per session; every
command is a fresh child forked from it, with the test's environment as it is at the call, its own stdout and
stderr and its own exit status. Nothing the test process did (tokens, caches, listeners) is in the child.

A child ends as ``python -m`` would: its ``atexit`` handlers run (multiprocessing ends a child with ``os._exit``,
which skips them). A child not waited for (its test failed first) is killed when the session ends
(:func:`stop_all`, from ``pytest_sessionfinish`` and, as a backstop, at the test process's exit).
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import runpy
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# What a flush imports on its way (a module missing from a leg, airflow.sdk on 2.11, is skipped by the forkserver).
PRELOAD = [
    "airflow", "airflow.configuration", "airflow.sdk", "msal", "requests", "email_validator",
    "airflow_provider_hve.alerts.cli", "airflow_provider_hve.alerts.flush", "airflow_provider_hve.alerts.digest",
    "airflow_provider_hve.alerts.send", "airflow_provider_hve.hooks.hve", "airflow_provider_hve.transport",
]  # fmt: skip
_context: Any = None
_running: set[Child] = set()  # started and not waited for yet


def context() -> Any:
    """The session's forkserver context (started on first use, stopped when the test process exits)."""
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
        # Registered after multiprocessing's own exit handler, so it runs first (LIFO): that one joins every
        # child that is still running, and would wait forever for a hung one.
        atexit.register(stop_all)
    return _context


@dataclass
class Done:
    """What ``subprocess.run(..., capture_output=True, text=True)`` returns, for the assertions."""

    returncode: int | None
    stdout: str
    stderr: str


def _enter(environ: dict[str, str], stdout: str, stderr: str) -> None:
    """
    In the child: the caller's environment and working directory (``environ`` carries it as ``PWD``, set by
    :class:`Child`), and fds 1 and 2 (and sys.stdout, sys.stderr) on the given files.
    """
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(environ["PWD"])
    for fd, path in ((1, stdout), (2, stderr)):
        target = os.open(path, os.O_WRONLY | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - the fds live as long as the child
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115


def _run_module(environ: dict[str, str], stdout: str, stderr: str, module: str, argv: Sequence[str]) -> None:
    _enter(environ, stdout, stderr)
    sys.argv = [module, *argv]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)  # as `python -m module argv...`
    finally:
        atexit._run_exitfuncs()  # multiprocessing ends the child with os._exit, which would skip them


def _call(environ: dict[str, str], stdout: str, stderr: str, target: Callable[..., Any], args: tuple[Any, ...]) -> None:
    _enter(environ, stdout, stderr)
    try:
        target(*args)
    finally:
        atexit._run_exitfuncs()  # as above


class Child:
    """A child of the forkserver running ``target(*args)``; ``wait()`` gives its exit status and output."""

    def __init__(self, function: Callable[..., None], *args: Any, env: dict[str, str] | None = None) -> None:
        self._files = [tempfile.NamedTemporaryFile(prefix="hve-warm-", delete=False) for _ in range(2)]  # noqa: SIM115
        for file in self._files:
            file.close()
        stdout, stderr = (file.name for file in self._files)
        environ = {**(os.environ if env is None else env), "PWD": os.getcwd()}  # as a shell sets it for a child
        self.process = context().Process(target=function, args=(environ, stdout, stderr, *args))
        self.process.start()
        _running.add(self)

    def wait(self, timeout: float) -> Done:
        """Wait for the child; one still running after ``timeout`` is killed, and reported as such."""
        _running.discard(self)
        self.process.join(timeout)
        hung = self.process.is_alive()
        if hung:
            self.process.kill()
            self.process.join(10)
        out, err = (self._read(file.name) for file in self._files)
        if hung:
            err += f"\n[killed: still running after {timeout} s]"
        return Done(None if hung else self.process.exitcode, out, err)

    @staticmethod
    def _read(path: str) -> str:
        try:
            with open(path, encoding="utf-8", errors="replace") as file:
                return file.read()
        finally:
            os.unlink(path)


def stop_all() -> int:
    """Kill every child started and not waited for (its test failed before it could); return how many ran."""
    killed = 0
    while _running:
        child = _running.pop()
        if child.process.is_alive():
            child.process.kill()
            killed += 1
        child.process.join(10)
        for file in child._files:
            with contextlib.suppress(OSError):
                os.unlink(file.name)
    return killed


def run_module(module: str, *argv: str, timeout: float = 180, env: dict[str, str] | None = None) -> Done:
    """``python -m module argv...`` with ``env`` (default: the test's environment), Airflow imported; wait for it."""
    return Child(_run_module, module, list(argv), env=env).wait(timeout)


def start(target: Callable[..., Any], *args: Any) -> Child:
    """Start ``target(*args)`` (a module-level function: it is pickled by name) in a child of the forkserver."""
    return Child(_call, target, args)
