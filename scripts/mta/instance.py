"""A private Postfix + Dovecot pair in a temporary folder, standing in for HVE in the real-MTA tests.

Postfix (submission on 127.0.0.1 and a free port, STARTTLS required, AUTH only after TLS, SASL through
Dovecot, strict pipelining checks, Maildir delivery for one virtual domain) and Dovecot (auth only: XOAUTH2 and
OAUTHBEARER through its ``oauth2`` passdb, which asks the sandbox's introspection endpoint whether a token is
good). Everything lives in one temporary folder: configuration, queue, logs, sockets, mailboxes (``postfix -c``
and ``dovecot -c``). Nothing under /etc is written and the system's main.cf and dovecot.conf are not read (Postfix
only reads the package's own files in /etc/postfix), so runs side by side do not collide.

Needs root (Postfix's master and Dovecot's start as root and drop privileges) and the Debian packages
``postfix`` and ``dovecot-core`` (``scripts/mta/install.sh``).

Run it by hand against a fresh sandbox, to poke at it with a DAG or swaks::

    sudo .venv/bin/python scripts/mta/instance.py

Traps this configuration avoids (docs/development.md lists them too):

- ``maillog_file`` is refused unless its folder starts with one of ``maillog_file_prefixes``.
- anvil's per-client limits exempt ``smtpd_client_event_limit_exceptions``, which defaults to ``$mynetworks``
  and so to loopback: it is emptied here so the limits bind the test client as they would bind a remote one.
- Dovecot delays every answer to an IP after a failed login (anvil's auth penalty, growing to 15 s; past
  Postfix's patience the client gets ``454 4.7.0``): a test that checks a wrong token would slow down or break
  the tests after it. The penalty socket is closed (``mode = 0``) and ``auth_failure_delay = 0``.
- Dovecot answers a bad XOAUTH2 token with a ``334`` carrying a JSON error; the client must answer with an empty
  line to get the ``535``.
- ``reject_non_fqdn_helo_hostname`` refuses a bare host name in EHLO (at RCPT time, so every recipient fails).
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"
DOVECOT = "/usr/sbin/dovecot"
DOVEADM = "/usr/bin/doveadm"
DOMAIN = "contoso.example"
REFUSED = ("refused@contoso.example",)
# The access-table action; Postfix answers "550 5.1.1 <address>: Recipient address rejected: refused by ...".
REFUSED_ACTION = "550 5.1.1 refused by the HVE test MTA"
# Postfix's virtual(8) delivery runs as this user; the tests (root) read the files.
MAIL_USER = "nobody"
MAIL_GROUP = "nogroup"


_QUEUED = re.compile(r"postfix/cleanup\[\d+\]: (\w+): message-id=", re.MULTILINE)
_REMOVED = re.compile(r"postfix/qmgr\[\d+\]: (\w+): removed$", re.MULTILINE)
_MESSAGE_ID = re.compile(r"postfix/cleanup\[\d+\]: (\w+): message-id=<?([^>\s]*)>?$", re.MULTILINE)
_NRCPT = re.compile(r"postfix/qmgr\[\d+\]: (\w+): from=<[^>]*>, size=\d+, nrcpt=(\d+) ", re.MULTILINE)


def unavailable() -> str | None:
    """Return why the MTA cannot run here (not installed, not root), or None when it can."""
    missing = [path for path in (POSTFIX, DOVECOT) if not os.access(path, os.X_OK)]
    if missing:
        return f"{' and '.join(missing)} not installed: run `sudo scripts/mta/install.sh` (or `make test-mta`)"
    if os.geteuid() != 0:
        return "Postfix and Dovecot must be started as root: run the MTA tests as root (CI does)"
    return None


def free_port() -> int:
    """Return a TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MtaInstance:
    """Postfix and Dovecot from one temporary folder; a context manager.

    :param cert_file: PEM certificate chain for STARTTLS (the sandbox's server certificate)
    :param key_file: its private key
    :param ca_file: the CA Dovecot trusts when it calls ``introspection_url`` over HTTPS
    :param introspection_url: the sandbox's RFC 7662 endpoint (:meth:`HveSandbox.introspection_endpoint`)
    :param refused: recipients Postfix refuses at RCPT with :data:`REFUSED_REPLY`
    :param root: the folder to use (kept on stop); a temporary one, removed on stop, if omitted
    """

    def __init__(
        self,
        *,
        cert_file: str | Path,
        key_file: str | Path,
        ca_file: str | Path,
        introspection_url: str,
        refused: Iterable[str] = REFUSED,
        root: str | Path | None = None,
    ) -> None:
        self._given_root = Path(root) if root is not None else None
        self._sources = (Path(cert_file), Path(key_file), Path(ca_file))
        self.introspection_url = introspection_url
        self.refused = tuple(refused)
        self.smtp_port = 0
        self._running = False

    # -- paths -------------------------------------------------------------------------------

    @property
    def postfix_dir(self) -> Path:
        """Return Postfix's config_directory (main.cf, master.cf, the lookup tables)."""
        return self.root / "postfix"

    @property
    def dovecot_conf(self) -> Path:
        """Return the path of dovecot.conf."""
        return self.root / "dovecot" / "dovecot.conf"

    @property
    def postfix_log(self) -> Path:
        """Return Postfix's log file (``maillog_file``)."""
        return self.root / "log" / "postfix.log"

    @property
    def dovecot_log(self) -> Path:
        """Return Dovecot's log file."""
        return self.root / "log" / "dovecot.log"

    @property
    def maildir(self) -> Path:
        """Return the one Maildir every address of the domain is delivered to (a copy per recipient)."""
        return self.root / "maildir" / DOMAIN

    def delivered(self) -> list[Path]:
        """Return the delivered message files, one per recipient of each message (bounces included)."""
        return sorted((self.maildir / "new").glob("*"))

    def wait_for_delivered(self, count: int, timeout: float) -> list[Path]:
        """Poll the Maildir until ``count`` files were delivered or ``timeout`` seconds passed; return them."""
        deadline = time.monotonic() + timeout
        while True:
            files = self.delivered()
            if len(files) >= count or time.monotonic() > deadline:
                return files
            time.sleep(0.1)

    def clear_mailbox(self) -> None:
        """Remove every delivered file (between tests)."""
        for path in self.delivered():
            path.unlink()

    @staticmethod
    def recipient_of(path: Path) -> str:
        """Return the envelope recipient of a delivered file: the ``Delivered-To`` header virtual(8) prepends."""
        with path.open("rb") as file:
            for line in file:
                if not line.strip():
                    break
                if line.lower().startswith(b"delivered-to:"):
                    return line.split(b":", 1)[1].strip().decode().lower()
        raise ValueError(f"{path} has no Delivered-To header")

    def log_text(self) -> str:
        """Return Postfix's log so far."""
        return self.postfix_log.read_text(errors="replace") if self.postfix_log.exists() else ""

    def log_size(self) -> int:
        """Return the size of Postfix's log now: pass it to :meth:`log_since` to read what came after."""
        return self.postfix_log.stat().st_size if self.postfix_log.exists() else 0

    def log_since(self, offset: int) -> str:
        """Return what Postfix logged after ``offset`` (from :meth:`log_size`)."""
        with self.postfix_log.open("rb") as file:
            file.seek(offset)
            return file.read().decode(errors="replace")

    def wait_until_idle(self, timeout: float, since: int = 0) -> str:
        """Poll the log until every message queued after ``since`` left the queue; return that log.

        :raises TimeoutError: naming the queue ids still in the queue
        """
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_since(since)
            pending = set(_QUEUED.findall(text)) - set(_REMOVED.findall(text))
            if not pending:
                return text
            if time.monotonic() > deadline:
                raise TimeoutError(f"Postfix still has {len(pending)} message(s) queued after {timeout}s")
            time.sleep(0.1)

    @staticmethod
    def transactions(log: str, message_id: str) -> dict[str, int]:
        """Return the queue ids that carried ``message_id`` in ``log``, each with its recipient count.

        One SMTP transaction (MAIL, RCPT..., DATA or BDAT) is one queue file: cleanup(8) logs its Message-ID,
        qmgr(8) its ``nrcpt``.
        """
        wanted = message_id.strip().strip("<>")
        queue_ids = {qid for qid, mid in _MESSAGE_ID.findall(log) if mid == wanted}
        return {qid: int(n) for qid, n in _NRCPT.findall(log) if qid in queue_ids}

    # -- life cycle ------------------------------------------------------------------------------

    def __enter__(self) -> MtaInstance:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> MtaInstance:
        """Write the configuration, start Dovecot then Postfix, and wait for Postfix's banner."""
        reason = unavailable()
        if reason:
            raise RuntimeError(reason)
        if self._given_root is not None:
            self.root = self._given_root
            self.root.mkdir(parents=True, exist_ok=True)
        else:
            self.root = Path(tempfile.mkdtemp(prefix="hve-mta-"))
        # Postfix's and Dovecot's unprivileged processes must reach their sockets and files in here.
        self.root.chmod(0o755)
        self._prepare()
        self._run([DOVECOT, "-c", str(self.dovecot_conf)], "start Dovecot")
        self._running = True
        try:
            self._wait_for_path(self.auth_socket, "Dovecot's auth socket", self.dovecot_log)
            # The port is picked free, then bound by Postfix's master: another process may take it between.
            for _attempt in range(3):
                self.smtp_port = free_port()
                (self.postfix_dir / "master.cf").write_text(self._master_cf())
                self._run([POSTFIX, "-c", str(self.postfix_dir), "start"], "start Postfix")
                if self._wait_for_banner():
                    return self
                self._run([POSTFIX, "-c", str(self.postfix_dir), "stop"], "stop Postfix", check=False)
                self._wait_for_exit(self.root / "queue" / "pid" / "master.pid", 20)
            raise RuntimeError(f"Postfix did not answer on 127.0.0.1 after 3 tries:\n{self._tail(self.postfix_log)}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop Postfix and Dovecot (waiting for them to exit) and remove a temporary folder."""
        if not self._running:
            return
        self._running = False
        self._run([POSTFIX, "-c", str(self.postfix_dir), "stop"], "stop Postfix", check=False)
        self._wait_for_exit(self.root / "queue" / "pid" / "master.pid", 20)
        self._run([DOVECOT, "-c", str(self.dovecot_conf), "stop"], "stop Dovecot", check=False)
        self._wait_for_exit(self.root / "dovecot" / "run" / "master.pid", 20)
        if self._given_root is None and not os.environ.get("HVE_MTA_KEEP"):
            shutil.rmtree(self.root, ignore_errors=True)

    def auth_penalties(self) -> list[str]:
        """Return the IPs Dovecot's anvil holds an auth penalty for (``doveadm penalty``); none while it is off."""
        done = subprocess.run(
            [DOVEADM, "-c", str(self.dovecot_conf), "penalty"], capture_output=True, text=True, timeout=30, check=True
        )
        return [line.split()[0] for line in done.stdout.splitlines()[1:] if line.strip()]

    @property
    def auth_socket(self) -> Path:
        """Return the unix socket Postfix asks Dovecot's auth service through."""
        return self.root / "dovecot" / "run" / "auth-postfix"

    # -- configuration ------------------------------------------------------------------------

    def _prepare(self) -> None:
        postfix = pwd.getpwnam("postfix")
        mail_uid = pwd.getpwnam(MAIL_USER).pw_uid
        mail_gid = grp.getgrnam(MAIL_GROUP).gr_gid
        for sub in ("postfix", "queue", "log", "tls", "dovecot/run", "dovecot/state"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "data").mkdir(exist_ok=True)
        os.chown(self.root / "data", postfix.pw_uid, postfix.pw_gid)
        (self.root / "maildir").mkdir(exist_ok=True)
        os.chown(self.root / "maildir", mail_uid, mail_gid)
        cert, key, ca = self._sources
        shutil.copyfile(cert, self.root / "tls" / "server.pem")
        # The private key is created 0600, never readable by others even for a moment.
        key_fd = os.open(self.root / "tls" / "server-key.pem", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(key_fd, "wb") as key_file:
            key_file.write(Path(key).read_bytes())
        # Dovecot's auth process reads the CA after dropping privileges.
        shutil.copyfile(ca, self.root / "tls" / "ca.pem")
        (self.root / "tls" / "ca.pem").chmod(0o644)
        (self.postfix_dir / "main.cf").write_text(self._main_cf(mail_uid, mail_gid))
        (self.postfix_dir / "master.cf").write_text(self._master_cf())
        (self.postfix_dir / "refused_recipients").write_text(
            "".join(f"{address} {REFUSED_ACTION}\n" for address in self.refused)
        )
        self.dovecot_conf.write_text(self._dovecot_conf())
        (self.root / "dovecot" / "oauth2.conf.ext").write_text(self._oauth2_conf())

    def _main_cf(self, mail_uid: int, mail_gid: int) -> str:
        root = self.root
        return f"""\
# A private Postfix instance for the HVE provider's real-MTA tests (scripts/mta/instance.py).
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mta.hve-tests.example
mydomain = hve-tests.example
myorigin = $myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relay_domains =
relayhost =
# Nothing leaves this machine: only contoso.example is delivered (to Maildirs below).
default_transport = error:5.7.1 the HVE test MTA delivers to {DOMAIN} only
relay_transport = $default_transport
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_peername_lookup = no
biff = no
readme_directory = no

# Logging to a file needs the file's folder among the allowed prefixes.
maillog_file = {self.postfix_log}
maillog_file_prefixes = {root}/log

# Submission, as HVE: TLS first, AUTH only after it, XOAUTH2 through Dovecot.
smtpd_banner = $myhostname ESMTP HVE test MTA
smtpd_tls_cert_file = {root}/tls/server.pem
smtpd_tls_key_file = {root}/tls/server-key.pem
smtpd_tls_security_level = encrypt
smtpd_tls_auth_only = yes
smtpd_tls_protocols = >=TLSv1.2
smtpd_tls_loglevel = 1
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = {self.auth_socket}
smtpd_sasl_security_options = noanonymous
smtpd_sasl_tls_security_options = noanonymous
smtpd_sasl_authenticated_header = no

# Strict checks a careless client trips over.
smtpd_forbid_unauth_pipelining = yes
smtpd_helo_required = yes
smtpd_helo_restrictions = reject_invalid_helo_hostname, reject_non_fqdn_helo_hostname
smtpd_sender_restrictions = reject_non_fqdn_sender
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_recipient_restrictions = reject_non_fqdn_recipient,
    check_recipient_access texthash:{self.postfix_dir}/refused_recipients, permit_sasl_authenticated, reject
# HVE's limits: 50 recipients and 10 MB a message.
smtpd_recipient_limit = 50
message_size_limit = 10485760
# anvil's limits bind loopback too (the exceptions default to $mynetworks, which holds 127.0.0.1).
smtpd_client_event_limit_exceptions =
smtpd_client_connection_count_limit = 10

# Delivery: every address of the domain exists and goes to one Maildir (trailing slash), written as {MAIL_USER};
# virtual(8) puts the recipient in Delivered-To. (A Maildir per address would need a table listing each one:
# virtual(8) refuses regular-expression substitution in mailbox paths.)
virtual_mailbox_domains = {DOMAIN}
virtual_mailbox_base = {self.root}/maildir
virtual_mailbox_maps = static:{DOMAIN}/
virtual_uid_maps = static:{mail_uid}
virtual_gid_maps = static:{mail_gid}
"""

    def _master_cf(self) -> str:
        services = [
            f"127.0.0.1:{self.smtp_port} inet n - n - - smtpd",
            "pickup unix n - n 60 1 pickup",
            "cleanup unix n - n - 0 cleanup",
            "qmgr unix n - n 300 1 qmgr",
            "tlsmgr unix - - n 1000? 1 tlsmgr",
            "rewrite unix - - n - - trivial-rewrite",
            "bounce unix - - n - 0 bounce",
            "defer unix - - n - 0 bounce",
            "trace unix - - n - 0 bounce",
            "verify unix - - n - 1 verify",
            "flush unix n - n 1000? 0 flush",
            "proxymap unix - - n - - proxymap",
            "proxywrite unix - - n - 1 proxymap",
            "smtp unix - - n - - smtp",
            "relay unix - - n - - smtp",
            "showq unix n - n - - showq",
            "error unix - - n - - error",
            "retry unix - - n - - error",
            "discard unix - - n - - discard",
            "local unix - n n - - local",
            "virtual unix - n n - - virtual",
            "lmtp unix - - n - - lmtp",
            "anvil unix - - n - 1 anvil",
            "scache unix - - n - 1 scache",
            "postlog unix-dgram n - n - 1 postlogd",
        ]
        return "# No chroot: the instance's files live in a temporary folder.\n" + "\n".join(services) + "\n"

    def _dovecot_conf(self) -> str:
        root = self.root
        return f"""\
# A private, auth-only Dovecot for the HVE provider's real-MTA tests (scripts/mta/instance.py).
instance_name = {root.name}
base_dir = {root}/dovecot/run
state_dir = {root}/dovecot/state
protocols =
listen = 127.0.0.1
ssl = no
log_path = {self.dovecot_log}
auth_verbose = yes
auth_mechanisms = xoauth2 oauthbearer
# No delay after a failed login: the next test must not wait for the last one's failure.
auth_failure_delay = 0
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {root}/dovecot/oauth2.conf.ext
}}
userdb {{
  driver = static
  args = uid={MAIL_USER} gid={MAIL_GROUP} home=/nonexistent
}}
service auth {{
  unix_listener auth-postfix {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
# The auth process cannot reach anvil's penalty socket, so no IP is slowed down after a failure
# (else Postfix answers 454 4.7.0 to the next AUTH from 127.0.0.1).
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""

    def _oauth2_conf(self) -> str:
        return f"""\
introspection_mode = post
introspection_url = {self.introspection_url}
force_introspection = yes
username_attribute = username
active_attribute = active
active_value = true
tls_ca_cert_file = {self.root}/tls/ca.pem
timeout_msecs = 10000
"""

    # -- helpers ----------------------------------------------------------------------------------

    def _run(self, argv: list[str], what: str, *, check: bool = True) -> None:
        # The daemons inherit stdout and stderr and keep them open: a file, not a pipe, or this waits for them.
        output = self.root / "log" / "commands.log"
        with output.open("a") as out:
            out.write(f"$ {' '.join(argv)}\n")
            out.flush()
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, timeout=60)
        if check and done.returncode != 0:
            raise RuntimeError(
                f"Could not {what} ({' '.join(argv)} exited {done.returncode}):{self._tail(output)}"
                f"{self._tail(self.postfix_log)}{self._tail(self.dovecot_log)}"
            )

    def _wait_for_banner(self, timeout: float = 20) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.smtp_port), timeout=5) as sock:
                    if sock.recv(512).startswith(b"220 "):
                        return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    def _wait_for_path(self, path: Path, what: str, log: Path, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} ({path}) did not appear within {timeout}s:\n{self._tail(log)}")
            time.sleep(0.05)

    @staticmethod
    def _wait_for_exit(pid_file: Path, timeout: float) -> None:
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    @staticmethod
    def _tail(path: Path, lines: int = 30) -> str:
        if not path.exists():
            return ""
        return f"\n--- last lines of {path} ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def main() -> None:
    """Start a sandbox and an MTA in front of it, print the connection, and wait for Ctrl-C."""
    import contextlib
    import json
    import signal

    from airflow_provider_hve.sandbox import HveSandbox

    with HveSandbox() as sandbox:
        mta = MtaInstance(
            cert_file=sandbox.pki.server_cert_path,
            key_file=sandbox.pki.server_key_path,
            ca_file=sandbox.ca_bundle,
            introspection_url=sandbox.introspection_endpoint("127.0.0.1"),
        )
        with mta:
            conn = sandbox.connection()
            conn["port"] = mta.smtp_port
            print(f"Postfix on 127.0.0.1:{mta.smtp_port}, files in {mta.root}")
            print(f"AIRFLOW_CONN_HVE_DEFAULT='{json.dumps(conn)}'")
            print("Ctrl-C stops both.", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()


if __name__ == "__main__":
    main()
