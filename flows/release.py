"""Release: a new version of an app onto its hosts in a region, canary first, with a way back.

``openbell run release --region R --app APP --version V --change CHG --reason ...``
(``openbell plan release ...`` first). Outside trading hours only: refused while any
venue of the region trades or inside a freeze, and when the release and its rollback
would not fit before the next start of day (``--emergency`` overrides the window with two
approvers, flagged for review). The artifact's sha256 and signature are checked before
any host is touched; every host is staged and verified before any switches; the
release's approver group (not the requester) approves exactly this artifact, version,
hosts and batches; the canary is switched and soaked, then (after a second decision,
shown the canary's evidence, where the app's ``continue_after_canary`` asks for one) the
rest in batches; every host of the region is attested at the end. A failed step after the
first switch rolls back the hosts this release switched, and only those, to the release
the ledger recorded for each before (at once, or where the estate says ``rollback:
decision`` after the approver group chose rollback over hold; no answer rolls back). A host
whose rollback cannot finish is quarantined in the ledger, and start of day fails on it
until it is rolled back or cleared. ``--rollback`` returns the region to the version
before its last release.

Re-running a stopped release picks up where it stopped: keys per (release, region, app,
version, host, step), and every host step reads the host before acting. A run killed
during a rollback is resumed as the rollback.
"""

from __future__ import annotations

from pydantic import Field

from openbell.flows.runbook import Runbook, RunParams, Step
from openbell.runbooks.schema import ReleasePolicy
from openbell.tasks.release import steps as r
from openbell.tasks.release.target import key_version


class ReleaseParams(RunParams):
    """A release's parameters: what goes where, under which change, and why."""

    app: str | None = Field(default=None, description="the app to release, e.g. emea-oms")
    version: str | None = Field(default=None, description="the version to put on its hosts")
    config: str | None = Field(
        default=None,
        description="a configuration-only change: the configuration bundle to put in force "
        "(its own artifact; the binary stays)",
    )
    change: str | None = Field(default=None, description="the change reference, e.g. CHG-1234")
    reason: str | None = Field(default=None, description="why, for the approvers and the record")
    rollback: bool = Field(
        default=False, description="return the region to the version before its last release"
    )
    emergency: bool = Field(
        default=False,
        description="outside the window: two approvers, flagged for review",
    )


RELEASE = Runbook(
    key="release",
    title="release",
    flow_name="release",
    params=ReleaseParams,
    policy=ReleasePolicy,
    session_gate=False,
    lock=True,
    key_version=key_version,
    signoff="per host: version before and after, sha256 on the host; report, summary to Slack",
    steps=(
        Step("window", "Release window open", r.check_window, plan=r.plan_window, gate=True),
        Step(
            "artifact",
            "Artifact checksum and signature",
            r.verify_artifact,
            plan=r.plan_artifact,
            after=("window",),
            gate=True,
        ),
        Step(
            "checks",
            "Pre-release checks of the app's kind",
            r.run_checks,
            plan=r.plan_checks,
            after=("artifact",),
            gate=True,
        ),
        Step(
            "preflight",
            "Hosts ready, way back intact",
            r.preflight,
            plan=r.plan_preflight,
            after=("checks",),
            gate=True,
        ),
        Step(
            "stage",
            "Staged and verified on every host",
            r.stage,
            plan=r.plan_stage,
            after=("preflight",),
            gate=True,
            side_effects=True,
        ),
        Step(
            "canary",
            "Canary switched",
            r.canary,
            plan=r.plan_canary,
            after=("stage",),
            gate=True,
            side_effects=True,
            changes=r.hosts_to_switch,
            approval="always",
            recover=True,
        ),
        Step(
            "soak",
            "Canary soaked",
            r.soak,
            plan=r.plan_soak,
            after=("canary",),
            gate=True,
            recover=True,
        ),
        Step(
            "rollout",
            "Rolled out in batches",
            r.rollout,
            plan=r.plan_rollout,
            after=("soak",),
            gate=True,
            side_effects=True,
            changes=r.rest_to_switch,  # asks only where the app has continue_after_canary
            approval="always",
            recover=True,
        ),
        Step(
            "attest",
            "Every host of the region attested",
            r.attest,
            plan=r.plan_attest,
            after=("rollout",),
            gate=True,
            recover=True,
        ),
        Step(
            "finalize",
            "Manifest recorded, old releases pruned",
            r.finalize,
            plan=r.plan_finalize,
            after=("attest",),
        ),
    ),
    recovery=Step(
        "rollback",
        "Rolled back",
        r.rollback,
        plan=r.plan_rollback,
        changes=r.hosts_to_roll_back,  # asks only where the estate says rollback: decision
        approval="always",
    ),
)
