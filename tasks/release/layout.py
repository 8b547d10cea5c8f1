"""Releases side by side on a host: the commands that read and change the layout.

Under the app's release root ``$R`` (``App.release.root``)::

    $R/releases/<version>/        one directory per release, with SHA256SUMS of its files
    $R/releases/.staging-<version>-<run8>/   a release being unpacked (never run)
    $R/current -> releases/<version>         the release that runs (a relative link)
    $R/.openbell.lock/owner       which release holds the host (taken while staging)
    $R/.openbell.lock/switching   the version a switch of this host is under way to

A configuration-only change (``--config``) uses the same layout one level over: its
bundles sit in ``$R/configs/<config>/`` and ``$R/config`` links the one in force, so the
binary's ``releases/`` and ``current`` are never touched. Each function that names the
store takes ``store=`` (``releases``, the default, or ``configs``); the link follows it.

Every command is an argv list sent quoted (``shlex.join`` by the SSH connector); a path
that could start with ``-`` goes after ``--``. The switch is the one safe on POSIX:
``ln -sfn <release> current.next`` then ``mv -T -f current.next current`` (without ``-T``,
``mv`` moves the link *into* the old release directory and still exits 0), then
``readlink current`` to check.

The pure helpers here (``batches_of``, ``to_prune``, ``version_of_link``) carry the
arithmetic; the step module wires them to hosts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")

#: a release directory's marker that it was rolled back (``<utc>,<run>,<reason>``).
BAD_MARK = "BAD_RELEASE"
LOCK_DIR = ".openbell.lock"
#: where a kind of change keeps its versions -> the link that names the one in force
STORES = {"releases": "current", "configs": "config"}


def link_of(store: str) -> str:
    """The link of a store: ``current`` for ``releases``, ``config`` for ``configs``."""
    try:
        return STORES[store]
    except KeyError:
        raise ValueError(f"store {store!r}: expected one of {', '.join(STORES)}") from None


def check_version(version: str) -> str:
    """A version usable as a directory name; raises ValueError otherwise."""
    if not _VERSION.fullmatch(version):
        raise ValueError(f"version {version!r}: expected letters, digits and . _ + - only")
    return version


def release_dir(root: str, version: str, store: str = "releases") -> str:
    link_of(store)
    return f"{root}/{store}/{check_version(version)}"


def link_target(version: str, store: str = "releases") -> str:
    """What ``current`` points at for ``version`` (relative, so the root can move)."""
    link_of(store)
    return f"{store}/{check_version(version)}"


def version_of_link(target: str, store: str = "releases") -> str | None:
    """The version a ``current`` link names (``releases/5.0.3`` -> ``5.0.3``), or None."""
    target = target.strip().rstrip("/")
    head, _, version = target.rpartition("/")
    if not version or not _VERSION.fullmatch(version):
        return None
    if head != store and not head.endswith(f"/{store}"):
        return None
    return version


# ---- reading -------------------------------------------------------------------------------
def read_state(root: str, store: str = "releases") -> list[str]:
    """One command that reads a host's layout: the link, whether current is a link, the
    releases present, the lock's owner, the version a switch was under way to. Output:
    ``key=value`` lines (``current=`` is the store's link: ``config`` for ``configs``)."""
    script = (
        'cd -- "$1" 2>/dev/null || { echo missing=1; exit 0; }; '
        'if [ -L "$2" ]; then echo "current=$(readlink -- "$2")"; '
        'elif [ -e "$2" ]; then echo current_is_dir=1; fi; '
        'for d in "$3"/*/; do [ -d "$d" ] || continue; d=${d%/}; '
        'echo "release=${d#"$3"/}"; '
        '[ -e "$d/BAD_RELEASE" ] && echo "bad=${d#"$3"/}"; done; '
        f'[ -e {LOCK_DIR}/owner ] && echo "lock=$(cat {LOCK_DIR}/owner)"; '
        f'[ -e {LOCK_DIR}/switching ] && echo "switching=$(cat {LOCK_DIR}/switching)"; exit 0'
    )
    return ["sh", "-c", script, "sh", root, link_of(store), store]


def parse_state(stdout: str) -> dict[str, Any]:
    """``read_state``'s output as {current, current_is_dir, releases, bad, lock, switching,
    missing}."""
    state: dict[str, Any] = {
        "current": None,
        "releases": [],
        "bad": [],
        "lock": None,
        "switching": None,
    }
    for line in stdout.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key in ("release", "bad"):
            state["releases" if key == "release" else "bad"].append(value)
        elif key in ("current_is_dir", "missing"):
            state[key] = True
        else:
            state[key] = value
    return state


def verify_tree(directory: str) -> list[str]:
    """Every file of a release against its SHA256SUMS (exit 0: all match)."""
    return [
        "sh",
        "-c",
        'cd -- "$1" && exec sha256sum -c --strict --quiet SHA256SUMS',
        "sh",
        directory,
    ]


def disk_free(root: str) -> list[str]:
    return ["df", "-Pk", "--", root]


def parse_df_available_kb(stdout: str) -> int | None:
    """The available KiB from ``df -Pk`` (its last line, fourth column)."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if len(lines) < 2:
        return None
    cols = lines[-1].split()
    try:
        return int(cols[3])
    except (IndexError, ValueError):
        return None


# ---- changing ------------------------------------------------------------------------------
def take_lock(root: str, owner: str) -> list[str]:
    """Take the host for a release: ``mkdir`` is atomic; exits 3 when another owns it."""
    script = (
        f'cd -- "$1" || exit 1; if mkdir {LOCK_DIR} 2>/dev/null; then '
        f'printf %s "$2" > {LOCK_DIR}/owner; exit 0; fi; '
        f'[ "$(cat {LOCK_DIR}/owner 2>/dev/null)" = "$2" ] && exit 0; '
        f'echo "held by $(cat {LOCK_DIR}/owner 2>/dev/null)" >&2; exit 3'
    )
    return ["sh", "-c", script, "sh", root, owner]


def release_lock(root: str, owner: str) -> list[str]:
    """Give the host back, only if this release holds it."""
    script = (
        f'cd -- "$1" || exit 0; [ -e {LOCK_DIR}/owner ] || exit 0; '
        f'[ "$(cat {LOCK_DIR}/owner)" = "$2" ] || exit 0; rm -r -- {LOCK_DIR}'
    )
    return ["sh", "-c", script, "sh", root, owner]


def mark_switching(root: str, owner: str, version: str) -> list[str]:
    """Note in the lock that a switch to ``version`` starts (before the app is stopped), so
    that a run killed between the stop and the start is known for what it is. Takes the
    host if no release holds it; exits 3 when another release does."""
    script = (
        f'cd -- "$1" || exit 1; mkdir {LOCK_DIR} 2>/dev/null && printf %s "$2" > {LOCK_DIR}/owner; '
        f'[ "$(cat {LOCK_DIR}/owner 2>/dev/null)" = "$2" ] || '
        f'{{ echo "held by $(cat {LOCK_DIR}/owner 2>/dev/null)" >&2; exit 3; }}; '
        f'printf %s "$3" > {LOCK_DIR}/switching'
    )
    return ["sh", "-c", script, "sh", root, owner, check_version(version)]


def staging_dir(root: str, version: str, run_id: str, store: str = "releases") -> str:
    link_of(store)
    return f"{root}/{store}/.staging-{check_version(version)}-{run_id[:8]}"


def remove_stale_staging(root: str, store: str = "releases") -> list[str]:
    """Remove what dead runs left half unpacked (never a release: those have no dot)."""
    script = (
        'cd -- "$1/$2" 2>/dev/null || exit 0; '
        'for d in .staging-*; do [ -e "$d" ] && rm -rf -- "$d"; done; exit 0'
    )
    link_of(store)
    return ["sh", "-c", script, "sh", root, store]


def unpack(archive: str, directory: str) -> list[str]:
    script = 'mkdir -p -- "$2" && exec tar -xzf "$1" -C "$2" --no-same-owner'
    return ["sh", "-c", script, "sh", archive, directory]


def rename_into_place(staging: str, final: str) -> list[str]:
    """The release becomes complete in one rename."""
    return ["mv", "-T", "--", staging, final]


def remove(path: str) -> list[str]:
    return ["rm", "-rf", "--", path]


def make_link(root: str, version: str, store: str = "releases") -> list[str]:
    """``current.next`` -> the release (``-n``: a leftover link is replaced, not entered)."""
    link = link_of(store)
    return ["ln", "-sfn", "--", link_target(version, store), f"{root}/{link}.next"]


def swap_link(root: str, store: str = "releases") -> list[str]:
    """Repoint ``current`` atomically (a rename over the old link)."""
    link = link_of(store)
    return ["mv", "-T", "-f", "--", f"{root}/{link}.next", f"{root}/{link}"]


def read_link(root: str, store: str = "releases") -> list[str]:
    return ["readlink", "--", f"{root}/{link_of(store)}"]


def mark_bad(root: str, version: str, line: str, store: str = "releases") -> list[str]:
    script = 'printf "%s\\n" "$2" > "$1/BAD_RELEASE"'
    return ["sh", "-c", script, "sh", release_dir(root, version, store), line]


def count_errors(log_file: str, pattern: str, after_line: int) -> list[str]:
    """Lines past ``after_line`` of the log that hold ``pattern`` (fixed string)."""
    script = '[ -f "$1" ] || { echo 0; exit 0; }; tail -n +"$2" -- "$1" | grep -cF -- "$3"; exit 0'
    return ["sh", "-c", script, "sh", log_file, str(after_line + 1), pattern]


def count_lines(log_file: str) -> list[str]:
    return ["sh", "-c", '[ -f "$1" ] && wc -l < "$1" || echo 0', "sh", log_file]


# ---- arithmetic ----------------------------------------------------------------------------
def batches_of(hosts: Sequence[str], batches: Sequence[int | str]) -> list[list[str]]:
    """Split hosts into the estate's batches: counts, or shares of all the hosts.

    A count is a batch's size; a share says how many of all the hosts are switched once
    the batch is done (rounded up), so ``[1, "50%", "100%"]`` over 4 hosts is 1, then 1,
    then 2.
    Hosts left after the last batch form one more batch: every host is switched.

    Example:
        >>> batches_of(["a", "b", "c", "d"], [1, "50%", "100%"])
        [['a'], ['b'], ['c', 'd']]
        >>> batches_of(["a", "b"], [1])
        [['a'], ['b']]
    """
    out: list[list[str]] = []
    done = 0
    total = len(hosts)
    for spec in batches:
        if isinstance(spec, str):
            upto = math.ceil(total * float(spec.rstrip("%")) / 100)
        else:
            upto = done + spec if out else spec
        upto = min(max(upto, done + 1), total)
        if upto > done:
            out.append(list(hosts[done:upto]))
            done = upto
        if done >= total:
            break
    if done < total:
        out.append(list(hosts[done:]))
    return out


def to_prune(
    releases: Sequence[str],
    *,
    keep: int,
    current: str | None,
    protect: Sequence[str],
    order: Sequence[str],
) -> list[str]:
    """The releases to remove from a host, oldest first, keeping ``keep`` in all.

    Never ``current``, never a protected release (the way back recorded for this host),
    and never a release whose age is unknown (not in ``order``, the ledger's history of
    this app's releases, oldest first): a directory listing is no history.

    Example:
        >>> to_prune(["1", "2", "3", "4"], keep=2, current="4", protect=["3"],
        ...          order=["1", "2", "3", "4"])
        ['1', '2']
    """
    kept = {r for r in (current, *protect) if r}
    known = [r for r in order if r in releases]
    removable = [r for r in known if r not in kept]
    room = max(keep - len(kept & set(releases)), 0)
    newest_first = list(reversed(removable))
    stay = set(newest_first[:room])
    return [r for r in removable if r not in stay]
