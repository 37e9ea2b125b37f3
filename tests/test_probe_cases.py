"""The outside probe's last hostile inputs (issue 20): each refused before anything is sent, naming the argument.

Every case here failed on the code before the fix. Assertions are on what the sandbox received (or that it
received nothing: no SMTP connection, no token request).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_hve.hooks.hve import HveHook
from airflow_provider_hve.sandbox import HveSandbox

ConnFactory = Callable[..., str]


def hook_send(conn_factory: ConnFactory, **kwargs: Any) -> Any:
    arguments = {"to": "team@contoso.example", "subject": "Daily report", "text_content": "All good."}
    return HveHook(hve_conn_id=conn_factory()).send_email(**{**arguments, **kwargs})


def assert_nothing_sent(sandbox: HveSandbox, token_posts: Callable[[], list[Any]]) -> None:
    assert not sandbox.smtp_sessions, "an SMTP connection was opened"
    assert not token_posts(), "a token was requested"
    assert not sandbox.messages


# -- CSV attachments: formulas in report data stay text (OWASP, CSV injection) ------------------------------

FORMULAS = ['=HYPERLINK("http://evil.example","x")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A2)", "\tx", "\rx"]


def test_csv_formula_cells_are_written_as_text(hve_connection: ConnFactory, sandbox: HveSandbox) -> None:
    from airflow_provider_hve.message import Attachment
    from airflow_provider_hve.reports import table_from_data

    rows = [{"value": text, "n": -3, "ratio": -0.5, "plain": "Zoë"} for text in FORMULAS]
    rows.append({"=evil": "ok"})  # a column name is a cell too
    table = table_from_data(rows)
    hook_send(hve_connection, attachments=[Attachment("report.csv", table.to_csv(), "text/csv")])
    (delivered,) = sandbox.wait_for_messages(1)
    (attachment,) = list(delivered.message.iter_attachments())
    content = attachment.get_content()
    assert content.startswith("\ufeff")
    header, *cells = list(csv.reader(io.StringIO(content.lstrip("\ufeff"))))
    assert header == ["value", "n", "ratio", "plain", "'=evil"]
    for text, written in zip(FORMULAS, cells, strict=False):
        assert written[:4] == ["'" + text, "-3", "-0.5", "Zoë"]  # numbers stay numbers
    assert cells[-1] == ["", "", "", "", "ok"]


def test_csv_cells_split_by_a_separator_or_led_by_spaces_are_written_as_text() -> None:
    # Excel with ";" as its list separator splits "a;=1+1" and reads "=1+1" as a formula; " =1+1" is a formula too;
    # a non-string value (a path, a date) is written by its text, which gets the same rule.
    import pathlib

    from airflow_provider_hve.reports import table_from_data

    rows = [{"v": "a;=1+1"}, {"v": "x, +cmd|' /C calc'!A0"}, {"v": "  =SUM(A1)"}, {"v": pathlib.PurePath("=evil")}]
    rows.append({"v": "plain; text"})
    text = table_from_data(rows).to_csv().decode("utf-8-sig")
    cells = [row[0] for row in csv.reader(io.StringIO(text))][1:]
    assert cells == ["'a;=1+1", "'x, +cmd|' /C calc'!A0", "'  =SUM(A1)", "'=evil", "plain; text"]


def test_a_lone_surrogate_in_report_data_is_a_config_error_naming_data() -> None:
    from airflow_provider_hve.exceptions import HveConfigError
    from airflow_provider_hve.reports import table_from_data

    with pytest.raises(HveConfigError, match="Argument 'data' holds a lone surrogate"):
        table_from_data([{"v": "ok \ud800"}]).to_csv()


# -- The sandbox's folders and files are private from the first byte ----------------------------------------

_CHMODS: list[str] | None = None


def _record_chmods(event: str, args: tuple[Any, ...]) -> None:
    if _CHMODS is not None and event == "os.chmod":
        _CHMODS.append(str(args[0]))


def test_sandbox_files_are_0600_and_folders_0700_from_the_first_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a umask of 0 (what a careless container has), nothing is ever wider than the owner's, not even briefly."""
    import json
    import os
    import stat
    import sys

    global _CHMODS
    if not getattr(_record_chmods, "installed", False):
        sys.addaudithook(_record_chmods)  # for the rest of the process; inert while _CHMODS is None
        _record_chmods.installed = True  # type: ignore[attr-defined]
    mailbox, state = tmp_path / "new" / "mailbox", tmp_path / "new" / "state"
    _CHMODS = []
    previous = os.umask(0)
    try:
        with HveSandbox(mailbox_dir=mailbox, state_dir=state) as box:
            box.write_federated_token()  # written again over the first
            monkeypatch.setenv("AIRFLOW_CONN_HVE_PRIVATE", json.dumps(box.connection()))
            HveHook(hve_conn_id="hve_private").send_email(to="team@contoso.example", subject="s", text_content="x")
            box.wait_for_messages(1)
            chmods = list(_CHMODS)
            folders = [tmp_path / "new", mailbox, state]
            files = [p for folder in (mailbox, state) for p in folder.iterdir()]
            modes = {str(p): stat.S_IMODE(p.stat().st_mode) for p in folders + files}
    finally:
        os.umask(previous)
        _CHMODS = None
    assert {p.suffix for p in files} >= {".eml", ".pem"} and any("token" in p.name for p in files), files
    assert all(modes[str(p)] == 0o700 for p in folders), modes
    assert all(modes[str(p)] == 0o600 for p in files), modes
    assert not [path for path in chmods if path.startswith(str(tmp_path))], chmods


