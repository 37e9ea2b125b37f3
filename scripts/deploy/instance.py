"""A private PostgreSQL cluster and a private Redis, on loopback, from a temporary folder: the deployment test's.

The deployment test (``make test-deploy``, tests/deploy/) runs Airflow with the CeleryExecutor against these:
PostgreSQL as the metadata database and Celery's result backend, Redis as Celery's broker. Nothing of the system's
is used or changed: no cluster under /var/lib/postgresql, no service, no file under /etc. PostgreSQL is
``initdb``-ed into the folder, listens on 127.0.0.1 and a free port (its unix socket in the folder too), and stops
with ``pg_ctl stop -m fast``; Redis listens on 127.0.0.1 and a free port, keeps nothing on disk, and stops on
SIGTERM. Readiness is asked (``pg_isready``, ``PING``), never slept on.

PostgreSQL refuses to run as root: as root (CI), the cluster runs as the ``postgres`` system user the Debian
package creates, and the folder is handed to it; as anyone else, as that user. Needs the Debian packages
``postgresql`` and ``redis-server`` (``scripts/deploy/install.sh``).

Run it by hand to poke at the pair::

    sudo .venv/bin/python scripts/deploy/instance.py
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REDIS_SERVER = "/usr/bin/redis-server"
PG_USER = "postgres"
"""The system user the cluster runs as when started by root (created by Debian's postgresql package)."""
DATABASE = "airflow"
ROLE = "airflow"


def pg_bin_dir() -> Path | None:
    """Return the newest ``/usr/lib/postgresql/<version>/bin`` holding ``postgres``, or None."""
    found = [Path(path).parent for path in glob.glob("/usr/lib/postgresql/*/bin/postgres")]
    if not found:
        return None
    return max(found, key=lambda path: tuple(int(part) for part in path.parent.name.split(".") if part.isdigit()))


def unavailable() -> str | None:
    """Return why PostgreSQL and Redis cannot run here (not installed, no ``postgres`` user), or None."""
    missing = []
    bin_dir = pg_bin_dir()
    if bin_dir is None or not all(os.access(bin_dir / name, os.X_OK) for name in ("initdb", "pg_ctl", "pg_isready")):
        missing.append("PostgreSQL (/usr/lib/postgresql/<version>/bin)")
    if not os.access(REDIS_SERVER, os.X_OK):
        missing.append(REDIS_SERVER)
    if missing:
        return f"{' and '.join(missing)} not installed: run `sudo scripts/deploy/install.sh` (or `make test-deploy`)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            return f"no {PG_USER!r} user to run PostgreSQL as (root may not): reinstall the postgresql package"
    return None


def free_port() -> int:
    """Return a TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return ""
    text = "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return f"\n--- last lines of {path} ---\n{text}"


class PostgresInstance:
    """A PostgreSQL cluster of its own in ``root/pg``; a context manager.

    :param root: the folder to use (created; kept on stop); a temporary one, removed on stop, if omitted
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self._given_root = Path(root) if root is not None else None
        self.port = 0
        self._running = False
        bin_dir = pg_bin_dir()
        if bin_dir is None:
            raise RuntimeError(unavailable() or "PostgreSQL is not installed")
        self.bin = bin_dir

    @property
    def data_dir(self) -> Path:
        return self.root / "pg" / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "pg" / "run"

    @property
    def log_file(self) -> Path:
        return self.root / "pg" / "postgres.log"

    @property
    def url(self) -> str:
        """Return the SQLAlchemy URL of the ``airflow`` database (psycopg2, TCP on 127.0.0.1, trust auth)."""
        return f"postgresql+psycopg2://{ROLE}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def dsn(self) -> str:
        """Return the libpq connection string of the ``airflow`` database."""
        return f"host=127.0.0.1 port={self.port} user={ROLE} dbname={DATABASE}"

    def __enter__(self) -> PostgresInstance:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> PostgresInstance:
        """``initdb``, start on 127.0.0.1 and a free port, wait for ``pg_isready``, create the ``airflow`` database."""
        reason = unavailable()
        if reason:
            raise RuntimeError(reason)
        self.root = self._given_root or Path(tempfile.mkdtemp(prefix="hve-deploy-pg-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # the postgres user walks through it to its own folder
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self._chown(self.root / "pg")  # initdb creates the data folder in there
        self._run(
            [str(self.bin / "initdb"), "-D", str(self.data_dir), "-U", ROLE, "--auth=trust", "-E", "UTF8",
             "--locale=C.UTF-8", "--no-sync"],
            "initdb",
        )  # fmt: skip
        # A test database: nothing here must survive a crash, so no fsync (initdb's --no-sync likewise).
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "shared_buffers": "64MB",
            "logging_collector": "off",
        }
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# hve deployment test (scripts/deploy/instance.py)\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        # The port is picked free, then bound by postgres: another process may take it in between.
        for _attempt in range(3):
            self.port = free_port()
            self._run(
                [str(self.bin / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file), "-o",
                 f"-p {self.port}", "-w", "-t", "60", "start"],
                "start PostgreSQL",
                check=False,
            )  # fmt: skip
            self._running = True
            if self._wait_ready(60):
                break
            self._stop_server()
        else:
            raise RuntimeError(f"PostgreSQL did not get ready on 127.0.0.1 after 3 tries:{_tail(self.log_file)}")
        try:
            self._run(
                [str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", ROLE, DATABASE],
                "create the airflow database",
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the cluster (fast shutdown, waiting for it) and remove a temporary folder."""
        if self._running:
            self._stop_server()
        if self._given_root is None and hasattr(self, "root") and not os.environ.get("HVE_DEPLOY_KEEP"):
            shutil.rmtree(self.root, ignore_errors=True)

    def _stop_server(self) -> None:
        self._running = False
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60", "stop"],
                  "stop PostgreSQL", check=False)  # fmt: skip

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = subprocess.run(
                [str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", ROLE, "-t", "5"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=30,
                check=False,
            )
            if done.returncode == 0:
                return True
            if done.returncode == 2 and not self._postmaster_running():  # no response, and no server to wait for
                return False
            time.sleep(0.1)
        return False

    def _postmaster_running(self) -> bool:
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return False
        return True

    def _chown(self, top: Path) -> None:
        if os.geteuid() != 0:
            return
        user = pwd.getpwnam(PG_USER)
        for folder, dirs, files in os.walk(top):
            for name in (folder, *(os.path.join(folder, entry) for entry in dirs + files)):
                os.chown(name, user.pw_uid, user.pw_gid)

    def _run(self, argv: list[str], what: str, *, check: bool = True) -> None:
        """Run a PostgreSQL tool, as the ``postgres`` user when we are root; its output goes to a file."""
        output = self.root / "pg" / "commands.log"
        as_user: dict[str, object] = {}
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env["LC_ALL"] = "C.UTF-8"
        if os.geteuid() == 0:
            user = pwd.getpwnam(PG_USER)
            as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
            env.update(HOME=str(self.root / "pg"), USER=PG_USER, LOGNAME=PG_USER)
        with output.open("a") as out:
            out.write(f"$ {' '.join(argv)}\n")
            out.flush()
            # The server inherits stdout and stderr and keeps them open: a file, not a pipe, or this waits for it.
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.root / "pg",
                timeout=120,
                check=False,
                **as_user,  # type: ignore[arg-type]
            )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"Could not {what} ({' '.join(argv)} exited {done.returncode}):{_tail(output)}{_tail(self.log_file)}"
            )


class RedisInstance:
    """A redis-server of its own on 127.0.0.1 and a free port, nothing persisted; a context manager.

    :param root: the folder for its log (created; kept on stop); a temporary one, removed on stop, if omitted
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self._given_root = Path(root) if root is not None else None
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        return self.root / "redis" / "redis.log"

    @property
    def url(self) -> str:
        """Return the Celery broker URL (database 0)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> RedisInstance:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> RedisInstance:
        """Start redis-server and wait until it answers ``PING``."""
        reason = unavailable()
        if reason:
            raise RuntimeError(reason)
        self.root = self._given_root or Path(tempfile.mkdtemp(prefix="hve-deploy-redis-"))
        (self.root / "redis").mkdir(parents=True, exist_ok=True)
        for _attempt in range(3):
            self.port = free_port()
            argv = [
                REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--protected-mode", "yes",
                "--save", "", "--appendonly", "no", "--dir", str(self.root / "redis"), "--daemonize", "no",
                "--logfile", str(self.log_file),
            ]  # fmt: skip
            self._process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, cwd=self.root / "redis")
            if self._wait_ready(30):
                return self
            self.stop(remove=False)
        raise RuntimeError(f"redis-server did not answer PING on 127.0.0.1 after 3 tries:{_tail(self.log_file)}")

    def stop(self, *, remove: bool = True) -> None:
        """Stop redis-server (SIGTERM, waiting; SIGKILL after 20 s) and remove a temporary folder."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=20)
        if remove and self._given_root is None and hasattr(self, "root") and not os.environ.get("HVE_DEPLOY_KEEP"):
            shutil.rmtree(self.root, ignore_errors=True)

    def ping(self) -> bool:
        """Return whether the server answers ``PING`` with ``+PONG``."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                return False  # exited: the port was taken, say
            if self.ping():
                return True
            time.sleep(0.05)
        return False


def main() -> None:
    """Start both, print their URLs, and wait for Ctrl-C."""
    import signal

    with PostgresInstance() as pg, RedisInstance() as redis:
        print(f"PostgreSQL: {pg.url}  (files in {pg.root})")
        print(f"Redis:      {redis.url}")
        print("Ctrl-C stops both.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
