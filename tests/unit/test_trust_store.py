"""The combined CA file given to requests: bounded however processes exit, and never one another user planted."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

from airflow_provider_hve import auth

DEFAULTS = "-----BEGIN CERTIFICATE-----\nREQUESTS-DEFAULTS\n-----END CERTIFICATE-----\n"
PRIVATE = [f"-----BEGIN CERTIFICATE-----\nPRIVATE-CA-{i}\n-----END CERTIFICATE-----\n" for i in range(2)]
PLANTED = "-----BEGIN CERTIFICATE-----\nANOTHER-USERS-CA\n-----END CERTIFICATE-----\n"


@pytest.fixture
def tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty temporary folder of its own, the default CAs known, and no trust store cached."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setattr(auth, "_TRUST_STORES", {})
    monkeypatch.setattr(auth, "_TRUST_STORE_WARNED", set())
    defaults = tmp_path / "defaults.pem"
    defaults.write_text(DEFAULTS)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(defaults))
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    return folder


def bundles(tmp_path: Path) -> list[str]:
    paths = []
    for i, pem in enumerate(PRIVATE):
        path = tmp_path / f"private-{i}.pem"
        path.write_text(pem)
        paths.append(str(path))
    return paths


def expected(i: int) -> str:
    return DEFAULTS + PRIVATE[i]


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if not p.is_dir())


def exit_codes(pids: list[int], timeout: float = 30.0) -> list[int]:
    """The forked children's exit codes; children still running after ``timeout`` s in all are killed (and fail
    the test), every one of them waited for."""
    deadline = time.monotonic() + timeout
    codes: dict[int, int] = {}
    try:
        while len(codes) < len(pids) and time.monotonic() < deadline:
            for pid in pids:
                if pid not in codes:
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done:
                        codes[pid] = os.waitstatus_to_exitcode(status)
            time.sleep(0.01)
    finally:
        for pid in pids:
            if pid not in codes:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
    hung = [pid for pid in pids if pid not in codes]
    assert not hung, f"children {hung} still running after {timeout:g} s (killed)"
    return [codes[pid] for pid in pids]


def user_folder(tmp: Path) -> Path:
    return tmp / f"hve-ca-{os.getuid()}"


def test_processes_ending_in_os_exit_leave_one_file_per_content(tmp: Path, tmp_path: Path) -> None:
    # Airflow's forked task runners end in os._exit, where atexit never runs: nothing may pile up.
    paths = bundles(tmp_path)
    children = []
    for n in range(6):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                combined = auth.trust_store_file(paths[n % 2])
                code = 0 if Path(combined).read_text() == expected(n % 2) else 2
            finally:
                os._exit(code)
        children.append(pid)
    assert exit_codes(children) == [0] * len(children)

    left = files_under(tmp)
    assert sorted(p.read_text() for p in left) == sorted([expected(0), expected(1)])
    assert all(p.parent == user_folder(tmp) for p in left)
    assert user_folder(tmp).stat().st_mode & 0o777 == 0o700
    # This process finds the same files, and keeps the one it found.
    first = auth.trust_store_file(paths[0])
    assert Path(first).read_text() == expected(0)
    assert auth.trust_store_file(paths[0]) == first
    assert files_under(tmp) == left


@pytest.mark.parametrize("plant", ["other-content", "other-owner", "symlink"])
def test_a_planted_file_is_replaced_not_trusted(tmp: Path, tmp_path: Path, plant: str) -> None:
    folder = user_folder(tmp)
    folder.mkdir(mode=0o700)
    name = folder / f"{hashlib.sha256(expected(0).encode()).hexdigest()}.pem"
    if plant == "other-content":
        name.write_text(PLANTED)
    elif plant == "other-owner":
        if os.getuid() != 0:
            pytest.skip("giving a file to another user needs root")
        name.write_text(expected(0))
        os.chown(name, 65534, 65534)
    else:
        target = tmp_path / "elsewhere.pem"
        target.write_text(expected(0))
        name.symlink_to(target)

    combined = auth.trust_store_file(bundles(tmp_path)[0])

    assert combined == str(name)
    assert not name.is_symlink()
    assert name.read_text() == expected(0)
    assert name.stat().st_uid == os.getuid()
    assert files_under(tmp) == [name]  # no temporary file left over


@pytest.mark.parametrize("folder_state", ["mode-0777", "mode-0755", "other-owner", "symlink"])
def test_a_folder_others_may_change_is_not_used(
    tmp: Path, tmp_path: Path, folder_state: str, caplog: pytest.LogCaptureFixture
) -> None:
    folder = user_folder(tmp)
    if folder_state == "symlink":
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir(mode=0o700)
        folder.symlink_to(elsewhere)
        planted_in = elsewhere
    else:
        folder.mkdir()
        planted_in = folder
        if folder_state == "other-owner":
            if os.getuid() != 0:
                pytest.skip("giving a folder to another user needs root")
            os.chmod(folder, 0o700)
            os.chown(folder, 65534, 65534)
        else:
            os.chmod(folder, int(folder_state.removeprefix("mode-"), 8))
    planted = planted_in / f"{hashlib.sha256(expected(0).encode()).hexdigest()}.pem"
    planted.write_text(PLANTED)

    with caplog.at_level(logging.WARNING, logger=auth.__name__):
        combined = auth.trust_store_file(bundles(tmp_path)[0])

    assert Path(combined).parent == tmp  # a private mkstemp file instead
    assert Path(combined).read_text() == expected(0)
    assert Path(combined).stat().st_mode & 0o777 == 0o600
    assert planted.read_text() == PLANTED  # left alone, and not used
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(folder) in warnings[0] and "Remove that folder" in warnings[0]


def test_a_file_that_cannot_be_written_falls_back_to_a_private_one(
    tmp: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Something in the way of the shared file (here a directory by its name; a full disk or a read-only folder
    # alike): the private file stands in, with a warning, instead of an error that stops the token request.
    (bundle,) = bundles(tmp_path)[:1]
    shared = user_folder(tmp) / f"{hashlib.sha256(expected(0).encode()).hexdigest()}.pem"
    user_folder(tmp).mkdir(mode=0o700)
    shared.mkdir()
    with caplog.at_level(logging.WARNING, logger=auth.log.name):
        combined = auth.trust_store_file(bundle)
    assert combined != str(shared) and Path(combined).read_text() == expected(0)
    assert "cannot be written" in caplog.text
    os.remove(combined)


def test_a_shared_parent_without_the_sticky_bit_is_not_used(
    tmp: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (bundle,) = bundles(tmp_path)[:1]
    tmp.chmod(0o777)  # anyone may write, no sticky bit: another user could swap the folder after the checks
    with caplog.at_level(logging.WARNING, logger=auth.log.name):
        combined = auth.trust_store_file(bundle)
    assert not combined.startswith(str(user_folder(tmp))) and Path(combined).read_text() == expected(0)
    assert "no sticky bit" in caplog.text
    os.remove(combined)
