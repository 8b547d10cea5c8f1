"""Tests for openbell.tasks.connectors.ssh: quoting and the fake alone, SshPool against a real sshd.

Which TCP connection a command ran over is read from ``$SSH_CONNECTION`` on the server
(the client's port differs per connection), so reuse and reconnection are observed the
way an operator would, not through the pool's internals.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shlex
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from openbell import secrets
from openbell.errors import (
    AuthError,
    CommandTimeoutError,
    ConnectionLostError,
    HostKeyError,
    HostUnreachableError,
    SshError,
)
from openbell.tasks.connectors.ssh import (
    OUTPUT_CAP_BYTES,
    CommandResult,
    FakeSshRunner,
    SshPool,
    remote_command,
)
from tests.fixtures.services import free_port
from tests.fixtures.sshd import Sshd

integration = pytest.mark.integration

#: Arguments a shell would mangle if they were not quoted.
AWKWARD = [
    "two words",
    "it's",
    'say "hi"',
    "$HOME",
    "${PATH}",
    "a;b && c || d",
    "`id`",
    "$(id)",
    "line1\nline2",
    "*",
    "~",
    "",
    "-n",
    "back\\slash",
    "tab\there",
    "> /tmp/oops",
    "ünïcødé €",
]
FIVE_MIB = 5 * 1024 * 1024


def new_ed25519() -> tuple[bytes, str]:
    """A fresh key pair: the private key (OpenSSH format) and the public ``type base64``."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption())
    public = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    return private, public


def sleeper(pidfile: Path) -> list[str]:
    """A command that writes its pid to ``pidfile``, then sleeps for 30 s."""
    return ["sh", "-c", 'echo $$ > "$1"; exec sleep 30', "sh", str(pidfile)]


def wait_for(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().strip()):
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def accepted_logins(sshd: Sshd) -> int:
    return sshd.log_text().count("Accepted publickey")


@pytest.fixture
def pool(sshd: Sshd) -> Iterator[SshPool]:
    with SshPool(sshd.estate("lab1")) as ssh:
        yield ssh


@pytest.fixture
def strays(tmp_path: Path) -> Iterator[Path]:
    """A directory for pid files; the remote sleepers they name are stopped afterwards."""
    directory = tmp_path / "pids"
    directory.mkdir()
    yield directory
    for pidfile in directory.iterdir():
        text = pidfile.read_text().strip()
        if text.isdigit():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(text), signal.SIGKILL)


def connection_of(ssh: SshPool, host: str = "lab1") -> str:
    """The TCP connection a command ran over, as the server saw it."""
    return ssh.run(host, ["sh", "-c", 'echo "$SSH_CONNECTION"']).check().stdout.strip()


# ---- quoting, results and the fake: no server needed ------------------------------------


