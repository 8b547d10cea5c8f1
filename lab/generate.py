"""Generate estate YAMLs of any size for the lab: tests, demos and scale benchmarks.

The output has the shape of ``runbooks/lab.yaml`` (same keys, the same SQL checks,
``${OPENBELL_HOME}`` paths) with free loopback ports. Apps form ``tiers`` dependency
tiers per region (each app depends on one or two apps of the tier before it); every
second host of a region is a gateway with a FIX store. Ports are taken below the
kernel's ephemeral range, so outgoing connections made meanwhile cannot take them.

Example:
    >>> path = generate_estate(Path("/tmp/ob-doc/estate.yaml"), hosts=3)   # doctest: +SKIP

By hand: ``python -m openbell.lab.generate /tmp/scale.yaml --hosts 200 --apps-per-host 2
--fix-sessions 50 --feeds 20``.
"""

from __future__ import annotations

import argparse
import random
import socket
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from openbell.settings import default_estate

#: (timezone, calendars) for well-known region names; other names cycle through EXTRA.
REGIONS: dict[str, tuple[str, list[str]]] = {
    "apac": ("Asia/Tokyo", ["XTKS", "XHKG"]),
    "emea": ("Europe/London", ["XLON", "XETR"]),
    "amer": ("America/New_York", ["XNYS"]),
}
EXTRA: list[tuple[str, list[str]]] = [
    ("Asia/Hong_Kong", ["XHKG"]),
    ("Europe/Berlin", ["XETR"]),
    ("America/Toronto", ["XTSE"]),
    ("Australia/Sydney", ["XASX"]),
]
#: Tier roles, in start order, with the version each one runs.
ROLES: list[tuple[str, str]] = [
    ("refdata", "7.2.0"),
    ("risk", "3.14.1"),
    ("oms", "5.0.3"),
    ("fixgw", "2.8.0"),
    ("algo", "1.9.4"),
    ("pricer", "4.1.2"),
    ("hedger", "0.9.7"),
    ("recon", "2.0.1"),
]
FEED_KINDS = ["equities", "futures", "fx", "options", "etf", "rates"]
OE_BEGIN_STRINGS = ["FIX.4.2", "FIX.4.4", "FIXT.1.1"]
HOME = "${OPENBELL_HOME}"


