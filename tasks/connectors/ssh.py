"""SSH to the estate's hosts: run quoted commands, copy files with verified checksums.

One seam per external system: tasks take an :class:`SshRunner`; :class:`SshPool` is the
real one (paramiko, one connection per host, strict host keys) and
:class:`FakeSshRunner` the fake for unit tests.

Commands are argument vectors, never shell strings: every argument is quoted with
``shlex.join`` and the remote stdin is ``/dev/null``, so ``$HOME``, ``;``, backticks and
``*`` arrive literally and a prompt fails at once instead of hanging until the deadline.
The remote login shell must be POSIX-like (sh, bash, dash, ksh, zsh).

Errors (from :mod:`openbell.errors`); each names the host, ``user@address:port``, what
was tried and what came back, with registered secrets redacted::

    SshError                   anything else (exec refused, SFTP error, checksum mismatch)
     ├── HostUnreachableError  DNS, refused, no banner / key exchange / auth in time
     ├── HostKeyError          host key unknown to known_hosts, or differs from it or the pin
     ├── AuthError             no usable identity file, or the key was refused
     ├── CommandTimeoutError   no exit status within the deadline: outcome unknown
     └── ConnectionLostError   dropped after the command was sent: outcome unknown

Example:
    >>> with SshPool(estate) as ssh:                                  # doctest: +SKIP
    ...     result = ssh.run("oms-ldn-1", ["systemctl", "is-active", "oms"])
    >>> result.ok, result.stdout                                      # doctest: +SKIP
    (True, 'active\\n')
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
import os
import secrets
import select
import shlex
import socket
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Protocol, TypeVar, cast

import paramiko
from paramiko.ssh_exception import IncompatiblePeer

from openbell.errors import (
    AuthError,
    CommandTimeoutError,
    ConnectionLostError,
    HostKeyError,
    HostUnreachableError,
    SshError,
)
from openbell.runbooks.schema import Estate, Host
from openbell.secrets import redact

__all__ = [
    "OUTPUT_CAP_BYTES",
    "CommandResult",
    "FakeSshRunner",
    "SshPool",
    "SshRunner",
    "remote_command",
]

log = logging.getLogger(__name__)

#: How much of each of stdout and stderr a CommandResult keeps (the tail).
OUTPUT_CAP_BYTES = 64 * 1024
_CHUNK = 32 * 1024
_STDIN = "</dev/null"
_E = TypeVar("_E", bound=SshError)
_AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, Any]


def remote_command(argv: Sequence[str]) -> str:
    """Build the exact command line sent for ``argv``: each argument shell-quoted.

    The only unquoted text is a fixed ``</dev/null`` for stdin.

    Args:
        argv: the program and its arguments, e.g. ``["ls", "-l", "my dir"]``.

    Returns:
        The command line, e.g. ``"ls -l 'my dir' </dev/null"``.

    Raises:
        TypeError: ``argv`` is a string (it would be sent character by character) or an
            argument is not a string.
        ValueError: ``argv`` is empty or an argument contains a NUL byte.

    Example:
        >>> remote_command(["echo", "$HOME; rm -rf *"])
        "echo '$HOME; rm -rf *' </dev/null"
    """
    if isinstance(argv, str | bytes):
        raise TypeError(f"argv must be a list of arguments, not a string: {argv!r}")
    args = tuple(argv)
    if not args:
        raise ValueError("argv is empty: nothing to run")
    for arg in args:
        if not isinstance(arg, str):
            raise TypeError(f"argument {arg!r} is {type(arg).__name__}, expected str")
        if "\x00" in arg:
            raise ValueError(f"argument {arg!r} contains a NUL byte, which SSH cannot carry")
    return f"{shlex.join(args)} {_STDIN}"


@dataclass(frozen=True)
class CommandResult:
    """What a finished remote command left behind.

    Attributes:
        host: the host name in the estate.
        argv: the arguments as given.
        command: the quoted command line that was sent.
        exit_status: the exit status; -1 when the server sent none (killed by a signal).
        stdout: the last ``OUTPUT_CAP_BYTES`` of standard output, decoded as UTF-8.
        stderr: the last ``OUTPUT_CAP_BYTES`` of standard error, decoded as UTF-8.
        duration_s: seconds from sending the command to its exit status.
        stdout_dropped: bytes of stdout dropped from the head to respect the cap.
        stderr_dropped: bytes of stderr dropped from the head to respect the cap.
    """

    host: str
    argv: tuple[str, ...]
    command: str
    exit_status: int
    stdout: str = ""
    stderr: str = ""
    duration_s: float = 0.0
    stdout_dropped: int = 0
    stderr_dropped: int = 0

    @property
    def ok(self) -> bool:
        """True when the command exited 0."""
        return self.exit_status == 0

    def tail(self, n_lines: int = 10, stream: Literal["stdout", "stderr"] = "stderr") -> str:
        """The last ``n_lines`` lines of a stream, for messages.

        Example:
            >>> CommandResult("h", ("x",), "x", 1, stderr="a\\nb\\nc\\n").tail(2)
            'b\\nc'
        """
        text = self.stderr if stream == "stderr" else self.stdout
        return "\n".join(text.rstrip("\n").splitlines()[-n_lines:])

    def check(self) -> CommandResult:
        """Return self if the command exited 0, else raise SshError with the stderr tail.

        Example:
            >>> ssh.run("oms-ldn-1", ["test", "-d", "/data"]).check()  # doctest: +SKIP
        """
        if not self.ok:
            tail = self.tail() or self.tail(stream="stdout") or "(no output)"
            answer = f"exit {self.exit_status}: {tail}"
            raise _error(SshError, self.host, f"run {self.command}", answer)
        return self


class SshRunner(Protocol):
    """The interface tasks use to reach hosts; hosts are named as in the estate."""

    def run(self, host: str, argv: Sequence[str], *, timeout: float | None = None) -> CommandResult:
        """Run ``argv`` on ``host`` and return its result, whatever its exit status."""
        ...

    def put(self, host: str, local: Path, remote: str, *, timeout: float | None = None) -> str:
        """Copy a local file to ``host``; return its verified sha256 (hex)."""
        ...

    def get(self, host: str, remote: str, local: Path, *, timeout: float | None = None) -> str:
        """Copy a file from ``host``; return its verified sha256 (hex)."""
        ...

    def close(self) -> None:
        """Release every connection."""
        ...


# ---- the real runner -------------------------------------------------------------------


class _FairSlots:
    """A counting semaphore that serves waiters in arrival order.

    ``threading.Semaphore`` lets a thread that has just released a slot take it again
    ahead of the threads already waiting, which starves some callers until their
    deadline when many tasks share one host.
    """

    def __init__(self, n: int) -> None:
        self._lock = threading.Lock()
        self._free = n
        self._waiting: deque[threading.Event] = deque()

    def acquire(self, timeout: float) -> bool:
        with self._lock:
            if self._free and not self._waiting:
                self._free -= 1
                return True
            turn = threading.Event()
            self._waiting.append(turn)
        if turn.wait(timeout):
            return True
        with self._lock:
            if turn.is_set():  # handed a slot just as the wait ended
                return True
            self._waiting.remove(turn)
            return False

    def release(self) -> None:
        with self._lock:
            if self._waiting:
                self._waiting.popleft().set()  # hand the slot over directly
            else:
                self._free += 1


@dataclass
class _Link:
    """One host's connection, and the lock and session slots around it."""

    slots: _FairSlots
    lock: threading.Lock = field(default_factory=threading.Lock)
    transport: paramiko.Transport | None = None


