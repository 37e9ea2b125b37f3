"""Run the sandbox in a child process and drive it from the parent, for benchmarks.

A client and the sandbox in one process share one GIL: the server threads steal time from the
client being measured, and the client's own CPU work delays the server's replies. :class:`SandboxProcess`
starts :class:`~airflow_provider_hve.sandbox.core.HveSandbox` in a child process (the ``spawn``
start method, so nothing of the parent's state is inherited) and talks to it over a
:func:`multiprocessing.Pipe`.

Example::

    from airflow_provider_hve.sandbox.process import SandboxProcess

    if __name__ == "__main__":  # spawn re-imports the main module in the child
        with SandboxProcess(latency_ms=20) as sandbox:
            os.environ["AIRFLOW_CONN_HVE_DEFAULT"] = sandbox.connection_json()
            sandbox.reset()
            ...  # send the messages being measured
            stats = sandbox.stats()
            print(stats.smtp_round_trips / stats.messages, "round trips per message")
"""

from __future__ import annotations

import json
import multiprocessing
import signal
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType
from typing import Any

from airflow_provider_hve.sandbox.records import SandboxStats
from airflow_provider_hve.sandbox.tokens import DEFAULT_LIFETIME

# The fault switches of SmtpServer the parent may flip; nothing else is callable by name.
_SMTP_SWITCHES = frozenset(
    {
        "fail_next_auth",
        "fail_next_data",
        "refuse_recipient",
        "disconnect_after",
        "throttle",
        "stall_after",
        "limit_sessions",
        "refuse_connections",
        "reset_faults",
    }
)


class SandboxProcessError(RuntimeError):
    """The child failed to start, died, or raised while handling a request (its traceback is included)."""


def _set_latency(sandbox: Any, ms: float) -> None:
    sandbox.latency_ms = ms


def _set_pipelining(sandbox: Any, enabled: bool) -> None:
    sandbox.smtp.pipelining = enabled


def _smtp_switch(sandbox: Any, name: str, *args: Any, **kwargs: Any) -> None:
    if name not in _SMTP_SWITCHES:
        raise ValueError(f"{name!r} is not an SMTP fault switch; use one of {', '.join(sorted(_SMTP_SWITCHES))}.")
    getattr(sandbox.smtp, name)(*args, **kwargs)


def _wait_for_messages(sandbox: Any, n: int, timeout: float) -> int:
    return len(sandbox.messages.wait_for(n, timeout))


def _info(sandbox: Any) -> dict[str, Any]:
    return {
        "smtp_host": sandbox.smtp_host,
        "smtp_port": sandbox.smtp_port,
        "token_port": sandbox.token_port,
        "authority_host": sandbox.authority_host,
        "authority": sandbox.authority,
        "ca_bundle": sandbox.ca_bundle,
        "mailbox_dir": str(sandbox.mailbox_dir),
        "state_dir": str(sandbox.state_dir),
        "account": sandbox.account,
    }


# Requests the child answers: name -> function of (sandbox, *args, **kwargs).
_REQUESTS: dict[str, Callable[..., Any]] = {
    "connection": lambda sandbox, auth_mode, overrides: sandbox.connection(auth_mode, **overrides),
    "stats": lambda sandbox: sandbox.stats(),
    "reset": lambda sandbox: sandbox.reset_records(),
    "set_latency": _set_latency,
    "set_pipelining": _set_pipelining,
    "smtp": _smtp_switch,
    "wait_for_messages": _wait_for_messages,
}


def _serve(conn: Connection, options: dict[str, Any]) -> None:
    """Child process: start the sandbox, report its addresses, then answer requests until told to stop."""
    from airflow_provider_hve.sandbox.core import HveSandbox

    # Ctrl-C reaches the whole process group; the parent decides when the child stops (or the pipe closes).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sandbox = HveSandbox(**options)
    try:
        sandbox.start()
        conn.send(("ok", _info(sandbox)))
        while True:
            try:
                name, args, kwargs = conn.recv()
            except EOFError:
                # The parent is gone without saying stop: clean up all the same.
                return
            if name == "stop":
                sandbox.stop()
                conn.send(("ok", None))
                return
            try:
                result = _REQUESTS[name](sandbox, *args, **kwargs)
            except Exception:
                conn.send(("error", traceback.format_exc()))
            else:
                conn.send(("ok", result))
    except Exception:
        conn.send(("error", traceback.format_exc()))
    finally:
        sandbox.stop()
        conn.close()


