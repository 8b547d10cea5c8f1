"""The lab's SSH hosts, through a real paramiko client with strict host-key checking."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import paramiko
import pytest

from openbell.lab import keys
from openbell.lab.faults import FaultBook
from openbell.lab.paths import LabPaths
from openbell.runbooks.schema import Estate
from tests.fixtures.lab import eventually, ssh_client, ssh_run

pytestmark = pytest.mark.integration


def _first(estate: Estate, kind: str = "app") -> str:
    return next(n for n in estate.hosts if f"-{kind}" in n)


def test_known_hosts_lists_every_host_in_port_bracket_form(lab_estate: tuple[Path, Estate]) -> None:
    _, estate = lab_estate
    lines = estate.known_hosts.read_text().splitlines()
    by_host = {ln.split()[0]: ln.split()[1:3] for ln in lines}
    for name, host in estate.hosts.items():
        pub = (LabPaths.of().hostkeys_dir / f"{name}.pub").read_text().split()[:2]
        assert by_host[f"[{host.address}]:{host.port}"] == pub
        assert pub[0] == "ssh-ed25519"


def test_command_runs_in_the_host_root_with_a_clean_environment(
    lab_estate: tuple[Path, Estate],
) -> None:
    _, estate = lab_estate
    host = _first(estate)
    root = LabPaths.of().host_root(host)
    rc, out, err = ssh_run(estate, host, 'pwd; echo "$HOME|$OPENBELL_LAB_HOST|$PATH"')
    cwd, env = out.splitlines()
    home, lab_host, path = env.split("|")
    assert (rc, err) == (0, "")
    assert Path(cwd) == root and Path(home) == root
    assert lab_host == host
    assert path.split(":")[0] == str(root / "bin")


def test_exit_status_stdout_and_stderr_come_back(lab_estate: tuple[Path, Estate]) -> None:
    _, estate = lab_estate
    rc, out, err = ssh_run(estate, _first(estate), "echo to-out; echo to-err >&2; exit 42")
    assert (rc, out, err) == (42, "to-out\n", "to-err\n")


def test_the_command_string_goes_through_sh_like_sshd(lab_estate: tuple[Path, Estate]) -> None:
    _, estate = lab_estate
    rc, out, _ = ssh_run(
        estate, _first(estate), "for x in a b; do printf '%s-' \"$x\"; done | tr a-z A-Z"
    )
    assert (rc, out) == (0, "A-B-")


def test_stdin_reaches_the_command(lab_estate: tuple[Path, Estate]) -> None:
    _, estate = lab_estate
    with ssh_client(estate, _first(estate)) as client:
        stdin, out, _ = client.exec_command("wc -c", timeout=10)
        stdin.write("twelve bytes")
        stdin.channel.shutdown_write()
        assert out.read().decode().strip() == "12"
        assert out.channel.recv_exit_status() == 0


def test_gateway_hosts_have_a_writable_fix_store(lab_estate: tuple[Path, Estate]) -> None:
    _, estate = lab_estate
    gw = _first(estate, "gw")
    store = estate.host(gw).fix_store_dir
    assert store
    assert ssh_run(estate, gw, f"test -d {store} -a -w {store}")[0] == 0


def test_a_key_other_than_the_identity_is_refused(lab_estate: tuple[Path, Estate]) -> None:
    _, estate = lab_estate
    stranger = paramiko.Ed25519Key.from_path(str(LabPaths.of().hostkeys_dir / _first(estate)))
    with (
        pytest.raises(paramiko.AuthenticationException),
        ssh_client(estate, _first(estate), key=stranger),
    ):
        pass


def test_a_host_key_not_in_known_hosts_is_rejected(
    lab_estate: tuple[Path, Estate], tmp_path: Path
) -> None:
    _, estate = lab_estate
    name = _first(estate)
    host = estate.host(name)
    wrong = tmp_path / "known_hosts"
    other = keys.load_or_create_key(tmp_path / "other", "other")
    wrong.write_text(keys.known_hosts_line(host.address, host.port, other) + "\n")
    client = paramiko.SSHClient()
    client.load_host_keys(str(wrong))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        with pytest.raises(paramiko.BadHostKeyException):
            client.connect(
                host.address,
                port=host.port,
                username="x",
                key_filename=str(host.identity_file),
                look_for_keys=False,
                allow_agent=False,
                timeout=5,
            )
    finally:
        client.close()


def test_identity_file_is_an_openssh_ed25519_key_paramiko_reads(
    lab_estate: tuple[Path, Estate],
) -> None:
    _, estate = lab_estate
    ident = Path(str(estate.host(_first(estate)).identity_file))
    assert ident.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert oct(ident.stat().st_mode & 0o777) == "0o600"
    assert isinstance(paramiko.PKey.from_path(str(ident)), paramiko.Ed25519Key)


def test_host_keys_are_kept_across_restarts(tmp_path: Path) -> None:
    first = keys.load_or_create_key(tmp_path / "hostkeys" / "h1", "c")
    again = keys.load_or_create_key(tmp_path / "hostkeys" / "h1", "c")
    assert keys.public_line(first) == keys.public_line(again)


def test_a_command_dies_with_its_client(lab_estate: tuple[Path, Estate]) -> None:
    _, estate = lab_estate
    with ssh_client(estate, _first(estate)) as client:
        _, out, _ = client.exec_command("echo $$; exec sleep 60", timeout=10)
        pid = int(out.readline())
        assert _alive(pid)
    eventually(lambda: not _alive(pid))


def test_sftp_is_chrooted_to_the_host_root(lab_estate: tuple[Path, Estate]) -> None:
    _, estate = lab_estate
    with ssh_client(estate, _first(estate)) as client, client.open_sftp() as sftp:
        assert {"bin", "etc", "var"} <= set(sftp.listdir("/"))
        assert "appctl" in sftp.listdir("/bin")


# ---- faults ---------------------------------------------------------------------------------
def test_host_down_refuses_connections_until_removed(
    lab_estate: tuple[Path, Estate], lab_faults: FaultBook
) -> None:
    from openbell.lab.supervisor import wait_faults_applied

    _, estate = lab_estate
    name = _first(estate)
    host = estate.host(name)
    lab_faults.add("host_down", name)
    assert wait_faults_applied()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host.address, host.port), timeout=2).close()
    other = next(n for n in estate.hosts if n != name)
    assert ssh_run(estate, other, "true")[0] == 0
    lab_faults.remove("host_down", name)
    assert wait_faults_applied()
    assert ssh_run(estate, name, "echo back")[1] == "back\n"


def test_host_down_drops_open_sessions(
    lab_estate: tuple[Path, Estate], lab_faults: FaultBook
) -> None:
    _, estate = lab_estate
    name = _first(estate)
    with ssh_client(estate, name) as client:
        transport = client.get_transport()
        assert transport is not None and transport.is_active()
        lab_faults.add("host_down", name)
        eventually(lambda: not transport.is_active())


def test_host_blackhole_accepts_tcp_but_never_sends_a_banner(
    lab_estate: tuple[Path, Estate], lab_faults: FaultBook
) -> None:
    _, estate = lab_estate
    name = _first(estate)
    host = estate.host(name)
    lab_faults.add("host_blackhole", name)
    with socket.create_connection((host.address, host.port), timeout=2) as sock:
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(64)
    with pytest.raises(paramiko.SSHException), ssh_client(estate, name, timeout=0.5):
        pass
    lab_faults.remove("host_blackhole", name)
    assert ssh_run(estate, name, "echo open")[1] == "open\n"


def test_slow_host_delays_the_command(
    lab_estate: tuple[Path, Estate], lab_faults: FaultBook
) -> None:
    _, estate = lab_estate
    name = _first(estate)
    lab_faults.add("slow_host", name, seconds=60)
    with ssh_client(estate, name) as client:
        _, out, _ = client.exec_command("echo done", timeout=0.5)
        with pytest.raises(TimeoutError):
            out.read()
    lab_faults.remove("slow_host", name)
    assert ssh_run(estate, name, "echo done")[1] == "done\n"


def test_latency_delays_the_answer_but_the_command_runs(
    lab_estate: tuple[Path, Estate], lab_faults: FaultBook
) -> None:
    _, estate = lab_estate
    name = _first(estate)
    marker = LabPaths.of().host_root(name) / "tmp" / f"latency-{os.getpid()}"
    marker.unlink(missing_ok=True)
    lab_faults.add("latency", "*", ms=60_000)
    with ssh_client(estate, name) as client:
        _, out, _ = client.exec_command(f"touch tmp/{marker.name}; echo ran", timeout=0.5)
        with pytest.raises(TimeoutError):
            out.read()
        eventually(marker.exists)
    marker.unlink()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def test_commands_that_change_files_are_recorded_as_effects(
    lab_estate: tuple[Path, Estate],
) -> None:
    from openbell.lab.effects import EffectsLog
    from openbell.lab.hosts import effect_of

    assert effect_of("tar -czf a.tgz var/log </dev/null")[0] == "archive"
    assert effect_of("tar -tzf a.tgz </dev/null")[0] is None
    assert effect_of("rm -f -- 'a b' </dev/null") == ("remove", ["rm", "-f", "--", "a b"])
    assert effect_of("cat x")[0] is None and effect_of("'unclosed")[0] is None

    _, estate = lab_estate
    host = _first(estate)
    log = EffectsLog(LabPaths.of().effects_file)
    before = len(log.read(target=host))
    rc, _, _ = ssh_run(estate, host, "mkdir -p tmp/eff && tar -czf tmp/eff/x.tgz bin </dev/null")
    assert rc == 0
    assert len(log.read(target=host)) == before  # a shell line is not parsed as one program
    rc, _, _ = ssh_run(estate, host, "rm -f -- tmp/eff/none </dev/null")
    assert rc == 0
    (removal,) = log.read(target=host)[before:]
    assert (removal.kind, removal.detail) == (
        "remove",
        {"argv": ["rm", "-f", "--", "tmp/eff/none"], "exit": 0},
    )