def generate_estate(
    path: str | Path,
    *,
    hosts: int = 6,
    apps_per_host: int = 2,
    tiers: int = 4,
    fix_sessions: int = 6,
    feeds: int = 4,
    regions: Sequence[str] = ("apac", "emea", "amer"),
    base_port: int | None = None,
    approvals: dict[str, Any] | None = None,
    release_hosts: int = 0,
    soak_s: float = 2.0,
    release_regions: Sequence[str] | None = None,
) -> Path:
    """Write an estate YAML for the lab and return its path.

    Args:
        path: where to write it (parent directories are created).
        hosts: SSH hosts, spread round-robin over the regions.
        apps_per_host: apps on each host.
        tiers: dependency tiers per region (refdata → risk → oms → ...).
        fix_sessions: FIX sessions, alternating order entry and drop copy per region.
        feeds: market-data feeds, all served by one feed server.
        regions: lower-case region names.
        base_port: first port to try (default: a random spot below the ephemeral range).
        approvals: ``runbooks.sod.approvals`` for the estate, e.g.
            ``{"steps": ["apps"], "ttl_minutes": 1}``; default none (no run waits).
        release_hosts: when > 0, each region also gets that many hosts (``<region>-rt001``
            ...) on their own loopback addresses (127.0.0.10 and up) running one app,
            ``<region>-router``, for releases rolled out over several hosts.
        soak_s: the soak of every app's release block.
        release_regions: the regions that get the router hosts (default: every region).

    Every app has a release block (laid out under ``apps/<app>`` on its hosts, approved by
    the region's approver group) and the estate the lab's artifact repository.

    Beside the estate it writes ``entitlements.yaml``: in each region ``<region>-oncall``
    runs and reports start and end of day, ``<region>-lead`` also approves, cancels and
    audits there, and anyone may plan.

    Raises:
        ValueError: a count is out of range or a region name is not lower case.
    """
    if (
        hosts < len(regions)
        or min(apps_per_host, tiers, len(regions)) < 1
        or min(fix_sessions, feeds) < 0
    ):
        raise ValueError(
            "need at least one host per region, one app per host, one tier, one region"
        )
    if any(r != r.lower() for r in regions):
        raise ValueError(f"region names must be lower case: {list(regions)}")
    n_ports = hosts * (1 + apps_per_host) + fix_sessions + 3 + len(regions) * (release_hosts + 1)
    ports = iter(free_ports(n_ports, base_port))
    doc: dict[str, Any] = {
        "version": 1,
        "known_hosts": f"{HOME}/lab/known_hosts",
        "entitlements": "entitlements.yaml",
    }
    doc["regions"] = _regions(regions)
    host_names = _spread(regions, hosts)
    doc["hosts"] = {name: _host(region, name, next(ports)) for region, name in host_names}
    doc["apps"] = _apps(regions, host_names, apps_per_host, tiers, ports)
    if release_hosts > 0:
        _routers(doc, list(release_regions or regions), release_hosts, ports)
    for name, app in doc["apps"].items():
        region = doc["hosts"][app["hosts"][0]]["region"]
        role = name.split("-")[1] if "-" in name else "service"
        app["kind"] = KINDS_BY_ROLE.get(role, "service")
        app["release"] = {
            "root": f"apps/{name}",
            "approver_group": f"{region}-approvers",
            "soak_s": soak_s,
            "soak_interval_s": 0.5,
            "log_file": f"var/log/{name}.log",
        }
    doc["fix_sessions"] = _fix_sessions(regions, fix_sessions, ports)
    doc["feeds"] = _feeds(regions, feeds, next(ports))
    doc["databases"] = _databases(regions, host_names, next(ports))
    doc["people"], doc["groups"] = _people(regions)
    from openbell.lab.artifacts import lab_public_key

    doc["environment"] = "lab"
    doc["artifacts"] = {
        "url": f"http://127.0.0.1:{next(ports)}",
        "signing_keys": {"lab": lab_public_key()},
        "require_signature": True,
    }
    doc["runbooks"] = {"eod": {"before_close": "refuse"}}
    if approvals:
        doc["runbooks"]["sod"] = {"approvals": approvals}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.parent / "entitlements.yaml").write_text(
        "# Generated by openbell.lab.generate beside the estate.\n"
        + yaml.safe_dump(_entitlements(regions), sort_keys=False, width=120)
    )
    header = (
        f"# Generated by openbell.lab.generate: {hosts} hosts, {hosts * apps_per_host} apps in "
        f"{tiers} tiers,\n# {fix_sessions} FIX sessions, {feeds} feeds, "
        f"regions {', '.join(regions)}.\n"
    )
    out.write_text(header + yaml.safe_dump(doc, sort_keys=False, width=120))
    return out


def free_ports(count: int, start: int | None = None) -> list[int]:
    """``count`` loopback TCP ports that can be bound now, scanning up from ``start``.

    Without ``start``, scanning begins at a random port between 20000 and the start of
    the ephemeral range, so parallel test runs rarely collide.
    """
    low = _ephemeral_low()
    if start is None:
        top = max(10_000, low - count - 1000)
        start = random.randint(min(20_000, top), top)
    found: list[int] = []
    port = start
    while len(found) < count:
        if port > 65535:
            raise ValueError(f"not enough free ports from {start}")
        if _bindable(port):
            found.append(port)
        port += 1
    return found


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _spread(regions: Sequence[str], hosts: int) -> list[tuple[str, str]]:
    """(region, host name) pairs: round-robin; in a region, app and gateway hosts alternate."""
    counts = dict.fromkeys(regions, 0)
    out = []
    for i in range(hosts):
        region = regions[i % len(regions)]
        n = counts[region]
        counts[region] += 1
        kind = "app" if n % 2 == 0 else "gw"
        out.append((region, f"{region}-{kind}{n // 2 + 1:03d}"))
    return out


def _regions(regions: Sequence[str]) -> dict[str, Any]:
    out = {}
    for i, name in enumerate(regions):
        tz, cals = REGIONS.get(name) or EXTRA[i % len(EXTRA)]
        out[name] = {
            "timezone": tz,
            "calendars": cals,
            "slack_channel": f"#{name}-oncall",
            "approver_group": f"{name}-approvers",
            "work_pool": name,
            "thresholds": {"disk_max_pct": 90, "clock_tier": "algo", "feed_max_staleness_s": 5},
        }
    return out


