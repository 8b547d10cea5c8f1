"""Which release a run is: the app, the version, its hosts in the region, and the clock.

``resolve`` turns a release's parameters into a :class:`Target`, naming the valid choices
on a miss. ``--rollback`` resolves the version to the one the region ran before its last
verified release, from the ledger's manifest (never from what the hosts hold).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from openbell.errors import OpenbellError, UnknownNameError
from openbell.runbooks.schema import App, AppRelease, Estate
from openbell.tasks.release import layout, records


class ReleaseError(OpenbellError):
    """A release that cannot be what was asked (no such app here, no version before...)."""


@dataclass(frozen=True)
class Target:
    """One release: ``version`` of ``app`` onto its ``hosts`` in ``region``.

    Attributes:
        name: the app's name.
        app: its estate entry.
        release: its release block.
        version: the version to put on its hosts.
        hosts: the app's hosts in the region, in the estate's order (the canary first).
        rollback: a ``--rollback`` run (the version before the last release).
        change: ``binary`` (a version: ``releases/`` and ``current``) or ``config`` (a
            configuration-only change, ``--config``: ``configs/`` and ``config``; the
            binary stays, and ``version`` names the configuration bundle).
    """

    region: str
    name: str
    app: App
    release: AppRelease
    version: str
    hosts: tuple[str, ...]
    rollback: bool = False
    change: Literal["binary", "config"] = "binary"

    @property
    def store(self) -> str:
        """Where the host keeps this kind of change: ``releases`` or ``configs``."""
        return "configs" if self.change == "config" else "releases"

    @property
    def link(self) -> str:
        """The link that names the one in force: ``current`` or ``config``."""
        return layout.link_of(self.store)

    @property
    def artifact(self) -> str:
        """Its name in the artifact repository and the ledger's manifest: the app's, or
        ``<app>.config`` for its configuration bundles."""
        return f"{self.name}.config" if self.change == "config" else self.name

    @property
    def probe_key(self) -> str:
        """The health answer's field that says which one runs: ``version`` or ``config``."""
        return "config" if self.change == "config" else "version"

    @property
    def base(self) -> str:
        """``emea-oms@5.0.4`` (``emea-oms.config@cfg-2``): the release, whatever the attempt."""
        return f"{self.artifact}@{self.version}"

    def target(self, host: str) -> str:
        return f"{self.name}@{host}"

    def host_of(self, target: str) -> str:
        return target.split("@", 1)[1]

    def batches(self) -> list[list[str]]:
        return layout.batches_of(self.hosts, self.release.batches)


def releasable(estate: Estate, region: str) -> list[str]:
    """The apps of ``region`` that have a release block."""
    return sorted(n for n, a in estate.apps_in(region).items() if a.release is not None)


def release_order(
    estate: Estate,
    region: str,
    apps: list[tuple[str, str | None]],
    *,
    rollback: bool = False,
) -> list[tuple[str, str | None]]:
    """Several apps of one region, each with its version, in dependency order.

    An app comes after every app it depends on (``depends_on``, the start order of start
    of day); apps of the same tier keep the order given. A rollback goes the other way:
    the dependents first.

    Raises:
        UnknownNameError: an app that is not releasable in the region, listing those that are.
        ReleaseError: an app named twice.

    Example:
        >>> release_order(estate, "apac", [("apac-oms-001", "5.0.4"), ("apac-risk-001", "3.14.2")])
        ... # doctest: +SKIP
        [('apac-risk-001', '3.14.2'), ('apac-oms-001', '5.0.4')]
    """
    known = releasable(estate, region)
    names = [name for name, _ in apps]
    for name in names:
        if name not in known:
            raise UnknownNameError(f"releasable app in {region}", name, known)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ReleaseError(f"{', '.join(twice)}: named more than once in one release")
    level = {name: i for i, tier in enumerate(estate.app_tiers(region)) for name in tier}
    order = sorted(apps, key=lambda pair: (level.get(pair[0], 0), names.index(pair[0])))
    return order[::-1] if rollback else order