class SshPool(SshRunner):
    """Paramiko connections to the estate's hosts, opened lazily and shared by threads.

    One connection per host carries concurrent commands as separate channels, at most
    ``max_sessions`` at a time (OpenSSH's default ``MaxSessions`` is 10). A connection
    found dead is reopened before the next command; a command is never re-sent.

    Host keys are checked strictly, like ``StrictHostKeyChecking yes`` / paramiko's
    ``RejectPolicy``: the key must be in ``known_hosts`` under ``address`` (port 22) or
    ``[address]:port``, and must equal ``Host.host_key`` when that is pinned. A pinned key
    alone is enough for a host absent from ``known_hosts``. Authentication uses only
    ``Host.identity_file``: no agent, no ``~/.ssh`` keys.

    Args:
        estate: where the hosts are.
        known_hosts: overrides ``estate.known_hosts``; re-read whenever it changes.
        max_sessions: concurrent channels per host; more callers wait for a free one.
        max_output_bytes: how much of each of stdout/stderr a result keeps (the tail).
        keepalive_s: SSH keepalive interval, so idle connections survive NAT/firewalls.

    Example:
        >>> with SshPool(estate) as ssh:                                 # doctest: +SKIP
        ...     ssh.run("oms-ldn-1", ["df", "-P", "/data"]).check().stdout
        ...     digest = ssh.put("oms-ldn-1", Path("oms.cfg"), "/etc/oms/oms.cfg")
    """

    def __init__(
        self,
        estate: Estate,
        *,
        known_hosts: Path | None = None,
        max_sessions: int = 8,
        max_output_bytes: int = OUTPUT_CAP_BYTES,
        keepalive_s: int = 30,
    ) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.estate = estate
        self.known_hosts = Path(known_hosts or estate.known_hosts).expanduser()
        self.max_sessions = max_sessions
        self.max_output_bytes = max_output_bytes
        self.keepalive_s = keepalive_s
        self._lock = threading.Lock()
        self._links: dict[str, _Link] = {}
        self._known_cache: tuple[tuple[int, int], paramiko.HostKeys] | None = None

    def __enter__(self) -> SshPool:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection; the pool reopens them if used again."""
        with self._lock:
            links = list(self._links.values())
        for link in links:
            with link.lock:
                if link.transport is not None:
                    link.transport.close()
                    link.transport = None

    # ---- commands ----------------------------------------------------------------------
    def run(self, host: str, argv: Sequence[str], *, timeout: float | None = None) -> CommandResult:
        """Run a command on a host and return its result, whatever its exit status.

        Args:
            host: the host name in the estate.
            argv: the program and its arguments; each is quoted, none is interpreted.
            timeout: seconds for the command (default ``Host.command_timeout_s``),
                counted after the connection is up and including the wait for a session.

        Raises:
            HostUnreachableError, HostKeyError, AuthError: while connecting.
            CommandTimeoutError: no exit status in time; the channel was closed and the
                command may still be running.
            ConnectionLostError: the connection dropped after the command was sent.
            SshError: the server refused the session or the exec request.

        Example:
            >>> r = ssh.run("oms-ldn-1", ["grep", "-c", "ERROR", "/var/log/oms"])  # doctest: +SKIP
            >>> r.exit_status, r.stdout                               # doctest: +SKIP
            (0, '3\\n')
        """
        spec = self.estate.host(host)
        args = tuple(argv)
        command = remote_command(args)
        limit = _limit(timeout, spec)
        action = f"run {command} as {_where(spec)}"
        transport = self._transport(host, spec)
        deadline = time.monotonic() + limit
        with self._slot(host, deadline, limit, action):
            chan, transport = self._open_channel(host, spec, transport, deadline, limit, action)
            try:
                return self._execute(host, spec, args, command, chan, transport, deadline, limit)
            except CommandTimeoutError:
                # A connection that swallowed an exit status is not trusted again: the
                # next command (reading state to reconcile) gets a fresh one.
                self._forget(host, transport)
                raise
            finally:
                chan.close()

    def _forget(self, host: str, transport: paramiko.Transport) -> None:
        link = self._link(host)
        with link.lock:
            if link.transport is transport:
                link.transport = None
        with suppress(Exception):
            transport.close()

    def _execute(
        self,
        host: str,
        spec: Host,
        args: tuple[str, ...],
        command: str,
        chan: paramiko.Channel,
        transport: paramiko.Transport,
        deadline: float,
        limit: float,
    ) -> CommandResult:
        action = f"run {command} as {_where(spec)}"
        started = time.monotonic()
        self._send(host, action, command, chan, transport, deadline, limit)
        out, err = _Tail(self.max_output_bytes), _Tail(self.max_output_bytes)
        if not _read_until_eof(chan, out, err, deadline):
            chan.close()
            raise self._timed_out(host, action, limit, _so_far(out, err))
        if not chan.status_event.wait(max(deadline - time.monotonic(), 0.0)):
            chan.close()
            raise self._timed_out(host, action, limit, "output ended but no exit status came")
        status = chan.recv_exit_status()
        if status == -1 and time.monotonic() >= deadline:  # closed by the exec watchdog
            raise self._timed_out(host, action, limit, _so_far(out, err))
        if status == -1:
            # No exit status: the command died of a signal, or the connection dropped.
            # Paramiko closes channels just before marking the transport inactive.
            transport.join(0.2)
            if not transport.is_active():
                log.warning("ssh %s: connection lost during %s", host, _Redacted(command))
                detail = "connection lost before the exit status; outcome unknown. "
                raise _error(ConnectionLostError, host, action, detail + _so_far(out, err))
        duration = time.monotonic() - started
        log.info(
            "ssh %s %s: %s -> exit %s in %.2fs",
            host,
            _where(spec),
            _Redacted(command),
            status,
            duration,
        )
        return CommandResult(
            host=host,
            argv=args,
            command=command,
            exit_status=status,
            stdout=out.text(),
            stderr=err.text(),
            duration_s=duration,
            stdout_dropped=out.dropped,
            stderr_dropped=err.dropped,
        )

    def _send(
        self,
        host: str,
        action: str,
        command: str,
        chan: paramiko.Channel,
        transport: paramiko.Transport,
        deadline: float,
        limit: float,
    ) -> None:
        """Send the exec request; paramiko waits for the reply with no timeout of its own."""
        watchdog = threading.Timer(max(deadline - time.monotonic(), 0.0), _close_quietly, (chan,))
        watchdog.daemon = True
        watchdog.start()
        try:
            chan.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            if time.monotonic() >= deadline:
                raise self._timed_out(host, action, limit, "no reply to the exec request") from None
            if not transport.is_active():
                detail = f"connection lost while sending the command ({exc}); outcome unknown"
                raise _error(ConnectionLostError, host, action, detail) from None
            answer = f"server refused the exec request: {exc}"
            raise _error(SshError, host, action, answer) from None
        finally:
            watchdog.cancel()

    def _timed_out(self, host: str, action: str, limit: float, detail: str) -> CommandTimeoutError:
        log.warning("ssh %s: timed out after %ss: %s", host, limit, _Redacted(action))
        return _error(
            CommandTimeoutError,
            host,
            action,
            f"no exit status within {limit:g} s; the channel was closed and the command may "
            f"still be running (outcome unknown). {detail}",
        )

    # ---- files -------------------------------------------------------------------------
    def put(self, host: str, local: Path, remote: str, *, timeout: float | None = None) -> str:
        """Upload a file atomically and verify it; return its sha256 (hex).

        The file goes to a temporary name next to ``remote``, gets the mode of the file
        it replaces (if any), is checked with ``sha256sum`` on the host, and only then
        renamed over ``remote``: a reader never sees a partial file, and a mismatch
        leaves ``remote`` untouched. ``sha256sum`` on the host hashes what is on its disk
        without transferring the file twice; where it is missing the file is read back.

        Args:
            host: the host name in the estate.
            local: the file to send.
            remote: the destination path on the host (relative paths are from the
                user's home directory; ``~`` is not expanded).
            timeout: seconds for the whole copy and check (default
                ``Host.command_timeout_s``).

        Raises:
            SshError: an SFTP error (names the path and the reason) or a checksum
                mismatch; and the connection errors of :meth:`run`.

        Example:
            >>> ssh.put("oms-ldn-1", Path("oms.cfg"), "/etc/oms/oms.cfg")  # doctest: +SKIP
            '9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08'
        """
        spec = self.estate.host(host)
        local = Path(local)
        digest = _sha256_file(local)
        limit = _limit(timeout, spec)
        action = f"put {local} to {_where(spec)}:{remote}"
        partial = f"{remote}.openbell-{secrets.token_hex(4)}.part"
        deadline = time.monotonic() + limit
        try:
            with local.open("rb") as f, self._sftp(host, spec, deadline, limit, action) as sftp:
                mode = _mode_of(sftp, remote)
                sftp.putfo(f, partial, callback=self._progress(host, deadline, limit, action))
                if mode is not None:
                    sftp.chmod(partial, mode)
            seen = self._remote_sha256(host, spec, partial, deadline, limit, action)
            if seen != digest:
                raise _error(
                    SshError,
                    host,
                    action,
                    f"checksum mismatch: local sha256 {digest}, remote {seen}; "
                    f"{remote} was left unchanged",
                )
            with self._sftp(host, spec, deadline, limit, action) as sftp:
                sftp.posix_rename(partial, remote)
        except BaseException:
            self._discard(host, spec, partial)
            raise
        log.info(
            "ssh %s: put %s -> %s (%d bytes, sha256 %s)",
            host,
            local,
            remote,
            local.stat().st_size,
            digest,
        )
        return digest

    def get(self, host: str, remote: str, local: Path, *, timeout: float | None = None) -> str:
        """Download a file and verify it; return its sha256 (hex).

        The bytes are hashed as they arrive into a temporary file next to ``local``,
        compared with ``sha256sum`` on the host, and only then renamed to ``local``.

        Args:
            host: the host name in the estate.
            remote: the path on the host.
            local: where to write it (its directory must exist).
            timeout: seconds for the whole copy and check (default
                ``Host.command_timeout_s``).

        Raises:
            SshError: an SFTP error (e.g. no such file) or a checksum mismatch; and the
                connection errors of :meth:`run`.

        Example:
            >>> ssh.get("oms-ldn-1", "/var/log/oms.log", Path("oms.log"))  # doctest: +SKIP
            'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'
        """
        spec = self.estate.host(host)
        local = Path(local)
        limit = _limit(timeout, spec)
        action = f"get {_where(spec)}:{remote} to {local}"
        partial = local.with_name(f".{local.name}.openbell-{secrets.token_hex(4)}.part")
        deadline = time.monotonic() + limit
        progress = self._progress(host, deadline, limit, action)
        try:
            with partial.open("wb") as f, self._sftp(host, spec, deadline, limit, action) as sftp:
                sink = _HashingWriter(f)
                sftp.getfo(remote, sink.file(), callback=progress)
            seen = self._remote_sha256(host, spec, remote, deadline, limit, action)
            if seen != sink.hexdigest():
                raise _error(
                    SshError,
                    host,
                    action,
                    f"checksum mismatch: received sha256 {sink.hexdigest()}, remote {seen} "
                    f"(is the file being written?); {local} was left unchanged",
                )
            os.replace(partial, local)
        finally:
            partial.unlink(missing_ok=True)
        log.info("ssh %s: get %s -> %s (sha256 %s)", host, remote, local, seen)
        return seen

    def _remote_sha256(
        self, host: str, spec: Host, path: str, deadline: float, limit: float, action: str
    ) -> str:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._timed_out(host, action, limit, "no time left to verify the checksum")
        result = self.run(host, ["sha256sum", "--", path], timeout=remaining)
        if result.exit_status == 127:  # no sha256sum on this host: read the file back
            with self._sftp(host, spec, deadline, limit, action) as sftp:
                sink = _HashingWriter(None)
                progress = self._progress(host, deadline, limit, action)
                sftp.getfo(path, sink.file(), callback=progress)
                return sink.hexdigest()
        # GNU sha256sum prefixes the line with a backslash when it escapes the file name.
        digest = result.stdout.lstrip("\\")[:64]
        if not result.ok or len(digest) != 64:
            raise _error(
                SshError,
                host,
                action,
                f"cannot verify: sha256sum exited {result.exit_status}: "
                f"{result.tail() or result.stdout.strip()}",
            )
        return digest

    def _discard(self, host: str, spec: Host, partial: str) -> None:
        """Best effort: remove a partial upload while the connection still works."""
        link = self._link(host)
        if link.transport is None or not link.transport.is_active():
            return
        with suppress(Exception):
            deadline = time.monotonic() + min(5.0, spec.command_timeout_s)
            with self._sftp(host, spec, deadline, 5.0, f"remove {partial}") as sftp:
                sftp.remove(partial)

    @contextmanager
    def _sftp(
        self, host: str, spec: Host, deadline: float, limit: float, action: str
    ) -> Iterator[paramiko.SFTPClient]:
        transport = self._transport(host, spec)
        with self._slot(host, deadline, limit, action):
            chan, transport = self._open_channel(host, spec, transport, deadline, limit, action)
            try:
                chan.settimeout(max(deadline - time.monotonic(), 0.001))
                chan.invoke_subsystem("sftp")
                with paramiko.SFTPClient(chan) as sftp:
                    yield sftp
            except TimeoutError:
                raise self._timed_out(host, action, limit, "the SFTP transfer stalled") from None
            except (paramiko.SSHException, EOFError, OSError) as exc:
                if not transport.is_active():
                    raise _error(
                        ConnectionLostError,
                        host,
                        action,
                        f"connection lost during the transfer ({exc or type(exc).__name__})",
                    ) from None
                detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise _error(
                    SshError, host, action, f"SFTP: {detail or type(exc).__name__}"
                ) from None
            finally:
                chan.close()

    def _progress(
        self, host: str, deadline: float, limit: float, action: str
    ) -> Callable[[int, int], None]:
        def check(done: int, total: int) -> None:
            if time.monotonic() > deadline:
                raise self._timed_out(host, action, limit, f"{done} of {total} bytes copied")

        return check

    # ---- connections -------------------------------------------------------------------
    def _link(self, host: str) -> _Link:
        with self._lock:
            if host not in self._links:
                self._links[host] = _Link(slots=_FairSlots(self.max_sessions))
            return self._links[host]

    @contextmanager
    def _slot(self, host: str, deadline: float, limit: float, action: str) -> Iterator[None]:
        slots = self._link(host).slots
        if not slots.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
            log.warning("ssh %s: no free session within %ss: %s", host, limit, _Redacted(action))
            raise _error(
                CommandTimeoutError,
                host,
                action,
                f"all {self.max_sessions} sessions to this host stayed busy for {limit:g} s; "
                "nothing was sent",
            )
        try:
            yield
        finally:
            slots.release()

    def _transport(
        self, host: str, spec: Host, stale: paramiko.Transport | None = None
    ) -> paramiko.Transport:
        """The host's live connection, opened (or reopened) under the host's lock.

        ``stale`` is a connection the caller saw fail: it is replaced even if paramiko
        has not noticed yet (another thread may already have replaced it).
        """
        link = self._link(host)
        with link.lock:
            t = link.transport
            if t is not None and t is not stale and t.is_active() and t.is_authenticated():
                return t
            if t is not None:
                log.info("ssh %s %s: connection was closed; reconnecting", host, _where(spec))
                t.close()
                link.transport = None
            link.transport = self._connect(host, spec)
            return link.transport

    def _open_channel(
        self,
        host: str,
        spec: Host,
        transport: paramiko.Transport,
        deadline: float,
        limit: float,
        action: str,
    ) -> tuple[paramiko.Channel, paramiko.Transport]:
        """Open a session channel; reconnect once if the connection died while idle.

        Retrying is safe: until the channel is open, the command has not been sent.
        """
        for attempt in (1, 2):
            try:
                timeout = max(deadline - time.monotonic(), 0.001)
                return transport.open_session(timeout=timeout), transport
            except paramiko.ChannelException as exc:
                raise _error(
                    SshError, host, action, f"server refused a session channel: {exc.text}"
                ) from None
            except (paramiko.SSHException, OSError, EOFError) as exc:
                if time.monotonic() >= deadline:
                    detail = "no session channel opened; nothing was sent"
                    raise self._timed_out(host, action, limit, detail) from None
                if attempt == 1:
                    # Writing to a reset socket fails before paramiko's reader thread
                    # marks the transport inactive, so do not wait for is_active().
                    transport = self._transport(host, spec, stale=transport)
                    continue
                reason = str(exc) or type(exc).__name__
                raise _error(SshError, host, action, f"cannot open a session: {reason}") from None
        raise AssertionError("unreachable")

    def _connect(self, host: str, spec: Host) -> paramiko.Transport:
        """TCP, banner, key exchange, host key check and auth, all within connect_timeout_s."""
        budget = spec.connect_timeout_s
        deadline = time.monotonic() + budget
        action = f"connect to {_where(spec)} (within {budget:g} s)"
        pkey, identity = _load_identity(host, spec, action)
        known, pinned = self._trusted_keys(host, spec, action)
        sock = _open_socket(host, spec, deadline, action)
        transport = paramiko.Transport(sock)
        try:
            transport.set_keepalive(self.keepalive_s)
            _prefer_key_types(transport, [*known.values(), *([pinned] if pinned else [])])
            _negotiate(host, transport, deadline, budget, action)
            server_key = transport.get_remote_server_key()
            self._verify_host_key(host, spec, server_key, known, pinned)
            _authenticate(host, spec, transport, pkey, identity, deadline, budget, action)
        except BaseException:
            transport.close()
            sock.close()
            raise
        log.info(
            "ssh %s: connected to %s, host key %s %s",
            host,
            _where(spec),
            server_key.get_name(),
            server_key.fingerprint,
        )
        return transport

    def _host_keys(self) -> paramiko.HostKeys:
        """known_hosts, parsed again only when the file changed (size or mtime).

        Parsing a 200-host file costs ~12 ms of CPU; doing it at every connect made
        it a visible share of a large start of day.
        """
        try:
            st = self.known_hosts.stat()
        except FileNotFoundError:
            return paramiko.HostKeys()
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if self._known_cache is not None and self._known_cache[0] == stamp:
                return self._known_cache[1]
        hostkeys = paramiko.HostKeys()
        hostkeys.load(str(self.known_hosts))
        with self._lock:
            self._known_cache = (stamp, hostkeys)
        return hostkeys

    def _trusted_keys(
        self, host: str, spec: Host, action: str
    ) -> tuple[dict[str, _Key], _Key | None]:
        """The keys known_hosts lists for the host (by type), and the pinned key if any."""
        try:
            hostkeys = self._host_keys()
        except (OSError, UnicodeDecodeError) as exc:
            raise _error(
                HostKeyError, host, action, f"cannot read known_hosts {self.known_hosts}: {exc}"
            ) from None
        entries = hostkeys.lookup(_known_hosts_name(spec))
        known = {kind: _Key(kind, key.asbytes()) for kind, key in (entries or {}).items()}
        pinned = None
        if spec.host_key:
            parts = spec.host_key.split()
            try:
                pinned = _Key(parts[0], base64.b64decode(parts[1], validate=True))
            except (IndexError, ValueError):
                raise _error(
                    HostKeyError,
                    host,
                    action,
                    "the pinned host_key is not 'type base64' as in known_hosts",
                ) from None
        return known, pinned

    def _verify_host_key(
        self,
        host: str,
        spec: Host,
        server_key: paramiko.PKey,
        known: dict[str, _Key],
        pinned: _Key | None,
    ) -> None:
        name = _known_hosts_name(spec)
        seen = f"{server_key.get_name()} {server_key.fingerprint}"
        action = f"verify the host key of {_where(spec)}"
        advice = (
            "Nothing was sent. If the host was rebuilt, confirm the new fingerprint out "
            "of band before changing known_hosts; otherwise suspect a man-in-the-middle."
        )
        if pinned is not None and pinned.blob != server_key.asbytes():
            raise _error(
                HostKeyError,
                host,
                action,
                f"HOST KEY MISMATCH: the server presented {seen} but the estate pins "
                f"{pinned} for this host. {advice}",
            )
        if known:
            match = known.get(server_key.get_name())
            if match is None or match.blob != server_key.asbytes():
                expected = ", ".join(str(k) for k in known.values())
                raise _error(
                    HostKeyError,
                    host,
                    action,
                    f"HOST KEY MISMATCH: the server presented {seen} but known_hosts "
                    f"{self.known_hosts} has {expected} for {name}. {advice}",
                )
        elif pinned is None:
            missing = "" if self.known_hosts.exists() else " (the file does not exist)"
            raise _error(
                HostKeyError,
                host,
                action,
                f"unknown host key: {name} is not in known_hosts {self.known_hosts}{missing}; "
                f"the server presented {seen}. Nothing was sent. After confirming the "
                f"fingerprint out of band, add: {name} {server_key.get_name()} "
                f"{server_key.get_base64()}",
            )


# ---- connection helpers ------------------------------------------------------------------


@dataclass(frozen=True)
class _Key:
    """A public key as its type and wire blob, shown as ``type SHA256:...``."""

    kind: str
    blob: bytes

    def __str__(self) -> str:
        digest = base64.b64encode(hashlib.sha256(self.blob).digest()).decode().rstrip("=")
        return f"{self.kind} SHA256:{digest}"


def _where(spec: Host) -> str:
    return f"{spec.user}@{spec.address}:{spec.port}"


def _known_hosts_name(spec: Host) -> str:
    return spec.address if spec.port == 22 else f"[{spec.address}]:{spec.port}"


def _limit(timeout: float | None, spec: Host) -> float:
    limit = spec.command_timeout_s if timeout is None else timeout
    if limit <= 0:
        raise ValueError(f"timeout must be positive, got {limit}")
    return limit


def _error(cls: type[_E], target: str, action: str, answer: str = "") -> _E:
    """Build an SshError subclass with every part redacted."""
    return cls(redact(target), redact(action), redact(answer))


def _load_identity(host: str, spec: Host, action: str) -> tuple[paramiko.PKey, str]:
    """Load the host's private key (ed25519, ECDSA or RSA)."""
    if spec.identity_file is None:
        raise _error(
            AuthError,
            host,
            action,
            "no identity_file is configured for this host "
            "(agent and ~/.ssh keys are deliberately not used)",
        )
    path = spec.identity_file.expanduser()
    pkey: paramiko.PKey | None
    try:
        pkey = paramiko.PKey.from_path(path)
    except OSError as exc:
        raise _error(
            AuthError, host, action, f"cannot read identity file {path}: {exc.strerror or exc}"
        ) from None
    except paramiko.PasswordRequiredException:
        raise _error(
            AuthError,
            host,
            action,
            f"identity file {path} is encrypted; openbell needs an unencrypted key "
            "(restrict it with from=/command= in authorized_keys)",
        ) from None
    except (paramiko.SSHException, ValueError, TypeError):
        pkey = _load_legacy_identity(path)
    if pkey is None:
        raise _error(
            AuthError,
            host,
            action,
            f"identity file {path} is not an ed25519, ECDSA or RSA private key",
        )
    return pkey, f"{path} ({pkey.get_name()} {pkey.fingerprint})"


def _load_legacy_identity(path: Path) -> paramiko.PKey | None:
    """Per-type loaders, for key files that PKey.from_path does not recognise."""
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        with suppress(paramiko.SSHException, ValueError, TypeError, OSError):
            return cls.from_private_key_file(str(path))
    return None


def _resolve(host: str, spec: Host, deadline: float, action: str) -> Sequence[_AddrInfo]:
    """getaddrinfo within the deadline (the system resolver has no timeout of its own)."""
    try:
        ipaddress.ip_address(spec.address)
    except ValueError:
        pass
    else:
        return socket.getaddrinfo(spec.address, spec.port, type=socket.SOCK_STREAM)
    box: dict[str, object] = {}

    def work() -> None:
        try:
            box["infos"] = socket.getaddrinfo(spec.address, spec.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            box["error"] = exc

    worker = threading.Thread(target=work, name=f"resolve {spec.address}", daemon=True)
    worker.start()
    worker.join(max(deadline - time.monotonic(), 0.0))
    if worker.is_alive():
        raise _error(
            HostUnreachableError,
            host,
            action,
            f"DNS lookup of {spec.address} did not answer in time",
        )
    if "error" in box:
        exc = box["error"]
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise _error(HostUnreachableError, host, action, f"cannot resolve {spec.address}: {reason}")
    return cast(Sequence[_AddrInfo], box["infos"])


def _open_socket(host: str, spec: Host, deadline: float, action: str) -> socket.socket:
    """A TCP connection to the first address that answers before the deadline."""
    failures: list[str] = []
    for family, kind, proto, _, sockaddr in _resolve(host, spec, deadline, action):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(remaining)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.connect(sockaddr)
            return sock
        except TimeoutError:
            failures.append(f"{sockaddr[0]}: no answer within {remaining:.1f} s")
        except ConnectionRefusedError:
            failures.append(f"{sockaddr[0]}: connection refused (nothing listening on the port)")
        except OSError as exc:
            failures.append(f"{sockaddr[0]}: {exc.strerror or exc}")
        sock.close()
    raise _error(
        HostUnreachableError, host, action, "; ".join(failures) or "no time left to connect"
    )


def _prefer_key_types(transport: paramiko.Transport, trusted: list[_Key]) -> None:
    """Ask for the host key types we can verify first, as OpenSSH does."""
    options = transport.get_security_options()
    wanted: list[str] = []
    for key in trusted:
        wanted += ["rsa-sha2-512", "rsa-sha2-256"] if key.kind == "ssh-rsa" else [key.kind]
    first = [k for k in dict.fromkeys(wanted) if k in options.key_types]
    options.key_types = tuple(first + [k for k in options.key_types if k not in first])


def _negotiate(
    host: str, transport: paramiko.Transport, deadline: float, budget: float, action: str
) -> None:
    """Banner and key exchange within what is left of the connect deadline."""
    remaining = max(deadline - time.monotonic(), 0.001)
    transport.banner_timeout = remaining
    transport.handshake_timeout = remaining
    done = threading.Event()
    transport.start_client(event=done)
    if not done.wait(max(deadline - time.monotonic(), 0.0)):
        stage = "key exchange did not finish" if transport.remote_version else "no SSH banner came"
        raise _error(
            HostUnreachableError, host, action, f"TCP connected but {stage} within {budget:g} s"
        )
    if not transport.is_active():
        exc = transport.get_exception()
        if isinstance(exc, IncompatiblePeer):
            raise _error(SshError, host, action, f"no common SSH algorithms: {exc}")
        raise _error(
            HostUnreachableError,
            host,
            action,
            f"SSH negotiation failed: {exc or 'the server closed the connection'}",
        )


def _authenticate(
    host: str,
    spec: Host,
    transport: paramiko.Transport,
    pkey: paramiko.PKey,
    identity: str,
    deadline: float,
    budget: float,
    action: str,
) -> None:
    transport.auth_timeout = max(deadline - time.monotonic(), 0.001)
    try:
        further = transport.auth_publickey(spec.user, pkey)
    except paramiko.BadAuthenticationType as exc:
        raise _error(
            AuthError,
            host,
            action,
            f"the server does not accept public keys for {spec.user!r}; "
            f"it allows: {', '.join(exc.allowed_types) or 'nothing'}",
        ) from None
    except paramiko.AuthenticationException as exc:
        if time.monotonic() >= deadline:
            raise _error(
                HostUnreachableError,
                host,
                action,
                f"authentication did not finish within {budget:g} s",
            ) from None
        raise _error(
            AuthError, host, action, f"key {identity} refused for user {spec.user!r}: {exc}"
        ) from None
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise _error(
            HostUnreachableError, host, action, f"connection failed during authentication: {exc}"
        ) from None
    if further or not transport.is_authenticated():
        raise _error(
            AuthError,
            host,
            action,
            f"key {identity} accepted but the server also requires: {', '.join(further) or 'more'}",
        )


# ---- I/O helpers ---------------------------------------------------------------------------


class _Tail:
    """Keep the last ``cap`` bytes of a stream and count what was dropped."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.buf = bytearray()
        self.dropped = 0

    def feed(self, data: bytes) -> None:
        self.buf += data
        excess = len(self.buf) - self.cap
        if excess > 0:
            del self.buf[:excess]
            self.dropped += excess

    def text(self) -> str:
        data = bytes(self.buf)
        if self.dropped:  # do not start in the middle of a UTF-8 character
            data = data.lstrip(bytes(range(0x80, 0xC0)))
        return data.decode("utf-8", errors="replace")


def _read_until_eof(chan: paramiko.Channel, out: _Tail, err: _Tail, deadline: float) -> bool:
    """Read stdout and stderr as they come until EOF; False if the deadline passed first."""
    fd = chan.fileno()  # readable while stdout or stderr has data, and after EOF
    while True:
        # One chunk of each per pass, so neither stream can starve the other (the
        # server stops writing a stream whose window is full) nor hold us past the
        # deadline.
        busy = chan.recv_ready() or chan.recv_stderr_ready()
        if chan.recv_ready():
            out.feed(chan.recv(_CHUNK))
        if chan.recv_stderr_ready():
            err.feed(chan.recv_stderr(_CHUNK))
        if not busy and (chan.eof_received or chan.closed):
            _drain(chan, out, err)  # what arrived with the EOF; nothing more can come
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if not busy:
            select.select([fd], [], [], min(remaining, 1.0))


def _drain(chan: paramiko.Channel, out: _Tail, err: _Tail) -> None:
    while chan.recv_ready() or chan.recv_stderr_ready():
        if chan.recv_ready():
            out.feed(chan.recv(_CHUNK))
        if chan.recv_stderr_ready():
            err.feed(chan.recv_stderr(_CHUNK))


def _so_far(out: _Tail, err: _Tail) -> str:
    def last(t: _Tail) -> str:
        return "\n".join(t.text().rstrip("\n").splitlines()[-5:]) or "(none)"

    return f"stdout so far: {last(out)} | stderr so far: {last(err)}"


def _close_quietly(chan: paramiko.Channel) -> None:
    with suppress(Exception):
        chan.close()


class _HashingWriter:
    """A file-like sink that hashes what it is given, and optionally writes it on."""

    def __init__(self, sink: IO[bytes] | None) -> None:
        self._sink = sink
        self._hash = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        if self._sink is not None:
            self._sink.write(data)
        return len(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def file(self) -> IO[bytes]:
        """This object, typed as the file paramiko's getfo expects (it only calls write)."""
        return cast(IO[bytes], self)


def _sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _mode_of(sftp: paramiko.SFTPClient, path: str) -> int | None:
    try:
        st_mode = sftp.stat(path).st_mode
    except FileNotFoundError:
        return None
    return stat.S_IMODE(st_mode) if st_mode is not None else None


class _Redacted:
    """Log argument that redacts secrets only if the record is actually formatted."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return redact(self.text)


# ---- the fake --------------------------------------------------------------------------------

Answer = Callable[[str, tuple[str, ...]], CommandResult]
Reply = CommandResult | BaseException | Answer


class FakeSshRunner(SshRunner):
    """An in-memory SshRunner for unit tests of the layers above, like httpx's MockTransport.

    Replies are looked up by ``(host, argv prefix)``, longest prefix first; ``"*"`` matches
    any host. A reply is a CommandResult (its host, argv and command are filled in from
    the call), an exception to raise, or a callable ``(host, argv) -> CommandResult``.
    Instead of a mapping, a single callable can answer everything. ``put`` and ``get``
    use ``files``, keyed by ``(host, remote path)``.

    Example:
        >>> fake = FakeSshRunner({("*", ("systemctl", "is-active")): CommandResult("", (), "", 3)})
        >>> fake.run("oms1", ["systemctl", "is-active", "oms"]).ok
        False
        >>> fake.calls
        [('oms1', ('systemctl', 'is-active', 'oms'))]
    """

    def __init__(
        self,
        replies: Mapping[tuple[str, Sequence[str]], Reply] | Answer | None = None,
    ) -> None:
        self._answer = replies if callable(replies) else None
        rules = [] if callable(replies) or replies is None else replies.items()
        self._rules = sorted(((h, tuple(p), r) for (h, p), r in rules), key=lambda x: -len(x[1]))
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self.files: dict[tuple[str, str], bytes] = {}

    def run(self, host: str, argv: Sequence[str], *, timeout: float | None = None) -> CommandResult:
        """Record the call and answer it from the configured replies."""
        args, command = tuple(argv), remote_command(argv)
        self.calls.append((host, args))
        reply = self._answer or next(
            (r for h, p, r in self._rules if h in (host, "*") and args[: len(p)] == p), None
        )
        if reply is None:
            known = ", ".join(f"{h} {shlex.join(p)}" for h, p, _ in self._rules) or "none"
            raise LookupError(f"FakeSshRunner: no reply for {host}: {command} (replies: {known})")
        if isinstance(reply, BaseException):
            raise reply
        result = reply if isinstance(reply, CommandResult) else reply(host, args)
        return replace(result, host=host, argv=args, command=command)

    def put(self, host: str, local: Path, remote: str, *, timeout: float | None = None) -> str:
        """Store the file's bytes in ``files``."""
        self.files[(host, remote)] = data = Path(local).read_bytes()
        return hashlib.sha256(data).hexdigest()

    def get(self, host: str, remote: str, local: Path, *, timeout: float | None = None) -> str:
        """Write ``files[(host, remote)]`` to ``local``."""
        if (host, remote) not in self.files:
            raise SshError(host, f"get {remote}", "SFTP: No such file")
        Path(local).write_bytes(data := self.files[(host, remote)])
        return hashlib.sha256(data).hexdigest()

    def close(self) -> None:
        """Nothing to release."""