# -- Invisible and bidi format characters in envelope addresses -------------------------------------------

FORMAT_CHARACTERS = ["\u202e", "\u200b", "\u2066", "\u2069", "\ufeff", "\u00ad", "\u200d"]


@pytest.mark.parametrize("smtputf8", [True, False], ids=["smtputf8", "ascii-only"])
@pytest.mark.parametrize("char", FORMAT_CHARACTERS, ids=[f"U+{ord(c):04X}" for c in FORMAT_CHARACTERS])
def test_format_characters_in_envelope_addresses_are_refused(
    hve_connection: ConnFactory, sandbox: HveSandbox, char: str, smtputf8: bool
) -> None:
    from email.message import EmailMessage

    from airflow_provider_hve.exceptions import HveConfigError

    sandbox.smtp.smtputf8 = smtputf8
    message = EmailMessage()
    message["From"] = sandbox.account
    message["Subject"] = "Hi"
    message.set_content("hello")
    address = f"ad{char}min@contoso.example"
    hook = HveHook(hve_conn_id=hve_connection())
    with hook.smtp_session() as session:
        commands = sandbox.smtp_sessions[0].commands
        with pytest.raises(HveConfigError) as info:
            session.send(message, ["alice@contoso.example", address])
        assert "'recipients'" in str(info.value) and f"U+{ord(char):04X}" in str(info.value)
        with pytest.raises(HveConfigError, match="'envelope_from'.*invisible format character"):
            session.send(message, ["alice@contoso.example"], envelope_from=address)
        with pytest.raises(HveConfigError, match="'recipients'.*invisible format character"):
            session.pipeline().submit("row", b"Subject: x\r\n\r\nx\r\n", [address])
        assert sandbox.smtp_sessions[0].commands == commands  # nothing was written
    assert not sandbox.messages


# -- Attachments must be regular files ------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["files", "symlink", "merge-files"])
def test_an_attachment_under_proc_is_refused(
    how: str,
    tmp_path: Path,
    hve_connection: ConnFactory,
    sandbox: HveSandbox,
    token_posts: Callable[[], list[Any]],
) -> None:
    """/proc/self/environ reports a size of 0: the size check passed it, and it holds the worker's secrets."""
    from airflow_provider_hve.exceptions import HveConfigError
    from airflow_provider_hve.message import attachments_from_files

    target = "/proc/self/environ"
    with pytest.raises(HveConfigError) as info:
        if how == "files":
            hook_send(hve_connection, files=[target])
        elif how == "symlink":
            link = tmp_path / "report.csv"
            link.symlink_to(target)
            hook_send(hve_connection, files=[str(link)])
        else:
            attachments_from_files([target])
    message = str(info.value)
    assert "'files'" in message and "not a regular file" in message and "Attach a regular file" in message
    assert_nothing_sent(sandbox, token_posts)


