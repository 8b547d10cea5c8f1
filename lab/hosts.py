"""Simulated SSH hosts: one asyncssh listener per estate host, all in one event loop.

Each host accepts only the public key of its ``identity_file`` (any user name), runs an
exec request the way sshd does (``/bin/sh -c <command>`` in the host root, with a small
clean environment) and returns stdout, stderr and the exit status. A command whose
client goes away is killed with its whole process group. SFTP is served too, chrooted
to the host root.

The accept loop is ours (asyncssh takes over each accepted socket), so faults can act
before the SSH banner:

=============== ==================================================================
host_down       listener closed (connection refused); existing sessions dropped;
                a connection accepted in the instant before is reset
host_blackhole  TCP accepted, nothing ever sent (the client's banner/connect timeout)
slow_host       ``seconds`` wait before each command runs (not run if the client
                gives up first)
latency         ``ms`` wait before each command's answer (the command already ran)
disk_full       ``df`` answers 100% used, 0 available, for every path it is asked
=============== ==================================================================

A command that changes files (``tar -c``, ``rm``, ``mv``, ``cp``, ``mkdir``,
``truncate``, ``ln``), sent as one quoted argv the way openbell sends commands, is recorded in
the lab's effects log (``lab.effects``) with its argv and exit status, so tests can
count archives written and files removed. Free shell lines are not classified.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import socket
import struct
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import asyncssh

from openbell.lab import keys
from openbell.lab.effects import EffectsLog
from openbell.lab.faults import Fault, FaultBook
from openbell.lab.hostroot import prepare_host
from openbell.lab.paths import LabError, LabPaths, require_loopback
from openbell.runbooks.schema import Estate, Host

log = logging.getLogger(__name__)

_CHUNK = 65536
_KILL_GRACE_S = 2.0
#: Programs whose runs are side effects, and the effect kind each is recorded as.
EFFECT_KINDS = {
    "tar": "archive",
    "rm": "remove",
    "mv": "move",
    "cp": "copy",
    "mkdir": "mkdir",
    "truncate": "truncate",
    "ln": "link",
}


class SshHost:
    """One simulated host: its listener, its sessions and the commands they run.

    Args:
        name: the host name in the estate.
        host: its estate entry.
        root: its root directory (cwd and HOME of every command).
        host_key: its private host key.
        client_key: the only client key it accepts.
        book: the lab's faults.
        home: the ``OPENBELL_HOME`` given to commands.
        timezone: the region timezone (``TZ`` of commands).
    """

    def __init__(
        self,
        name: str,
        host: Host,
        root: Path,
        host_key: asyncssh.SSHKey,
        client_key: asyncssh.SSHKey,
        book: FaultBook,
        home: Path,
        timezone: str,
    ) -> None:
        self.name = name
        self.address = host.address
        self.port = host.port
        self.root = root
        self.book = book
        self.effects = EffectsLog(home / "lab" / "effects.jsonl")
        self._base_env = {
            "HOME": str(root),
            "PWD": str(root),
            "PATH": f"{root / 'bin'}:{Path(sys.executable).parent}:/usr/bin:/bin",
            "OPENBELL_LAB_HOST": name,
            "OPENBELL_HOME": str(home),
            "SHELL": "/bin/sh",
            "LANG": "C.UTF-8",
            "TZ": timezone,
        }
        authorized = asyncssh.import_authorized_keys(keys.public_line(client_key) + "\n")
        self.options = asyncssh.SSHServerConnectionOptions(
            server_host_keys=[host_key],
            authorized_client_keys=authorized,
            process_factory=self._session,
            sftp_factory=self._sftp,
            encoding=None,
            password_auth=False,
            kbdint_auth=False,
            agent_forwarding=False,
            x11_forwarding=False,
            login_timeout=30,
        )
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._conns: set[asyncssh.SSHServerConnection] = set()
        self._held: dict[socket.socket, asyncio.Task[Any]] = {}
        self._procs: set[asyncio.subprocess.Process] = set()

    @property
    def listening(self) -> bool:
        return self._listener is not None

    def open(self) -> None:
        """Start listening (no-op if already listening).

        Raises:
            LabError: the address/port cannot be bound.
        """
        if self._listener is not None:
            return
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.address, self.port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            where = f"{self.address}:{self.port}"
            reason = exc.strerror or str(exc)
            raise LabError(f"hosts.{self.name}: cannot listen on {where}: {reason}") from None
        sock.setblocking(False)
        self._listener = sock
        self._accepting = self._spawn(self._accept_loop(sock))
        log.debug("host %s listening on %s:%d", self.name, self.address, self.port)

    def go_down(self, *, shutdown: bool = False) -> None:
        """Close the listener and drop every session, as a host that went away."""
        if self._listener is not None:
            _unwatch(self._listener, self._accepting)
            self._listener.close()
            self._listener = self._accepting = None
            if not shutdown:
                log.info("host %s is down (listener closed)", self.name)
        for conn in list(self._conns):
            conn.abort()
        for sock, task in list(self._held.items()):
            _unwatch(sock, task)

    def sync(self, down: bool) -> None:
        """Match the listener to the faults: closed while ``host_down``, else open."""
        if down:
            self.go_down()
            return
        if self._listener is None:
            try:
                self.open()
                log.info("host %s is up again on %s:%d", self.name, self.address, self.port)
            except LabError as exc:
                log.warning("%s (will retry)", exc)

    async def aclose(self) -> None:
        """Stop listening, drop sessions, kill running commands."""
        self.go_down(shutdown=True)
        for proc in list(self._procs):
            await _kill_group(proc)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- connections ---------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError:
                return  # listener closed (host_down or shutdown)
            self._spawn(self._serve(sock))

    async def _serve(self, sock: socket.socket) -> None:
        if self.book.get("host_down", self.name):
            _reset(sock)
            return
        if self.book.get("host_blackhole", self.name):
            await self._hold(sock)
            return
        try:
            conn = await asyncssh.run_server(sock, options=self.options)
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            log.debug("host %s: handshake failed: %s", self.name, exc)
            return
        self._conns.add(conn)
        try:
            await conn.wait_closed()
        finally:
            self._conns.discard(conn)

    async def _hold(self, sock: socket.socket) -> None:
        """Blackhole: keep the TCP connection open, read and drop, never answer."""
        task = asyncio.current_task()
        assert task is not None
        self._held[sock] = task
        loop = asyncio.get_running_loop()
        try:
            while await loop.sock_recv(sock, _CHUNK):
                pass
        except OSError:
            pass
        finally:
            self._held.pop(sock, None)
            _reset(sock)

    def _sftp(self, chan: asyncssh.SSHServerChannel[bytes]) -> asyncssh.SFTPServer:
        return asyncssh.SFTPServer(chan, chroot=os.fsencode(self.root))

    # ---- commands --------------------------------------------------------------------
    async def _session(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        """Run one exec (or shell) request to completion and report its exit status."""
        argv = ["/bin/sh", "-c", process.command] if process.command is not None else ["/bin/sh"]
        slow = self.book.get("slow_host", self.name)
        if slow and not await _sleep_unless_closed(process, float(slow.params.get("seconds", 0))):
            log.info(
                "host %s: client left while the host was slow; not run: %s", self.name, argv[-1]
            )
            return
        log.info("host %s: exec %s", self.name, argv[-1])
        full = self.book.get("disk_full", self.name)
        if full and process.command is not None:
            answer = _full_df(process.command)
            if answer is not None:
                process.stdout.write(answer.encode())
                _report_exit(process, 0)
                return
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=self.root,
                env=self._env(process),
                start_new_session=True,
            )
        except OSError as exc:
            process.stderr.write(f"sh: {exc}\n".encode())
            process.exit(127)
            return
        self._procs.add(proc)
        try:
            status = await self._supervise(process, proc)
        finally:
            self._procs.discard(proc)
            self._record_effect(process.command, status)
        if status is not None:
            _report_exit(process, status)

    def _record_effect(self, command: str | None, status: int | None) -> None:
        """Log a command that changes files (see ``EFFECT_KINDS``) as a lab effect."""
        kind, argv = effect_of(command)
        if kind is None:
            return
        try:
            self.effects.record(
                kind, self.name, key=f"{self.name}|{shlex.join(argv)}", argv=argv, exit=status
            )
        except OSError as exc:
            log.warning("host %s: cannot record effect %s: %s", self.name, kind, exc)

    async def _supervise(
        self, process: asyncssh.SSHServerProcess[bytes], proc: asyncio.subprocess.Process
    ) -> int | None:
        """Relay the command's streams; kill it if the client goes first (then None)."""
        relay = asyncio.ensure_future(_relay(process, proc, self.book.latency_s()))
        closed = asyncio.ensure_future(process.channel.wait_closed())
        try:
            await asyncio.wait({relay, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
        if relay.done():
            return relay.result()
        relay.cancel()
        log.info("host %s: client went away; killing pid %d and its group", self.name, proc.pid)
        await _kill_group(proc)
        await asyncio.gather(relay, return_exceptions=True)
        return None

    def _env(self, process: asyncssh.SSHServerProcess[bytes]) -> dict[str, str]:
        user = str(process.get_extra_info("username") or "openbell")
        peer = process.get_extra_info("peername") or ("", 0)
        sockname = process.get_extra_info("sockname") or ("", 0)
        return {
            **self._base_env,
            "USER": user,
            "LOGNAME": user,
            "SSH_CONNECTION": f"{peer[0]} {peer[1]} {sockname[0]} {sockname[1]}",
        }


class HostFleet:
    """Every SSH host of an estate, with its keys, roots and the known_hosts file."""

    def __init__(self, hosts: dict[str, SshHost]) -> None:
        self.hosts = hosts

    @classmethod
    def prepare(cls, estate: Estate, paths: LabPaths, book: FaultBook) -> HostFleet:
        """Create host roots, keys and known_hosts (no sockets yet).

        Raises:
            LabError: a host is not on a loopback address, or a path leaves its root.
        """
        identities: dict[Path, asyncssh.SSHKey] = {}
        hosts: dict[str, SshHost] = {}
        lines: list[str] = []
        for name, host in estate.hosts.items():
            require_loopback(host.address, f"hosts.{name}")
            root = prepare_host(paths, estate, name)
            host_key = keys.load_or_create_key(
                paths.hostkeys_dir / name, f"openbell-lab-host@{name}"
            )
            ident_path = Path(host.identity_file or paths.root / "id_ed25519").expanduser()
            if ident_path not in identities:
                identities[ident_path] = keys.load_or_create_key(ident_path, "openbell-lab-client")
            if host.host_key and host.host_key.split()[:2] != keys.public_line(host_key).split():
                log.warning(
                    "hosts.%s pins a host_key the lab does not hold; clients will refuse it", name
                )
            tz = estate.region(host.region).timezone
            hosts[name] = SshHost(
                name, host, root, host_key, identities[ident_path], book, paths.home, tz
            )
            lines.append(keys.known_hosts_line(host.address, host.port, host_key))
        keys.write_known_hosts(Path(estate.known_hosts).expanduser(), lines)
        keys.write_people_keys(paths.home, sorted(estate.people))
        return cls(hosts)

    def open(self, faults: list[Fault]) -> None:
        """Open every listener except those of hosts that are down."""
        down = _down_hosts(faults)
        for name, host in self.hosts.items():
            if name not in down:
                host.open()

    def sync(self, faults: list[Fault]) -> None:
        """Apply ``host_down`` changes to the listeners."""
        down = _down_hosts(faults)
        for name, host in self.hosts.items():
            host.sync(name in down)

    async def aclose(self) -> None:
        await asyncio.gather(*(h.aclose() for h in self.hosts.values()))


def effect_of(command: str | None) -> tuple[str | None, list[str]]:
    """(effect kind, argv) of a command line, or (None, argv) when it changes nothing.

    Example:
        >>> effect_of("tar -czf a.tgz -C var log </dev/null")
        ('archive', ['tar', '-czf', 'a.tgz', '-C', 'var', 'log'])
        >>> effect_of("tar -tzf a.tgz </dev/null")[0] is None
        True
        >>> effect_of("mkdir -p x && tar -czf x/a.tgz bin")[0] is None
        True
    """
    try:
        argv = shlex.split(command or "")
    except ValueError:
        return None, []
    if argv and argv[-1] == "</dev/null":
        argv = argv[:-1]
    joined = shlex.join(argv)
    if not argv or command not in (joined, f"{joined} </dev/null"):
        return None, argv  # a shell line (operators, redirections): not one program
    kind = EFFECT_KINDS.get(os.path.basename(argv[0]))
    if kind == "archive":
        first = argv[1] if len(argv) > 1 else ""
        creates = first in ("--create", "-c") or (
            first.startswith("-") and not first.startswith("--") and "c" in first
        )
        kind = kind if creates else None
    return kind, argv


def _full_df(command: str) -> str | None:
    """What ``df`` answers on a host with fault ``disk_full``: every path asked 100% used
    and nothing available, in ``df -P``'s format; None when the command is not ``df``."""
    try:
        argv = shlex.split(command)
    except ValueError:
        return None
    if not argv or argv[0] != "df":
        return None
    paths = [a for a in argv[1:] if not a.startswith("-")] or ["/"]
    head = "Filesystem     1024-blocks      Used Available Capacity Mounted on\n"
    return head + "".join(
        f"/dev/labdisk      10485760  10485760         0     100% {p}\n" for p in paths
    )


def _down_hosts(faults: list[Fault]) -> set[str]:
    return {f.target for f in faults if f.kind == "host_down"}


async def _relay(
    process: asyncssh.SSHServerProcess[bytes], proc: asyncio.subprocess.Process, delay_s: float
) -> int:
    """Feed stdin, then (after ``delay_s``) copy stdout/stderr back; the exit status."""
    assert proc.stdin and proc.stdout and proc.stderr
    feeder = asyncio.ensure_future(_feed(process.stdin, proc.stdin))
    try:
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        await asyncio.gather(_pump(proc.stdout, process.stdout), _pump(proc.stderr, process.stderr))
        return await proc.wait()
    finally:
        feeder.cancel()


async def _feed(src: asyncssh.SSHReader[bytes], dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(_CHUNK):
            dst.write(data)
            await dst.drain()
    except (OSError, asyncssh.Error):
        pass
    finally:
        dst.close()


async def _pump(src: asyncio.StreamReader, dst: asyncssh.SSHWriter[bytes]) -> None:
    while data := await src.read(_CHUNK):
        try:
            dst.write(data)
            await dst.drain()
        except (OSError, asyncssh.Error):
            return


async def _sleep_unless_closed(process: asyncssh.SSHServerProcess[bytes], seconds: float) -> bool:
    """Sleep; False if the channel closed meanwhile."""
    closed = asyncio.ensure_future(process.channel.wait_closed())
    try:
        await asyncio.wait({closed}, timeout=seconds)
    finally:
        closed.cancel()
    return not process.channel.is_closing()


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the command's process group, SIGKILL whatever is left after a grace."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), _KILL_GRACE_S)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()


def _report_exit(process: asyncssh.SSHServerProcess[bytes], status: int) -> None:
    """Send exit-status, or exit-signal for a command killed by a signal, like sshd."""
    if status >= 0:
        process.exit(status)
        return
    try:
        name = signal.Signals(-status).name.removeprefix("SIG")
    except ValueError:
        name = "KILL"
    process.exit_with_signal(name)


def _unwatch(sock: socket.socket, task: asyncio.Task[Any] | None) -> None:
    """Stop the loop watching ``sock`` before it is closed, and cancel its waiter.

    Removing the reader first keeps a later socket that reuses the fd number safe.
    """
    with contextlib.suppress(OSError, ValueError):
        asyncio.get_running_loop().remove_reader(sock.fileno())
    if task is not None:
        task.cancel()


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a refused or dropped connection looks."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