def _host(region: str, name: str, port: int) -> dict[str, Any]:
    host: dict[str, Any] = {
        "region": region,
        "address": "127.0.0.1",
        "port": port,
        "user": "openbell",
        "identity_file": f"{HOME}/lab/id_ed25519",
        "connect_timeout_s": 3,
        "command_timeout_s": 10,
        "disk_paths": ["."],
        "log_dir": "var/log",
    }
    if "-gw" in name:
        host["fix_store_dir"] = "var/fix/store"
    if name.endswith("-app001"):
        host["order_records_dir"] = "var/oms/records"
    host["archive_dir"] = "var/archive"
    return host


def _apps(
    regions: Sequence[str],
    host_names: list[tuple[str, str]],
    per_host: int,
    tiers: int,
    ports: Iterator[int],
) -> dict[str, Any]:
    apps: dict[str, Any] = {}
    for region in regions:
        hosts = [h for r, h in host_names if r == region]
        total = len(hosts) * per_host
        by_tier: list[list[str]] = [[] for _ in range(tiers)]
        per_role: dict[str, int] = {}
        for j in range(total):
            tier = j * tiers // total
            role, version = ROLES[tier % len(ROLES)]
            per_role[role] = per_role.get(role, 0) + 1
            name = f"{region}-{role}-{per_role[role]:03d}"
            prev = by_tier[tier - 1] if tier else []
            deps = sorted({prev[k % len(prev)] for k in (j, j + 1)}) if prev else []
            apps[name] = _app(name, hosts[j // per_host], next(ports), version, deps)
            by_tier[tier].append(name)
    return apps


def _app(name: str, host: str, port: int, version: str, deps: list[str]) -> dict[str, Any]:
    app: dict[str, Any] = {
        "hosts": [host],
        "start": f"bin/appctl start {name}",
        "stop": f"bin/appctl stop {name}",
        "status": f"bin/appctl status {name}",
        "health_url": f"http://{{host}}:{port}/health",
        "expected_version": version,
        "start_timeout_s": 15,
    }
    if deps:
        app["depends_on"] = deps
    return app


#: what each generated role is, for pre-release checks declared per kind.
KINDS_BY_ROLE = {
    "refdata": "service",
    "risk": "risk",
    "oms": "oms",
    "fixgw": "gateway",
    "algo": "algo",
    "pricer": "marketdata",
    "hedger": "algo",
    "recon": "service",
    "router": "service",
}


def _routers(doc: dict[str, Any], regions: Sequence[str], count: int, ports: Iterator[int]) -> None:
    """Per region, ``count`` hosts on their own loopback addresses and one app on all."""
    address = 10
    for region in regions:
        names = []
        for i in range(count):
            name = f"{region}-rt{i + 1:03d}"
            host = _host(region, name, next(ports))
            host["address"] = f"127.0.0.{address}"
            address += 1
            doc["hosts"][name] = host
            names.append(name)
        app = _app(f"{region}-router", names[0], next(ports), "3.0.0", [])
        app["hosts"] = names
        doc["apps"][f"{region}-router"] = app


def _fix_sessions(regions: Sequence[str], count: int, ports: Iterator[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    per_region = dict.fromkeys(regions, 0)
    for i in range(count):
        region = regions[i % len(regions)]
        n = per_region[region]
        per_region[region] += 1
        drop_copy = n % 2 == 1
        seq = n // 2 + 1
        session: dict[str, Any] = {
            "region": region,
            "kind": "drop_copy" if drop_copy else "order_entry",
            "address": "127.0.0.1",
            "port": next(ports),
            "begin_string": "FIX.4.4" if drop_copy else OE_BEGIN_STRINGS[(seq - 1) % 3],
            "sender_comp_id": f"OB{region.upper()}{'DC' if drop_copy else ''}{seq:02d}",
            "target_comp_id": "LABVENUE",
            "heartbeat_s": 30,
            "reset_policy": "weekly" if drop_copy else "daily",
        }
        if drop_copy:
            session["reset_weekday"] = "sun"
        out[f"{region}-{'dc' if drop_copy else 'oe'}{seq:02d}"] = session
    return out


def _feeds(regions: Sequence[str], count: int, port: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    per_region = dict.fromkeys(regions, 0)
    for i in range(count):
        region = regions[i % len(regions)]
        n = per_region[region]
        per_region[region] += 1
        kind = FEED_KINDS[n % len(FEED_KINDS)]
        name = f"{region}-{kind}" + (f"{n // len(FEED_KINDS) + 1}" if n >= len(FEED_KINDS) else "")
        out[name] = {"region": region, "status_url": f"http://127.0.0.1:{port}/feeds/{name}"}
    return out


def _databases(
    regions: Sequence[str], host_names: list[tuple[str, str]], admin_port: int
) -> dict[str, Any]:
    """One OMS per region: SQL checks, admin API, cancel sweep, the venue's trade file."""
    checks = sql_checks()
    out: dict[str, Any] = {}
    for r in regions:
        mine = [h for region, h in host_names if region == r]
        drop_host = next((h for h in mine if "-gw" in h), mine[0])
        out[f"{r}-oms"] = {
            "region": r,
            "url": f"sqlite:///{HOME}/lab/oms-{r}.db",
            "timeout_s": 5,
            "checks": checks,
            "oms": {
                "admin_url": f"http://127.0.0.1:{admin_port}/oms/{r}-oms",
                "cancel_sweep": True,
                "trade_file": {"host": drop_host, "path": "var/venue/inbound/trades-{date}.csv"},
            },
        }
    return out


def sql_checks(source: Path | None = None) -> list[dict[str, Any]]:
    """The SQL checks of the first database in ``runbooks/lab.yaml`` (one source of truth)."""
    doc = yaml.safe_load((source or default_estate()).read_text())
    first = next(iter(doc["databases"].values()))
    return list(first["checks"])


def _people(regions: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    people: dict[str, Any] = {}
    groups: dict[str, Any] = {}
    for r in regions:
        members = [f"{r}-lead", f"{r}-oncall"]
        for m in members:
            people[m] = {
                "name": f"{r.upper()} {m.split('-')[1].title()}",
                "slack_id": f"U{m.upper().replace('-', '')}",
            }
        groups[f"{r}-approvers"] = {"members": members}
    return people, groups


def _entitlements(regions: Sequence[str]) -> dict[str, Any]:
    rules: list[dict[str, Any]] = [
        {"allow": ["plan"], "who": "*", "runbooks": "*", "regions": "*", "why": "anyone may plan"}
    ]
    for r in regions:
        rules += [
            {
                "allow": ["run", "report"],
                "who": [f"{r}-oncall", f"{r}-lead"],
                "runbooks": "*",
                "regions": [r],
                "why": f"{r} on-call and lead run and report in {r}",
            },
            {
                "allow": ["approve", "cancel", "audit"],
                "who": f"group:{r}-approvers",
                "runbooks": "*",
                "regions": [r],
                "why": f"{r} approvers approve, cancel and audit in {r}",
            },
        ]
    # People prove who they are with the keys the lab writes for them (openbell lab up).
    identity = {"allowed_signers": f"{HOME}/lab/allowed_signers"}
    return {"version": 1, "identity": identity, "rules": rules}


def main(argv: list[str] | None = None) -> int:
    """``python -m openbell.lab.generate OUT [--hosts N ...]``: write an estate, print its path."""
    parser = argparse.ArgumentParser(
        prog="openbell.lab.generate", description="Generate a lab estate YAML."
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--hosts", type=int, default=6)
    parser.add_argument("--apps-per-host", type=int, default=2)
    parser.add_argument("--tiers", type=int, default=4)
    parser.add_argument("--fix-sessions", type=int, default=6)
    parser.add_argument("--feeds", type=int, default=4)
    parser.add_argument("--regions", default="apac,emea,amer", help="comma-separated")
    parser.add_argument("--base-port", type=int, default=None)
    parser.add_argument("--release-hosts", type=int, default=0, help="hosts of <region>-router")
    parser.add_argument("--soak-s", type=float, default=2.0, help="soak of every release")
    args = parser.parse_args(argv)
    path = generate_estate(
        args.out,
        hosts=args.hosts,
        apps_per_host=args.apps_per_host,
        tiers=args.tiers,
        fix_sessions=args.fix_sessions,
        feeds=args.feeds,
        regions=tuple(args.regions.split(",")),
        base_port=args.base_port,
        release_hosts=args.release_hosts,
        soak_s=args.soak_s,
    )
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