class SandboxProcess:
    """An :class:`~airflow_provider_hve.sandbox.core.HveSandbox` running in a child process.

    Calls are synchronous requests over a pipe (safe from several threads). The script that uses
    it must guard its entry point with ``if __name__ == "__main__":``, as ``spawn`` requires.

    :param latency_ms: emulated round-trip time in milliseconds (see ``HveSandbox(latency_ms=)``)
    :param mailbox_dir: where delivered ``.eml`` files go; a temporary folder if omitted
    :param state_dir: where certificates and tokens go; a temporary folder if omitted
    :param pipelining: advertise SMTP PIPELINING
    :param token_lifetime: access token lifetime in seconds
    :param start_timeout: seconds to wait for the child to report that it serves
    """

    def __init__(
        self,
        *,
        latency_ms: float = 0,
        mailbox_dir: str | Path | None = None,
        state_dir: str | Path | None = None,
        pipelining: bool = True,
        token_lifetime: int = DEFAULT_LIFETIME,
        start_timeout: float = 30,
    ) -> None:
        self._options: dict[str, Any] = {
            "latency_ms": latency_ms,
            "mailbox_dir": str(mailbox_dir) if mailbox_dir is not None else None,
            "state_dir": str(state_dir) if state_dir is not None else None,
            "pipelining": pipelining,
            "token_lifetime": token_lifetime,
        }
        self._start_timeout = start_timeout
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._info: dict[str, Any] = {}
        self._exitcode: int | None = None
        self._lock = threading.Lock()

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> SandboxProcess:
        """Start the child and wait until both of its servers accept connections."""
        if self._process is not None:
            raise RuntimeError("The sandbox process is already running.")
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe()
        # daemon: a parent that dies without stop() does not leave the child behind.
        process = context.Process(target=_serve, args=(child_end, self._options), name="hve-sandbox", daemon=True)
        process.start()
        # Only the child writes to its end; closing ours lets recv() see EOF if the child dies.
        child_end.close()
        self._process, self._conn = process, parent_end
        try:
            if not parent_end.poll(self._start_timeout):
                raise SandboxProcessError(f"The sandbox process did not start within {self._start_timeout}s.")
            self._info = self._receive()
        except BaseException:
            self._kill()
            raise
        return self

    def stop(self, timeout: float = 10) -> None:
        """Ask the child to stop its servers and wait for it to exit (killing it after ``timeout`` s)."""
        if self._process is None:
            return
        try:
            if self._process.is_alive():
                self._request("stop")
        except (SandboxProcessError, OSError):
            pass  # already dying: join() or the kill below finishes the job
        self._process.join(timeout)
        self._kill()

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.is_alive():
            process.kill()
            process.join(5)
        self._exitcode = process.exitcode if process is not None else None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> SandboxProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        """Return the child's process id while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def exitcode(self) -> int | None:
        """Return the child's exit status once stopped (0 after a clean :meth:`stop`)."""
        return self._exitcode

    # -- talking to the child -----------------------------------------------------------

    def _receive(self) -> Any:
        assert self._conn is not None
        try:
            status, value = self._conn.recv()
        except EOFError as exc:
            code = self._process.exitcode if self._process is not None else None
            raise SandboxProcessError(f"The sandbox process exited (status {code}).") from exc
        if status == "error":
            raise SandboxProcessError(f"The sandbox process failed:\n{value}")
        return value

    def _request(self, name: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            if self._conn is None:
                raise RuntimeError("The sandbox process is not running; call start() or use it as a context manager.")
            self._conn.send((name, args, kwargs))
            return self._receive()

    # -- what clients need ----------------------------------------------------------------

    def _field(self, key: str) -> Any:
        if not self._info:
            raise RuntimeError("The sandbox process is not running; call start() or use it as a context manager.")
        return self._info[key]

    @property
    def smtp_host(self) -> str:
        """Return the SMTP host name (``localhost``, which the certificate names)."""
        return str(self._field("smtp_host"))

    @property
    def smtp_port(self) -> int:
        """Return the SMTP (STARTTLS) port."""
        return int(self._field("smtp_port"))

    @property
    def token_port(self) -> int:
        """Return the HTTPS token endpoint port."""
        return int(self._field("token_port"))

    @property
    def authority_host(self) -> str:
        """Return ``https://localhost:PORT``."""
        return str(self._field("authority_host"))

    @property
    def authority(self) -> str:
        """Return the full authority URL for MSAL."""
        return str(self._field("authority"))

    @property
    def ca_bundle(self) -> str:
        """Return the path of the CA certificate to trust."""
        return str(self._field("ca_bundle"))

    @property
    def mailbox_dir(self) -> Path:
        """Return the folder delivered ``.eml`` files go to."""
        return Path(self._field("mailbox_dir"))

    @property
    def account(self) -> str:
        """Return the HVE account address."""
        return str(self._field("account"))

    def connection(self, auth_mode: str = "client_secret", **extra_overrides: Any) -> dict[str, Any]:
        """Return an Airflow connection dict for the child's sandbox; see ``HveSandbox.connection``."""
        result: dict[str, Any] = self._request("connection", auth_mode, extra_overrides)
        return result

    def connection_json(self, auth_mode: str = "client_secret", **extra_overrides: Any) -> str:
        """Return :meth:`connection` as JSON, for ``AIRFLOW_CONN_HVE_DEFAULT``."""
        return json.dumps(self.connection(auth_mode, **extra_overrides))

    # -- control and counters -------------------------------------------------------------

    def stats(self) -> SandboxStats:
        """Return messages, token POSTs, SMTP sessions, round trips and commands since :meth:`reset`."""
        result: SandboxStats = self._request("stats")
        return result

    def reset(self) -> None:
        """Zero the counters: forget recorded requests, sessions and messages (files stay)."""
        self._request("reset")

    def set_latency(self, ms: float) -> None:
        """Change the emulated round-trip time, in milliseconds, from now on."""
        self._request("set_latency", ms)

    def set_pipelining(self, enabled: bool) -> None:
        """Advertise PIPELINING (or not) in EHLO answers from now on."""
        self._request("set_pipelining", enabled)

    def smtp_switch(self, name: str, *args: Any, **kwargs: Any) -> None:
        """Flip one of the SMTP server's fault switches in the child.

        Example: ``sandbox.smtp_switch("disconnect_after", 100, times=3)``.

        :param name: ``fail_next_auth``, ``fail_next_data``, ``refuse_recipient``, ``disconnect_after``,
            ``throttle``, ``stall_after``, ``limit_sessions``, ``refuse_connections`` or ``reset_faults``
        """
        self._request("smtp", name, *args, **kwargs)

    def wait_for_messages(self, n: int, timeout: float = 5) -> int:
        """Wait until ``n`` messages have been accepted; return how many there are."""
        result: int = self._request("wait_for_messages", n, timeout)
        return result