def test_every_argument_is_quoted() -> None:
    command = remote_command(["printf", "%s\\n", *AWKWARD])
    assert shlex.split(command) == ["printf", "%s\\n", *AWKWARD, "</dev/null"]


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        ("rm -rf /tmp/x", TypeError),
        (b"ls", TypeError),
        ([], ValueError),
        (["echo", 3], TypeError),
        (["echo", "a\x00b"], ValueError),
    ],
)
def test_only_argument_lists_are_accepted(argv: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        remote_command(argv)  # type: ignore[arg-type]


def test_result_tail_and_check() -> None:
    result = CommandResult("oms1", ("false",), "false", 2, stdout="x\n", stderr="a\nb\nc\n")
    assert not result.ok
    assert result.tail(2) == "b\nc"
    assert result.tail(1, stream="stdout") == "x"
    with pytest.raises(SshError, match=r"oms1: run false: exit 2: a\nb\nc"):
        result.check()
    ok = CommandResult("oms1", ("true",), "true", 0)
    assert ok.check() is ok


def test_fake_answers_by_longest_prefix_and_records_calls() -> None:
    down = CommandResult("", (), "", 3, stdout="inactive\n")
    fake = FakeSshRunner(
        {
            ("*", ("systemctl",)): CommandResult("", (), "", 0),
            ("oms1", ("systemctl", "is-active")): down,
            ("oms2", ("reboot",)): HostUnreachableError("oms2", "connect", "refused"),
            ("oms1", ("hostname",)): lambda host, argv: CommandResult("", (), "", 0, host),
        }
    )
    active = fake.run("oms1", ["systemctl", "is-active", "oms"])
    assert (active.exit_status, active.stdout, active.host) == (3, "inactive\n", "oms1")
    assert active.command == remote_command(["systemctl", "is-active", "oms"])
    assert fake.run("oms9", ["systemctl", "start", "oms"]).ok
    assert fake.run("oms1", ["hostname"]).stdout == "oms1"
    with pytest.raises(HostUnreachableError):
        fake.run("oms2", ["reboot"])
    with pytest.raises(LookupError, match="no reply for oms1"):
        fake.run("oms1", ["uptime"])
    assert fake.calls[:2] == [
        ("oms1", ("systemctl", "is-active", "oms")),
        ("oms9", ("systemctl", "start", "oms")),
    ]


def test_fake_with_one_callable_and_files(tmp_path: Path) -> None:
    fake = FakeSshRunner(lambda host, argv: CommandResult("", (), "", 0, stdout=argv[-1]))
    assert fake.run("any", ["echo", "hello"]).stdout == "hello"
    src, dst = tmp_path / "a.cfg", tmp_path / "b.cfg"
    src.write_bytes(b"limits: 5\n")
    digest = fake.put("oms1", src, "/etc/oms/a.cfg")
    assert fake.get("oms1", "/etc/oms/a.cfg", dst) == digest
    assert dst.read_bytes() == b"limits: 5\n"
    with pytest.raises(SshError, match="No such file"):
        fake.get("oms2", "/etc/oms/a.cfg", dst)


# ---- commands against a real sshd ---------------------------------------------------------


@integration
def test_run_returns_exit_status_stdout_and_stderr(pool: SshPool) -> None:
    result = pool.run("lab1", ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.exit_status, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert not result.ok
    assert result.host == "lab1"
    assert result.argv == ("sh", "-c", "echo out; echo err >&2; exit 3")
    assert pool.run("lab1", ["true"]).ok


@integration
def test_arguments_arrive_literally(pool: SshPool) -> None:
    result = pool.run("lab1", ["printf", "%s\\0", *AWKWARD])
    assert result.ok, result.stderr
    assert result.stdout.split("\0")[:-1] == AWKWARD


@integration
def test_killed_by_a_signal_is_not_a_lost_connection(pool: SshPool) -> None:
    # exec: the login shell becomes sh, so sshd reports the signal, not a shell's 137.
    killed = pool.run("lab1", ["exec", "sh", "-c", "kill -9 $$"])
    assert killed.exit_status == -1 and not killed.ok
    assert pool.run("lab1", ["true"]).ok


@integration
def test_stdin_is_empty_so_readers_do_not_hang(pool: SshPool) -> None:
    result = pool.run("lab1", ["cat"], timeout=10)
    assert (result.exit_status, result.stdout) == (0, "")


@integration
def test_logs_the_quoted_command_and_exit_status(
    pool: SshPool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="openbell.tasks.connectors.ssh")
    pool.run("lab1", ["sh", "-c", "exit 4", "$HOME"])
    lines = [r.getMessage() for r in caplog.records if r.name == "openbell.tasks.connectors.ssh"]
    assert any("sh -c 'exit 4' '$HOME'" in line and "exit 4" in line for line in lines), lines


@integration
def test_large_stdout_and_stderr_together(sshd: Sshd) -> None:
    script = f"yes 0123456789abcdef | head -c {FIVE_MIB} & yes err | head -c {FIVE_MIB} >&2; wait"
    line = "0123456789abcdef\n"
    expected = (line * (FIVE_MIB // len(line) + 1))[:FIVE_MIB]
    with SshPool(sshd.estate("lab1"), max_output_bytes=8 * 1024 * 1024) as ssh:
        whole = ssh.run("lab1", ["sh", "-c", script], timeout=60)
    assert whole.ok
    assert whole.stdout == expected
    assert len(whole.stderr) == FIVE_MIB and set(whole.stderr) == {"e", "r", "\n"}
    with SshPool(sshd.estate("lab1")) as ssh:
        capped = ssh.run("lab1", ["sh", "-c", script], timeout=60)
    assert capped.ok
    assert capped.stdout == expected[-OUTPUT_CAP_BYTES:]
    assert capped.stdout_dropped == capped.stderr_dropped == FIVE_MIB - OUTPUT_CAP_BYTES


@integration
def test_concurrent_commands_share_one_connection(pool: SshPool) -> None:
    first = connection_of(pool)

    def job(i: int) -> CommandResult:
        return pool.run("lab1", ["sh", "-c", 'sleep 0.2; echo "$1 $SSH_CONNECTION"', "sh", str(i)])

    with ThreadPoolExecutor(max_workers=16) as threads:
        results = list(threads.map(job, range(16)))
    assert [r.stdout.split(" ", 1)[0] for r in results] == [str(i) for i in range(16)]
    assert {r.stdout.split(" ", 1)[1].strip() for r in results} == {first}


@integration
def test_connection_is_reused_across_calls(pool: SshPool) -> None:
    assert connection_of(pool) == connection_of(pool)


@integration
def test_reconnects_after_the_server_drops_the_connection(sshd: Sshd, pool: SshPool) -> None:
    before = connection_of(pool)
    assert sshd.drop_connections() > 0
    after = connection_of(pool)
    assert after != before
    assert connection_of(pool) == after


@integration
def test_drop_during_a_command_is_connection_lost(sshd: Sshd, pool: SshPool, strays: Path) -> None:
    pidfile = strays / "sleeper"
    with ThreadPoolExecutor(max_workers=1) as thread:
        running = thread.submit(pool.run, "lab1", sleeper(pidfile))
        wait_for(pidfile)
        sshd.drop_connections()
        with pytest.raises(ConnectionLostError) as lost:
            running.result(timeout=20)
    assert "outcome unknown" in str(lost.value)
    assert f"127.0.0.1:{sshd.port}" in str(lost.value)
    assert pool.run("lab1", ["true"]).ok


@integration
def test_command_timeout(pool: SshPool, strays: Path) -> None:
    started = time.monotonic()
    with pytest.raises(CommandTimeoutError) as timed_out:
        pool.run("lab1", sleeper(strays / "sleeper"), timeout=1.0)
    assert time.monotonic() - started < 1.0 + 1.0
    assert "outcome unknown" in str(timed_out.value)
    assert "lab1" in str(timed_out.value) and "sleep 30" in str(timed_out.value)
    assert pool.run("lab1", ["true"]).ok  # the connection survives


# ---- host keys, identities and unreachable hosts ----------------------------------------


@integration
def test_unknown_host_key_is_refused_before_login(sshd: Sshd, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    logins = accepted_logins(sshd)
    with SshPool(sshd.estate("lab1", known_hosts=empty)) as ssh, pytest.raises(HostKeyError) as e:
        ssh.run("lab1", ["true"])
    message = str(e.value)
    assert "unknown host key" in message
    assert f"[127.0.0.1]:{sshd.port}" in message and str(empty) in message
    assert "SHA256:" in message and sshd.host_public_key.split()[1] in message
    assert accepted_logins(sshd) == logins


@integration
def test_missing_known_hosts_file_is_named(sshd: Sshd, tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with (
        SshPool(sshd.estate("lab1"), known_hosts=missing) as ssh,
        pytest.raises(HostKeyError, match="does not exist"),
    ):
        ssh.run("lab1", ["true"])


@integration
def test_changed_host_key_is_refused_before_login(sshd: Sshd, tmp_path: Path) -> None:
    _, impostor = new_ed25519()
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {impostor}\n")
    logins = accepted_logins(sshd)
    with SshPool(sshd.estate("lab1", known_hosts=known)) as ssh, pytest.raises(HostKeyError) as e:
        ssh.run("lab1", ["true"])
    message = str(e.value)
    assert "MISMATCH" in message and str(known) in message
    assert message.count("SHA256:") == 2  # what the server showed and what we expected
    assert accepted_logins(sshd) == logins


@integration
def test_pinned_host_key_must_match(sshd: Sshd) -> None:
    _, impostor = new_ed25519()
    with (
        SshPool(sshd.estate("lab1", host_key=impostor)) as ssh,
        pytest.raises(HostKeyError, match="pins"),
    ):
        ssh.run("lab1", ["true"])


@integration
def test_pinned_host_key_alone_is_trusted(sshd: Sshd, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    estate = sshd.estate("lab1", known_hosts=empty, host_key=sshd.host_public_key)
    with SshPool(estate) as ssh:
        assert ssh.run("lab1", ["true"]).ok


@integration
@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa"])
def test_identity_key_types(sshd: Sshd, kind: str) -> None:
    with SshPool(sshd.estate("lab1", identity_file=sshd.identity_files[kind])) as ssh:
        assert ssh.run("lab1", ["true"]).ok


@integration
def test_unauthorized_identity_is_auth_error(sshd: Sshd, tmp_path: Path) -> None:
    private, _ = new_ed25519()
    stranger = tmp_path / "id_stranger"
    stranger.write_bytes(private)
    with (
        SshPool(sshd.estate("lab1", identity_file=stranger)) as ssh,
        pytest.raises(AuthError) as e,
    ):
        ssh.run("lab1", ["true"])
    assert str(stranger) in str(e.value) and repr(sshd.user) in str(e.value)


@integration
@pytest.mark.parametrize("problem", ["missing", "none", "garbage"])
def test_unusable_identity_is_auth_error(sshd: Sshd, tmp_path: Path, problem: str) -> None:
    path = {"missing": tmp_path / "absent", "none": None, "garbage": tmp_path / "garbage"}[problem]
    (tmp_path / "garbage").write_text("not a key\n")
    with SshPool(sshd.estate("lab1", identity_file=path)) as ssh, pytest.raises(AuthError):
        ssh.run("lab1", ["true"])


@integration
def test_closed_port_is_unreachable(sshd: Sshd) -> None:
    port = free_port()
    started = time.monotonic()
    with SshPool(sshd.estate("lab1", port=port)) as ssh, pytest.raises(HostUnreachableError) as e:
        ssh.run("lab1", ["true"])
    assert time.monotonic() - started < 1.0
    assert "refused" in str(e.value) and f"127.0.0.1:{port}" in str(e.value)


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.05)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


@integration
def test_silent_host_is_unreachable_within_connect_timeout(sshd: Sshd, blackhole: int) -> None:
    estate = sshd.estate("lab1", port=blackhole, connect_timeout_s=1.5)
    started = time.monotonic()
    with SshPool(estate) as ssh, pytest.raises(HostUnreachableError) as e:
        ssh.run("lab1", ["true"])
    assert time.monotonic() - started < 1.5 + 1.0
    assert "banner" in str(e.value) and f"127.0.0.1:{blackhole}" in str(e.value)


@integration
def test_unresolvable_name_is_unreachable(sshd: Sshd) -> None:
    estate = sshd.estate("lab1", address="no-such-host.invalid", connect_timeout_s=3)
    started = time.monotonic()
    with SshPool(estate) as ssh, pytest.raises(HostUnreachableError, match="no-such-host"):
        ssh.run("lab1", ["true"])
    assert time.monotonic() - started < 3 + 1.0


# ---- files -----------------------------------------------------------------------------------


@integration
def test_put_and_get_round_trip_with_checksums(pool: SshPool, sshd: Sshd, tmp_path: Path) -> None:
    data = os.urandom(1024 * 1024 + 7)
    src, back = tmp_path / "limits.bin", tmp_path / "back.bin"
    src.write_bytes(data)
    remote_dir = sshd.directory / "files with spaces"
    remote_dir.mkdir(exist_ok=True)
    remote = remote_dir / "limits $1.bin"

    sent = pool.put("lab1", src, str(remote))
    assert sent == hashlib.sha256(data).hexdigest()
    assert remote.read_bytes() == data
    assert pool.get("lab1", str(remote), back) == sent
    assert back.read_bytes() == data
    assert sorted(p.name for p in remote_dir.iterdir()) == ["limits $1.bin"]  # no partials
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.bin", "limits.bin"]


@integration
def test_put_replaces_a_file_and_keeps_its_mode(pool: SshPool, sshd: Sshd, tmp_path: Path) -> None:
    remote = sshd.directory / "start.sh"
    remote.write_text("#!/bin/sh\necho old\n")
    remote.chmod(0o750)
    src = tmp_path / "start.sh"
    src.write_text("#!/bin/sh\necho new\n")
    pool.put("lab1", src, str(remote))
    assert remote.read_text() == "#!/bin/sh\necho new\n"
    assert remote.stat().st_mode & 0o777 == 0o750


@integration
def test_get_of_a_missing_file_names_it(pool: SshPool, sshd: Sshd, tmp_path: Path) -> None:
    missing = sshd.directory / "no-such-file"
    with pytest.raises(SshError, match="No such file") as e:
        pool.get("lab1", str(missing), tmp_path / "out")
    assert "lab1" in str(e.value) and str(missing) in str(e.value)
    assert list(tmp_path.iterdir()) == []


# ---- secrets ------------------------------------------------------------------------------------


@integration
def test_secrets_never_appear_in_errors_or_logs(
    pool: SshPool, strays: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "tok-" + os.urandom(8).hex()
    secrets.register(secret)
    caplog.set_level(logging.DEBUG, logger="openbell.tasks.connectors.ssh")
    argv = ["sh", "-c", 'echo $$ > "$1"; echo "$2" >&2; exec sleep 30', "sh"]
    with pytest.raises(CommandTimeoutError) as timed_out:
        pool.run("lab1", [*argv, str(strays / "sleeper"), secret], timeout=1.0)
    failed = pool.run("lab1", ["sh", "-c", 'echo "password=$1" >&2; exit 1', "sh", secret])
    with pytest.raises(SshError) as check:
        failed.check()
    for text in (str(timed_out.value), str(check.value), caplog.text):
        assert secret not in text
    assert "***" in str(timed_out.value) and "***" in str(check.value)