def resolve(estate: Estate, region: str, params: Any, ledger: Any = None) -> Target:
    """The release the parameters ask for.

    Raises:
        ReleaseError: no app named, or no version (nor, for ``--rollback``, a previous one).
        UnknownNameError: an app that is not releasable in the region, listing those that are.
    """
    apps = releasable(estate, region)
    name = getattr(params, "app", None)
    if not name:
        raise ReleaseError(
            f"a release needs --app; releasable apps in {region}: {', '.join(apps) or 'none'}"
        )
    if name not in apps:
        raise UnknownNameError(f"releasable app in {region}", name, apps)
    app = estate.app(name)
    assert app.release is not None
    rollback = bool(getattr(params, "rollback", False))
    version = getattr(params, "version", None)
    config = getattr(params, "config", None)
    if config:
        if version:
            raise ReleaseError(
                "--config is a configuration-only change (the binary stays): give --version "
                "or --config, not both"
            )
        if rollback:
            before = records.previous_version(ledger, region, f"{name}.config") if ledger else None
            hint = f" (the one before: --config {before})" if before else ""
            raise ReleaseError(
                "--rollback returns the binary; to put a configuration back, release it with "
                f"--config{hint}"
            )
        try:
            layout.check_version(config)
        except ValueError as exc:
            raise ReleaseError(f"--config: {exc}") from None
        hosts = tuple(h for h in app.hosts if h in estate.hosts_in(region))
        return Target(region, name, app, app.release, config, hosts, change="config")
    if rollback:
        if version:
            raise ReleaseError("--rollback goes back to the version before; do not give --version")
        version = records.previous_version(ledger, region, name) if ledger is not None else None
        if not version:
            raise ReleaseError(
                f"{name} in {region}: the ledger records no release before the current one, "
                "so there is nothing to roll back to"
            )
    if not version:
        raise ReleaseError(
            f"a release of {name} needs --version (or --config for a configuration-only change)"
        )
    try:
        layout.check_version(version)
    except ValueError as exc:
        raise ReleaseError(str(exc)) from None
    hosts = tuple(h for h in app.hosts if h in estate.hosts_in(region))
    return Target(region, name, app, app.release, version, hosts, rollback)


def key_version(params: Any, estate: Estate, ledger: Any) -> str:
    """The run's idempotency scope: ``app@version#m<seq>/a<attempt>``.

    ``m<seq>`` is the ledger position of the region's last verified release of the app
    (0: none yet): releasing 5.0.4, then 5.0.5, then 5.0.4 again are three releases, while
    every re-run of a stopped release, before it is verified, shares its keys. ``a<n>``
    counts the rollbacks of that release: a retry after one gets keys of its own.
    """
    t = resolve(estate, params.region.lower(), params, ledger)
    found = records.manifest_entries(ledger, t.region, t.artifact)
    base = f"{t.base}#m{found[-1].seq if found else 0}"
    return f"{base}/a{records.attempts(ledger, t.region, base) + 1}"


def now(estate: Estate) -> datetime:
    """The clock release windows are judged by: the rehearsal clock, for a lab estate only.

    Raises:
        ReleaseError: ``OPENBELL_REHEARSAL_AT`` set for an estate that is not a lab.
    """
    from openbell.settings import get_settings

    at = get_settings().rehearsal_at
    if at is None:
        return datetime.now(UTC)
    if estate.environment != "lab":
        raise ReleaseError(
            f"OPENBELL_REHEARSAL_AT is set, but {estate.source or 'the estate'} is a "
            f"{estate.environment} estate: a rehearsal clock is for the lab only; unset it"
        )
    if at.tzinfo is None:
        raise ReleaseError("OPENBELL_REHEARSAL_AT needs a zone, e.g. 2026-12-02T21:00:00+00:00")
    return at.astimezone(UTC)
