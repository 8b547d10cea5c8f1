"""What the ledger knows about releases: the manifest, and the way back of each host.

Three kinds of entry, each with a ``ref`` so one lookup finds them:

``release_manifest``  {region, app, version, previous, sha256, run_id}: a release that
                      attested on every host of the region. The last one per (region,
                      app) is the version the region runs; start of day checks against it
                      (the estate's ``expected_version`` is only the fallback).
``release_before``    {region, key, host, before}: the release a host ran before this
                      release first touched it. Written once per (release, host), by the
                      first preflight: a re-run after a partial rollout never overwrites
                      it, and the rollback goes back to exactly it, never to a guess from
                      a directory listing.
``host_quarantined``  {region, app, host, key, reason}: a host whose rollback could not
                      finish (it did not answer, or its way back failed its checksums).
                      Start of day fails on it ("do not open with this host") until a
``host_cleared``      {region, app, host, how, by, reason} follows it: a later run of the
                      release rolled it back, or a proven person cleared it by hand.
``recovery_*``        written by the engine (a rollback started and finished).
"""

from __future__ import annotations

import hashlib
from typing import Any

from openbell.tasks.ledger.chain import canonical_json


def _ref(*parts: str) -> str:
    return hashlib.sha256(canonical_json(list(parts)).encode()).hexdigest()


def manifest_ref(region: str, app: str) -> str:
    return _ref("release_manifest", region, app)


def manifest_entries(ledger: Any, region: str, app: str) -> list[Any]:
    """Every verified release of ``app`` in ``region``, oldest first."""
    return list(ledger.entries(kinds=["release_manifest"], ref=manifest_ref(region, app)))


def manifest_version(ledger: Any, region: str, app: str) -> str | None:
    """The version the region runs by the ledger (its last verified release), or None."""
    found = manifest_entries(ledger, region, app)
    return str(found[-1].payload["version"]) if found else None


def previous_version(ledger: Any, region: str, app: str) -> str | None:
    """The version the region ran before its last verified release, or None."""
    found = manifest_entries(ledger, region, app)
    return str(found[-1].payload.get("previous") or "") or None if found else None


def history(ledger: Any, region: str, app: str) -> list[str]:
    """The versions released, oldest first, each once (its last position)."""
    seen: list[str] = []
    for e in manifest_entries(ledger, region, app):
        for v in (e.payload.get("previous"), e.payload["version"]):
            if v:
                if v in seen:
                    seen.remove(v)
                seen.append(str(v))
    return seen


def record_manifest(
    ledger: Any,
    run_id: str,
    *,
    region: str,
    app: str,
    version: str,
    previous: str | None,
    sha256: str,
    rollback: bool,
) -> Any:
    payload = {
        "region": region,
        "app": app,
        "version": version,
        "previous": previous,
        "sha256": sha256,
        "rollback": rollback,
    }
    return ledger.append("release_manifest", run_id, payload, ref=manifest_ref(region, app))


def before_ref(region: str, key: str, host: str) -> str:
    return _ref("release_before", region, key, host)


def recorded_before(ledger: Any, region: str, key: str, host: str) -> str | None:
    found = ledger.entries(kinds=["release_before"], ref=before_ref(region, key, host), limit=1)
    return str(found[0].payload["before"]) if found else None


def record_before(
    ledger: Any, run_id: str, *, region: str, key: str, host: str, before: str
) -> str:
    """Keep the first ``before`` recorded for (release, host); return the one kept."""
    kept = recorded_before(ledger, region, key, host)
    if kept is not None:
        return kept
    payload = {"region": region, "key": key, "host": host, "before": before}
    ledger.append("release_before", run_id, payload, ref=before_ref(region, key, host))
    return before


def attempts(ledger: Any, region: str, base: str) -> int:
    """How many times a rollback finished for release ``base`` (``app@version``) here."""
    done = ledger.entries(kinds=["recovery_finished"])
    return sum(
        1 for e in done if e.payload.get("region") == region and e.payload.get("key_base") == base
    )


def releases_in(ledger: Any, since: Any = None, until: Any = None) -> list[Any]:
    """Verified releases (and rollbacks) recorded in a time range, for the rollup."""
    return list(ledger.entries(kinds=["release_manifest"], since=since, until=until))


def quarantine_ref(region: str, host: str) -> str:
    return _ref("quarantine", region, host)


def quarantined(ledger: Any, region: str, hosts: list[str] | None = None) -> dict[str, Any]:
    """The hosts of ``region`` in quarantine now: host -> the ``host_quarantined`` entry.

    Read per host (one ref each) when ``hosts`` is given, else from every quarantine entry.
    """
    kinds = ["host_quarantined", "host_cleared"]
    if hosts is None:
        found = [e for e in ledger.entries(kinds=kinds) if e.payload.get("region") == region]
    else:
        refs = [quarantine_ref(region, h) for h in hosts]
        found = [e for r in refs for e in ledger.entries(kinds=kinds, ref=r)]
    last: dict[str, Any] = {}
    for e in sorted(found, key=lambda e: e.seq):
        last[str(e.payload["host"])] = e
    return {h: e for h, e in last.items() if e.kind == "host_quarantined"}


def record_quarantine(
    ledger: Any, run_id: str, *, region: str, app: str, host: str, key: str, reason: str
) -> Any:
    payload = {"region": region, "app": app, "host": host, "key": key, "reason": reason}
    return ledger.append("host_quarantined", run_id, payload, ref=quarantine_ref(region, host))


def record_cleared(
    ledger: Any,
    run_id: str | None,
    *,
    region: str,
    app: str,
    host: str,
    how: str,
    by: str,
    reason: str,
) -> Any:
    payload = {"region": region, "app": app, "host": host, "how": how, "by": by, "reason": reason}
    return ledger.append("host_cleared", run_id, payload, ref=quarantine_ref(region, host))