def test_a_symlink_swapped_before_the_open_is_checked_on_the_open_file(
    tmp_path: Path,
    hve_connection: ConnFactory,
    sandbox: HveSandbox,
    token_posts: Callable[[], list[Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """report.csv is a symlink to a regular file while it is checked, and to a kernel file when it is opened."""
    import builtins

    from airflow_provider_hve import message as message_module
    from airflow_provider_hve.exceptions import HveConfigError

    document = tmp_path / "document.csv"
    document.write_text("a,b\n" * 50)  # 200 bytes: more than the kernel file will hold
    link = tmp_path / "report.csv"
    link.symlink_to(document)
    real_open = builtins.open

    def swapping_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        # The swap an attacker races for, made at the worst moment: after every look at the path, before the open.
        if str(file) == str(link) and link.resolve() == document:
            link.unlink()
            link.symlink_to("/proc/sys/kernel/ostype")  # "Linux\n": 6 bytes, a size of 0
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(message_module, "open", swapping_open, raising=False)
    with pytest.raises(HveConfigError) as info:
        hook_send(hve_connection, files=[str(link)])
    message = str(info.value)
    assert "'files'" in message and "not a regular file" in message and "proc (/proc)" in message
    assert_nothing_sent(sandbox, token_posts)


def test_a_regular_file_in_dev_shm_is_attached(hve_connection: ConnFactory, sandbox: HveSandbox) -> None:
    """/dev/shm is tmpfs: its files are ordinary files, not kernel files (the /dev/ prefix refused them)."""
    import os
    import tempfile

    if not os.path.isdir("/dev/shm") or not os.access("/dev/shm", os.W_OK):
        pytest.skip("no writable /dev/shm on this machine")
    with tempfile.NamedTemporaryFile(dir="/dev/shm", prefix="hve-test-", suffix=".csv") as handle:
        handle.write(b"region,total\nnorth,42\n")
        handle.flush()
        hook_send(hve_connection, files=[handle.name])
    (delivered,) = sandbox.wait_for_messages(1)
    (attachment,) = delivered.message.iter_attachments()
    assert attachment.get_filename() == os.path.basename(handle.name)
    assert attachment.get_content() == "region,total\nnorth,42\n"


@pytest.mark.parametrize(
    ("file_system", "inside"), [("/sys", "kernel/uevent_seqnum"), ("/proc", "self/environ")], ids=["sys", "proc"]
)
def test_a_kernel_file_under_a_bind_mount_is_refused(file_system: str, inside: str, tmp_path: Path) -> None:
    """
    /proc or /sys bind-mounted elsewhere: the path has no /proc/ or /sys/ prefix, the file system is the same.

    Run in a private mount namespace (``unshare -m``), so the bind mount is seen by that process only.
    """
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("unshare or mount is not available")
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    target = mount_point / inside
    script = (
        "from airflow_provider_hve.exceptions import HveConfigError\n"
        "from airflow_provider_hve.message import attachments_from_files\n"
        "try:\n"
        f"    attachments_from_files([{str(target)!r}])\n"
        "except HveConfigError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    print('ATTACHED')\n"
    )
    command = [
        "unshare", "-m", "--propagation", "private", "sh", "-c",
        'mount --bind "$0" "$1" && exec "$2" -c "$3"', file_system, str(mount_point), sys.executable, script,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 and "ATTACHED" not in done.stdout and "regular file" not in done.stdout:
        pytest.skip(f"cannot bind-mount in a private mount namespace here: {done.stderr.strip()[:200]}")
    fs_type = "sysfs" if file_system == "/sys" else "proc"
    assert "Argument 'files'" in done.stdout and "not a regular file" in done.stdout, done.stdout
    assert f"it is on {fs_type} (" in done.stdout


# -- Template paths stay inside the DAG folder / template_searchpath ------------------------------------------


@pytest.fixture
def template_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """dags/templates/ is the DAG's search path; outside.txt sits next to dags/, in the working directory too."""
    templates = tmp_path / "dags" / "templates"
    templates.mkdir(parents=True)
    (templates / "body.html").write_text("<p>inside</p>")
    (tmp_path / "dags" / "outside.txt").write_text("outside {{ secret }}")
    (tmp_path / "outside.txt").write_text("outside {{ secret }}")
    monkeypatch.chdir(templates)
    return templates


@pytest.mark.parametrize("path", ["../outside.txt", "templates/../../outside.txt", "sub/../../outside.txt"])
def test_a_template_path_climbing_out_of_the_search_path_is_refused(template_folders: Path, path: str) -> None:
    from airflow.sdk import DAG

    from airflow_provider_hve.exceptions import HveConfigError
    from airflow_provider_hve.templating import default_environment, template_or_file

    env = DAG("probe", schedule=None, template_searchpath=[str(template_folders)]).get_template_env()
    assert template_or_file(env, "body.html", "html_content") == "<p>inside</p>"
    for environment in (env, default_environment()):  # with the DAG's loader, and without any
        with pytest.raises(HveConfigError) as info:
            template_or_file(environment, path, "text_content")
        message = str(info.value)
        assert "'text_content'" in message and "'..'" in message and "template_searchpath" in message


def test_a_relative_template_path_is_not_read_from_the_working_directory(
    template_folders: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.sdk import DAG

    from airflow_provider_hve.exceptions import HveConfigError
    from airflow_provider_hve.templating import template_or_file

    monkeypatch.chdir(template_folders.parent.parent)  # outside.txt is right here, but not in the search path
    env = DAG("probe", schedule=None, template_searchpath=[str(template_folders)]).get_template_env()
    with pytest.raises(HveConfigError, match="'html_content'.*'outside.txt' was not found"):
        template_or_file(env, "outside.txt", "html_content")
    absolute = str(template_folders.parent.parent / "outside.txt")  # an absolute path is the author's choice
    assert template_or_file(env, absolute, "html_content") == "outside {{ secret }}"


# -- Trust and verdict headers cannot be set ------------------------------------------------------------------

VERDICT_HEADERS = [
    "Received-SPF",
    "received-spf",
    "X-MS-Exchange-CrossTenant-AuthAs",
    "X-MS-Exchange-CrossTenant-Id",
    "X-Forefront-Antispam-Report",
    "X-Microsoft-Antispam",
    "X-Microsoft-Antispam-Message-Info",
    "Authentication-Results",
    "Disposition-Notification-To",
    "Return-Receipt-To",
    "X-Confirm-Reading-To",
    "Delivered-To",
    "X-MS-Exchange-AntiSpam-Relay",
    "X-MS-Exchange-Transport-CrossTenantHeadersStamped",
    "X-Spam-Status",
]


@pytest.mark.parametrize("name", ["Received-SPF\n", "Bcc\n", "From\r\n", "X-Report\n", "X-Report\t"])
def test_a_header_name_ending_in_a_line_break_is_refused(
    name: str, hve_connection: ConnFactory, sandbox: HveSandbox, token_posts: Callable[[], list[Any]]
) -> None:
    # "^[...]+$" with match() let a final "\n" through: the name reached the header block with its line break.
    from airflow_provider_hve.exceptions import HveConfigError

    with pytest.raises(HveConfigError, match="'headers'"):
        hook_send(hve_connection, headers={name: "pass"})
    assert_nothing_sent(sandbox, token_posts)


@pytest.mark.parametrize("name", VERDICT_HEADERS)
def test_trust_and_verdict_headers_cannot_be_set(
    name: str, hve_connection: ConnFactory, sandbox: HveSandbox, token_posts: Callable[[], list[Any]]
) -> None:
    from airflow_provider_hve.exceptions import HveConfigError

    with pytest.raises(HveConfigError, match=f"'headers': '{name}' is set by the provider"):
        hook_send(hve_connection, headers={name: "pass"})
    assert_nothing_sent(sandbox, token_posts)


def test_look_alike_x_headers_still_go_through(hve_connection: ConnFactory, sandbox: HveSandbox) -> None:
    hook_send(hve_connection, headers={"X-Microsoft-Report": "mine"})
    (delivered,) = sandbox.wait_for_messages(1)
    assert delivered.message["X-Microsoft-Report"] == "mine"


# -- The recipient cap is checked while splitting, not after parsing everything --------------------------------


@pytest.mark.parametrize(
    "form",
    ["user{n}@contoso.example", "User {n} <user{n}@contoso.example>"],
    ids=["bare", "display-name"],
)
@pytest.mark.parametrize("separator", [", ", "; "], ids=["comma", "semicolon"])
def test_100000_addresses_in_one_string_are_refused_in_under_half_a_second(
    form: str,
    separator: str,
    hve_connection: ConnFactory,
    sandbox: HveSandbox,
    token_posts: Callable[[], list[Any]],
) -> None:
    import time

    from airflow_provider_hve import addresses
    from airflow_provider_hve.exceptions import HveConfigError
    from airflow_provider_hve.message import DEFAULT_MAX_RECIPIENTS

    addresses._parse_one_string.cache_clear()
    everyone = separator.join(form.format(n=n) for n in range(100_000))
    hook = HveHook(hve_conn_id=hve_connection())
    assert hook.config.conn_id  # the connection is read outside the timing
    started = time.perf_counter()
    with pytest.raises(HveConfigError) as info:
        hook.send_email(to=everyone, subject="s", text_content="x")
    elapsed = time.perf_counter() - started
    assert "'to'" in str(info.value) and f"more than {DEFAULT_MAX_RECIPIENTS} recipients" in str(info.value)
    assert elapsed < 0.5, f"{elapsed:.2f} s"
    assert_nothing_sent(sandbox, token_posts)


def test_a_long_run_of_spaces_does_not_make_the_recipient_count_slow() -> None:
    # Counting keyed each piece with a regex whose leading \s* overlapped the display name's class: 16,000 spaces
    # before the last piece took 1.6 s (160,000: minutes). Linear now (stripped first).
    import time

    from airflow_provider_hve.addresses import AddressError, parse_addresses

    value = "a@contoso.example," * 3001 + " " * 16_000 + "x"
    started = time.perf_counter()
    with pytest.raises(AddressError):
        parse_addresses(value, limit=3000)
    assert time.perf_counter() - started < 0.5


def test_the_lazy_split_gives_the_same_pieces() -> None:
    from airflow_provider_hve.addresses import split_address_list

    assert split_address_list("a@x.example, b@x.example;c@x.example") == ["a@x.example", " b@x.example", "c@x.example"]
    quoted = '"Doe, Jane" <jane@x.example>; (a, comment) b@x.example, <c@x.example>'
    assert split_address_list(quoted) == ['"Doe, Jane" <jane@x.example>', " (a, comment) b@x.example", " <c@x.example>"]


def test_the_count_before_parsing_keeps_duplicates_as_one() -> None:
    from airflow_provider_hve.message import build_message

    # 3 pieces over a limit of 2, but only 2 addresses: "Ann <ann@...>" and "ANN@..." are one recipient.
    outgoing = build_message(
        sender="a@contoso.example",
        to="Ann <ann@contoso.example>, ANN@contoso.example; bob@contoso.example",
        subject="s",
        text_content="x",
        max_recipients=2,
    )
    assert outgoing.recipients == ("ann@contoso.example", "bob@contoso.example")


# -- Path fields never echo their value ------------------------------------------------------------------------

SECRET = "Q8Q~k3yV4lue.that_must-NEVER~leak0123456"
TENANT = "8f2c1c9e-5a0b-4c4e-9d7a-5e1d0c0ffee5"
CLIENT = "3b7e4f2a-9c1d-4e8b-a6f5-0d2c4b6a8e10"
PEM_PASTED = f"-----BEGIN PRIVATE KEY-----\n{SECRET}\n-----END PRIVATE KEY-----"


def _config(extra: dict[str, Any], password: str = SECRET) -> Any:
    from airflow_provider_hve.connection import HveConnectionConfig

    return HveConnectionConfig.from_fields(
        "hve_paths",
        login="reports@contoso.com",
        password=password,
        extra={"tenant_id": TENANT, "client_id": CLIENT, **extra},
    )


def _assert_not_echoed(message: str) -> None:
    for fragment in (SECRET, SECRET[:12], SECRET[-12:]):
        assert fragment not in message, message


@pytest.mark.parametrize(
    ("extra", "field", "hint"),
    [
        ({"auth_mode": "certificate", "certificate_path": SECRET}, "'certificate_path'", "relative path"),
        ({"auth_mode": "certificate", "certificate_path": PEM_PASTED}, "'certificate_path'", "content of a key"),
        ({"auth_mode": "certificate", "certificate_path": f"/etc/{SECRET}.pem"}, "'certificate_path'", "no such"),
        ({"auth_mode": "workload_identity", "federated_token_file": SECRET}, "'federated_token_file'", "relative"),
        (
            {"auth_mode": "workload_identity", "federated_token_file": "ey" + SECRET * 3},
            "'federated_token_file'",
            "token",
        ),
        ({"ca_bundle": PEM_PASTED}, "'ca_bundle'", "content of a key"),
        ({"ca_bundle": f"/tmp/{SECRET}"}, "'ca_bundle'", "no such file"),
    ],
    ids=["cert-secret", "cert-pem", "cert-abs", "federated-secret", "federated-jwt", "ca-pem", "ca-abs"],
)
def test_path_fields_never_echo_their_value(extra: dict[str, Any], field: str, hint: str) -> None:
    from airflow_provider_hve.exceptions import HveConfigError

    with pytest.raises(HveConfigError) as info:
        _config(extra, password="" if extra.get("auth_mode") == "workload_identity" else SECRET)
    message = str(info.value)
    assert field in message and "not a readable file" in message and "not shown" in message and hint in message
    _assert_not_echoed(message)


def test_the_federated_token_variable_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_hve.exceptions import HveConfigError

    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", SECRET)
    with pytest.raises(HveConfigError) as info:
        _config({"auth_mode": "workload_identity"}, password="")
    assert "AZURE_FEDERATED_TOKEN_FILE" in str(info.value) and "not shown" in str(info.value)
    _assert_not_echoed(str(info.value))


def test_a_certificate_file_named_like_a_secret_is_not_echoed(tmp_path: Path) -> None:
    from airflow_provider_hve.auth import _certificate_credential
    from airflow_provider_hve.exceptions import HveConfigError

    path = tmp_path / f"{SECRET}.cer"
    path.write_bytes(b"\x30\x82\x01\x0a" + b"\x00" * 64)  # DER, as Entra's .cer download
    with pytest.raises(HveConfigError) as info:
        _certificate_credential(_config({"auth_mode": "certificate", "certificate_path": str(path)}))
    assert "'certificate_path'" in str(info.value) and "DER" in str(info.value)
    _assert_not_echoed(str(info.value))


# -- Lone surrogates and wrong types: HveConfigError naming the argument ------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"subject": "Report \udce9t\u00e9"}, "'subject'"),
        ({"text_content": "caf\udce9"}, "'text_content'"),
        ({"html_content": "<p>caf\udce9</p>", "text_content": None}, "'html_content'"),
        ({"headers": {"X-Run": "r\ud800"}}, "headers['X-Run']"),
        ({"to": '"Caf\udce9" <team@contoso.example>'}, "'to'"),
        ({"headers": [("X-Run-Id", "42")]}, "'headers'"),
        ({"headers": "X-Run-Id: 42"}, "'headers'"),
    ],
    ids=["subject", "text", "html", "header-value", "display-name", "headers-list", "headers-string"],
)
def test_surrogates_and_wrong_types_are_config_errors(
    kwargs: dict[str, Any],
    argument: str,
    hve_connection: ConnFactory,
    sandbox: HveSandbox,
    token_posts: Callable[[], list[Any]],
) -> None:
    from airflow_provider_hve.exceptions import HveConfigError

    with pytest.raises(HveConfigError) as info:
        hook_send(hve_connection, **kwargs)
    assert argument in str(info.value)
    assert_nothing_sent(sandbox, token_posts)


# -- Unknown connection extras: a warning, not a refusal (a connection that survives upgrades) -----------------


def test_unknown_extras_are_a_warning_and_the_mail_still_goes(
    hve_connection: ConnFactory, sandbox: HveSandbox, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from airflow_provider_hve.connection import EXTRA_FIELDS

    # A newer provider's option (rolling downgrade), a tool's own key, a typo of an optional field, a misplaced secret.
    conn_id = hve_connection(future_option=3, managed_by="terraform", timout=30, client_secret=SECRET)
    with caplog.at_level(logging.WARNING, logger="airflow_provider_hve.connection"):
        hook_send(lambda: conn_id)
    (delivered,) = sandbox.wait_for_messages(1)
    assert delivered.rcpt_tos == ["team@contoso.example"]
    (warning,) = [r.getMessage() for r in caplog.records if "unknown extra" in r.getMessage()]
    assert f"Connection {conn_id!r}: ignoring unknown extra field(s)" in warning
    assert "'future_option'" in warning and "'managed_by'" in warning
    assert "'timout' (did you mean 'timeout'?)" in warning
    assert "'client_secret' (a secret belongs in the connection's Password field)" in warning
    assert ", ".join(EXTRA_FIELDS) in warning
    _assert_not_echoed(warning)


# -- Attachments that are not regular files are refused without being opened -------------------------------


def _build_in_thread(**kwargs: Any) -> BaseException | None:
    """Build a message in a thread that must end within 5 s: a regression that blocks on a FIFO fails, not hangs."""
    import threading

    from airflow_provider_hve import message as message_module

    outcome: list[BaseException | None] = []

    def build() -> None:
        try:
            message_module.build_message(
                sender="a@contoso.example", to="b@contoso.example", subject="s", **{"text_content": "x", **kwargs}
            )
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=build, daemon=True)
    thread.start()
    thread.join(timeout=5)
    assert outcome, "building the message blocked for 5 s"
    return outcome[0]


@pytest.mark.parametrize("kind", ["fifo", "dev-null", "directory"])
def test_a_file_that_is_not_regular_is_refused_before_it_is_opened(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FIFO without a writer, a device, a directory: refused at once, never opened (opening a device can act)."""
    import os

    from airflow_provider_hve import message as message_module
    from airflow_provider_hve.exceptions import HveConfigError

    if kind == "fifo":
        path = tmp_path / "report.csv"
        os.mkfifo(path)
    elif kind == "dev-null":
        path = Path("/dev/null")
    else:
        path = tmp_path
    opened: list[str] = []
    monkeypatch.setattr(message_module, "_opener", lambda name, flags: opened.append(name) or os.open(name, flags))
    error = _build_in_thread(files=[str(path)])
    assert isinstance(error, HveConfigError), error
    assert "'files'" in str(error) and "not a regular file" in str(error)
    assert opened == [], "the path was opened before it was known to be a regular file"


def test_a_file_swapped_for_another_regular_file_while_opening_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The open file must be the file that was checked (device and inode), not another one linked in meanwhile."""
    import os

    from airflow_provider_hve import message as message_module
    from airflow_provider_hve.exceptions import HveConfigError

    checked, other = tmp_path / "checked.csv", tmp_path / "other.csv"
    checked.write_text("a,b\n")
    other.write_text("secret,1\n")
    link = tmp_path / "report.csv"
    link.symlink_to(checked)

    def swapping_opener(name: str, flags: int) -> int:
        link.unlink()
        link.symlink_to(other)
        return os.open(name, flags)

    monkeypatch.setattr(message_module, "_opener", swapping_opener)
    error = _build_in_thread(files=[str(link)])
    assert isinstance(error, HveConfigError), error
    assert "'files'" in str(error) and "replaced by another file" in str(error)


def test_images_of_the_wrong_type_are_a_config_error() -> None:
    from airflow_provider_hve.exceptions import HveConfigError

    error = _build_in_thread(html_content="<img src='cid:logo'>", images=["/etc/hostname"])
    assert isinstance(error, HveConfigError), error
    assert "'images' must be a mapping" in str(error) and "got list" in str(error)


def test_a_message_without_files_does_not_read_the_mount_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel file systems are looked up only when there is a file to check (each row of a merge builds one)."""
    from airflow_provider_hve import message as message_module

    def unexpected() -> dict[int, str]:
        raise AssertionError("the mount table was read for a message without files")

    monkeypatch.setattr(message_module, "_kernel_file_systems", unexpected)
    assert _build_in_thread(text_content="no files") is None
