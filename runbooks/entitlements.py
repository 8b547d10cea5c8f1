"""Entitlements: who may plan, run, approve, cancel, audit or report which runbook where.

The rules live in YAML next to the estate (see ``runbooks/entitlements.yaml``)::

    version: 1
    groups:                        # optional; groups used only by these rules
      emea-oncall: {members: [bob, frank]}
    rules:
      - allow: [plan, run]         # or deny: [...]; actions from ACTIONS
        who: group:emea-oncall     # a person, group:NAME, or "*" (one or a list)
        runbooks: [sod, eod]       # runbook keys (openbell.catalog), or "*"
        regions: [emea]            # the estate's regions, or "*"
        why: emea on-call runs start and end of day   # optional, shown in reasons

Semantics, in full:

* People and groups are the estate's (``Estate.people``, ``Estate.groups``), plus the
  groups this file defines, whose members must be estate people. ``*`` as a subject means
  every person in the estate; an identity the estate does not know matches no rule.
* Whoever asks is first resolved to a person: the person's key or any of their
  ``Person.identities``. Rules name people, never identities.
* A rule matches a question (person, action, runbook, region) when the person is one of its
  subjects and the action, runbook and region are each listed (or ``*``).
* **Default deny; an explicit deny wins over an allow.** If any matching rule denies, the
  answer is no (the first such deny in the file is named); else if any allows, yes (the
  first such allow is named); else no: "no rule allows it (default deny)".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, Field, ValidationError, model_validator

from openbell import catalog
from openbell.errors import EstateError, NotEntitledError, UnknownNameError
from openbell.errors import format_key_path as _format_path
from openbell.runbooks.schema import Estate, Group, Model
from openbell.runbooks.yamlio import line_of as _line_of
from openbell.runbooks.yamlio import parse_key_path as _parse_path
from openbell.runbooks.yamlio import read_yaml

log = logging.getLogger(__name__)

#: What a rule can allow or deny.
ACTIONS: tuple[str, ...] = (
    "plan",
    "run",
    "approve",
    "cancel",
    "audit",
    "report",
    "deploy",
    "run-unpinned",
)
#: Every person, runbook or region.
ANY = "*"
#: How a rule names a group among its subjects: ``group:emea-approvers``.
GROUP_PREFIX = "group:"
#: The lab's rules, shipped next to the lab estate.
LAB_ENTITLEMENTS = Path(__file__).resolve().parent / "entitlements.yaml"


def _one_or_many(value: Any) -> Any:
    """Accept ``who: alice`` as well as ``who: [alice, bob]``."""
    return [value] if isinstance(value, str) else value


Names = Annotated[list[str], BeforeValidator(_one_or_many), Field(min_length=1)]


class Rule(Model):
    """One allow or deny: actions on runbooks in regions, for some subjects."""

    allow: Names | None = Field(default=None, description="actions this rule allows")
    deny: Names | None = Field(default=None, description="actions this rule denies")
    who: Names = Field(description="persons, group:NAME, or '*'")
    runbooks: Names = Field(description="runbook names, or '*'")
    regions: Names = Field(description="region names, or '*'")
    why: str = Field(default="", description="shown in every decision this rule makes")

    @model_validator(mode="after")
    def _one_effect(self) -> Rule:
        if (self.allow is None) == (self.deny is None):
            raise ValueError("give exactly one of allow or deny (the actions it allows or denies)")
        return self

    @property
    def effect(self) -> Literal["allow", "deny"]:
        """``allow`` or ``deny``."""
        return "allow" if self.allow is not None else "deny"

    @property
    def actions(self) -> list[str]:
        """The actions this rule allows or denies."""
        return self.allow if self.allow is not None else (self.deny or [])

    def describe(self) -> str:
        """The rule in one line, e.g. ``allow run sod, eod in emea to group:emea-oncall``."""
        return (
            f"{self.effect} {', '.join(self.actions)} {', '.join(self.runbooks)}"
            f" in {', '.join(self.regions)} to {', '.join(self.who)}"
        )


#: What a service account may never do for someone else: a decision counts only from the
#: person's own account or key (four eyes means two people, not one scheduler).
DECISIONS: frozenset[str] = frozenset({"approve"})


class ServiceAccount(Model):
    """An operating-system account that may name someone else with ``--as`` (a scheduler).

    What it does is recorded as the account acting for that person, never as the person.
    """

    acts_for: Names = Field(description="persons, group:NAME, or '*' it may act for")
    actions: Names = Field(description="the actions it may take for them (never approve)")
    why: str = Field(default="", description="why this account acts for others")

    @model_validator(mode="after")
    def _no_decisions(self) -> ServiceAccount:
        bad = sorted(DECISIONS & set(self.actions))
        if bad:
            raise ValueError(
                f"a service account may not {', '.join(bad)} for others: a decision counts "
                "only from the person's own account or key; valid actions: "
                + ", ".join(a for a in ACTIONS if a not in DECISIONS)
            )
        return self


class IdentityPolicy(Model):
    """How a command proves who runs it (see :mod:`openbell.runbooks.identity`)."""

    service_accounts: dict[str, ServiceAccount] = Field(
        default_factory=dict, description="OS account -> whom it may act for, and how"
    )
    allowed_signers: str | None = Field(
        default=None,
        description="an ssh allowed_signers file: principals are persons, keys are theirs",
    )


class EntitlementsFile(Model):
    """The shape of an entitlements YAML: extra groups, the rules, and how identity is proven."""

    version: Literal[1] = 1
    groups: dict[str, Group] = Field(default_factory=dict)
    rules: list[Rule] = Field(default_factory=list)
    identity: IdentityPolicy = Field(default_factory=IdentityPolicy)


class Decision(Model):
    """The answer to "may WHO do ACTION on RUNBOOK in REGION?".

    Attributes:
        allowed: the answer.
        rule: ``file:line`` of the rule that decided, or None under default deny.
        reason: a sentence naming who, what, and the rule or "(default deny)".
        person: the person the identity resolved to, or None if the estate does not know it.
    """

    allowed: bool
    rule: str | None
    reason: str
    person: str | None = None


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A rule with its subjects expanded to persons, ready to match."""

    rule: Rule
    where: str
    persons: frozenset[str]
    actions: frozenset[str]
    runbooks: frozenset[str]
    regions: frozenset[str]

    def matches(self, person: str, action: str, runbook: str, region: str) -> bool:
        return (
            person in self.persons
            and action in self.actions
            and (ANY in self.runbooks or runbook in self.runbooks)
            and (ANY in self.regions or region in self.regions)
        )


class Entitlements:
    """Rules over an estate's people and groups, ready to answer :meth:`decide`.

    Built by :func:`load_entitlements`; building one directly validates every name too.

    Args:
        spec: the parsed rules.
        estate: the estate whose people, groups and regions the rules name.
        source: the file the rules came from (used in ``file:line`` references).
        lines: the 1-based line of each rule in ``source``.

    Raises:
        EstateError: a rule names something that does not exist (``UnknownNameError``
            lists the valid names), or two people claim the same identity. ``key_path``
            is set; ``file`` and ``line`` only when the problem is in the estate file.
    """

    def __init__(
        self,
        spec: EntitlementsFile,
        estate: Estate,
        *,
        source: str | None = None,
        lines: Sequence[int | None] = (),
    ) -> None:
        self._spec = spec
        self._estate = estate
        self._source = source
        self._identities = identity_index(estate)
        self._groups = _all_groups(spec, estate)
        self._rules = tuple(
            _compile(i, rule, estate, self._groups, source, lines)
            for i, rule in enumerate(spec.rules)
        )
        for account, entry in spec.identity.service_accounts.items():
            where = f"identity.service_accounts.{account}"
            _check_names(entry.actions, ACTIONS, "action", f"{where}.actions")
            for j, subject in enumerate(entry.acts_for):
                if subject == ANY:
                    continue
                if subject.startswith(GROUP_PREFIX):
                    if subject[len(GROUP_PREFIX) :] not in self._groups:
                        raise UnknownNameError(
                            "group",
                            subject[len(GROUP_PREFIX) :],
                            list(self._groups),
                            key_path=f"{where}.acts_for[{j}]",
                        )
                    continue
                _check_person(subject, estate, self._groups, f"{where}.acts_for[{j}]")

    @property
    def estate(self) -> Estate:
        """The estate the rules were validated against."""
        return self._estate

    @property
    def source(self) -> str | None:
        """The file the rules came from, as it was given."""
        return self._source

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The rules, in file order."""
        return tuple(c.rule for c in self._rules)

    @property
    def groups(self) -> dict[str, Group]:
        """The groups this file defines (the estate's are in ``estate.groups``)."""
        return dict(self._spec.groups)

    @property
    def identity(self) -> IdentityPolicy:
        """How a command proves who runs it: service accounts and the signers' keys."""
        return self._spec.identity

    def may_act_for(self, account: str, person: str, action: str) -> ServiceAccount | None:
        """The service-account entry letting OS ``account`` do ``action`` for ``person``."""
        entry = self._spec.identity.service_accounts.get(account)
        if entry is None or action not in entry.actions or action in DECISIONS:
            return None
        persons: set[str] = set()
        for subject in entry.acts_for:
            if subject == ANY:
                persons |= set(self._estate.people)
            elif subject.startswith(GROUP_PREFIX):
                persons |= self._groups.get(subject[len(GROUP_PREFIX) :], frozenset())
            else:
                persons.add(subject)
        return entry if person in persons else None

    def person_of(self, identity: str) -> str | None:
        """The person behind an identity (their key or one of their identities), or None."""
        return self._identities.get(identity)

    def members(self, group: str) -> frozenset[str]:
        """The persons in a group of the estate or of this file.

        Raises:
            UnknownNameError: no such group; lists the valid ones.
        """
        if group not in self._groups:
            raise UnknownNameError("group", group, list(self._groups))
        return self._groups[group]

    def decide(self, who: str, action: str, runbook: str, region: str) -> Decision:
        """May ``who`` do ``action`` on ``runbook`` in ``region``?

        Args:
            who: a person's key or any of their identities.
            action: one of :data:`ACTIONS`.
            runbook: a runbook key (:func:`openbell.catalog.keys`).
            region: a region of the estate (case-insensitive).

        Returns:
            The decision, with the rule that made it (``file:line``) and a reason.

        Raises:
            UnknownNameError: the action, runbook or region does not exist.

        Example:
            >>> ents.decide("erin", "run", "sod", "amer").reason  # doctest: +SKIP
            'erin may not run sod in amer: denied by runbooks/entitlements.yaml:64: ...'
        """
        region = self._check(action, runbook, region)
        what = f"{action} {runbook} in {region}"
        person = self._identities.get(who)
        if person is None:
            return Decision(
                allowed=False,
                rule=None,
                reason=f"{who!r} may not {what}: unknown identity, "
                "no rule allows it (default deny)",
            )
        subject = person if who == person else f"{person} (as {who!r})"
        matching = [c for c in self._rules if c.matches(person, action, runbook, region)]
        deciding = next((c for c in matching if c.rule.effect == "deny"), None)
        deciding = deciding or next(iter(matching), None)
        if deciding is None:
            return Decision(
                allowed=False,
                rule=None,
                person=person,
                reason=f"{subject} may not {what}: no rule allows it (default deny)",
            )
        allowed = deciding.rule.effect == "allow"
        verdict = f"may {what}: allowed by" if allowed else f"may not {what}: denied by"
        return Decision(
            allowed=allowed,
            rule=deciding.where,
            person=person,
            reason=f"{subject} {verdict} {deciding.where}: "
            f"{deciding.rule.why or deciding.rule.describe()}",
        )

    def require(self, who: str, action: str, runbook: str, region: str) -> Decision:
        """Like :meth:`decide`, but a "no" raises.

        Raises:
            NotEntitledError: with the decision's reason and rule.
            UnknownNameError: the action, runbook or region does not exist.
        """
        decision = self.decide(who, action, runbook, region)
        if not decision.allowed:
            raise NotEntitledError(
                decision.reason,
                who=who,
                action=action,
                runbook=runbook,
                region=region.lower(),
                rule=decision.rule,
            )
        return decision

    def people_allowed(self, action: str, runbook: str, region: str) -> list[str]:
        """The persons who may do ``action`` on ``runbook`` in ``region``, sorted."""
        return sorted(
            p for p in self._estate.people if self.decide(p, action, runbook, region).allowed
        )

    def _check(self, action: str, runbook: str, region: str) -> str:
        if action not in ACTIONS:
            raise UnknownNameError("action", action, ACTIONS)
        if runbook not in catalog.runbooks():
            raise UnknownNameError("runbook", runbook, catalog.names())
        key = region.lower()
        if key not in self._estate.regions:
            raise UnknownNameError("region", region, list(self._estate.regions))
        return key

    def __repr__(self) -> str:
        return f"Entitlements(source={self._source!r}, rules={len(self._rules)})"


def identity_index(estate: Estate) -> dict[str, str]:
    """Map every identity of every person (and each person's own key) to that person.

    Raises:
        EstateError: two people claim the same identity, or an identity is another
            person's key; placed in the estate file when it is known.
    """
    index = {name: name for name in estate.people}
    if estate.slack is not None:  # slack:<team or org>/<user>, as the estate maps them
        for user, name in estate.slack.users.items():
            index[f"slack:{user}"] = name
    for name, person in estate.people.items():
        for i, identity in enumerate(person.identities):
            owner = index.setdefault(identity, name)
            if owner != name:
                key_path = f"people.{name}.identities[{i}]"
                raise EstateError(
                    f"identity {identity!r} already belongs to {owner!r}; "
                    "an identity must name exactly one person",
                    file=estate.source,
                    line=_line_in(estate.source, key_path),
                    key_path=key_path,
                )
    return index


def resolve_person(estate: Estate, identity: str) -> str | None:
    """The person behind ``identity`` in ``estate``, or None if nobody claims it.

    Example:
        >>> resolve_person(estate, "bob.okafor")  # doctest: +SKIP
        'bob'
    """
    return identity_index(estate).get(identity)


def entitlements_for(estate: Estate) -> Entitlements:
    """The entitlements the estate names (``entitlements:`` in its YAML).

    Raises:
        EstateError: the estate names none (every action would be refused), or the file
            is invalid (file, line and key path given).
    """
    if estate.entitlements is None:
        raise EstateError(
            "names no entitlements file, so every action is refused (default deny); "
            "add `entitlements: entitlements.yaml` (see runbooks/entitlements.yaml)",
            file=estate.source,
            key_path="entitlements",
        )
    return load_entitlements(estate.entitlements, estate)


def load_entitlements(
    path: str | Path, estate: Estate, *, shown: str | None = None
) -> Entitlements:
    """Read and validate an entitlements file against an estate.

    Args:
        path: the YAML file, e.g. :data:`LAB_ENTITLEMENTS`.
        estate: the estate whose people, groups and regions the rules name.
        shown: the name rules and errors give the file (default ``path``): a pinned
            copy is read from a temporary file but named as the file it was pinned from.

    Raises:
        EstateError: with ``file``, ``line`` and ``key_path`` set where they are known;
            ``UnknownNameError`` (a subclass) lists the valid names.

    Example:
        >>> ents = load_entitlements("runbooks/entitlements.yaml", load_estate())  # doctest: +SKIP
        >>> ents.decide("bob", "run", "sod", "emea").allowed  # doctest: +SKIP
        True
    """
    file = Path(path)
    shown = shown or str(file)
    doc = read_yaml(file)
    root, data = doc.root, doc.data
    if not isinstance(data, dict):
        raise EstateError("expected a mapping at the top (version:, groups:, rules:)", file=shown)
    try:
        spec = EntitlementsFile.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc, root, shown) from None
    lines = [_line_of(root, ["rules", i]) for i in range(len(spec.rules))]
    try:
        entitlements = Entitlements(spec, estate, source=shown, lines=lines)
    except EstateError as exc:
        if exc.file is not None:  # a problem of the estate file, already placed there
            raise
        loc = _parse_path(exc.key_path) if exc.key_path else []
        raise exc.located(shown, _line_of(root, loc)) from None
    log.debug("loaded %d entitlement rules from %s", len(spec.rules), shown)
    return entitlements


# ---- validation --------------------------------------------------------------------------


def _all_groups(spec: EntitlementsFile, estate: Estate) -> dict[str, frozenset[str]]:
    groups = {name: frozenset(g.members) for name, g in estate.groups.items()}
    for name, group in spec.groups.items():
        if name in estate.groups:
            raise EstateError(
                f"group {name!r} is already defined in the estate; pick another name",
                key_path=f"groups.{name}",
            )
        for i, member in enumerate(group.members):
            _check_person(member, estate, groups, f"groups.{name}.members[{i}]")
        groups[name] = frozenset(group.members)
    return groups


def _check_person(
    name: str, estate: Estate, groups: dict[str, frozenset[str]], key_path: str
) -> None:
    if name in estate.people:
        return
    owner = next((p for p, person in estate.people.items() if name in person.identities), None)
    if owner is not None:
        raise EstateError(
            f"{name!r} is an identity of {owner!r}; name the person", key_path=key_path
        )
    if name in groups:
        raise EstateError(f"{name!r} is a group; write '{GROUP_PREFIX}{name}'", key_path=key_path)
    raise UnknownNameError("person", name, list(estate.people), key_path=key_path)


def _check_names(values: list[str], valid: Sequence[str], kind: str, key_path: str) -> None:
    for j, value in enumerate(values):
        if value == ANY and len(values) > 1:
            raise EstateError(
                f"'*' already means every {kind}; give '*' or names, not both",
                key_path=f"{key_path}[{j}]",
            )
        if value != ANY and value not in valid:
            choices = [ANY, *valid] if kind != "action" else list(valid)
            raise UnknownNameError(kind, value, choices, key_path=f"{key_path}[{j}]")


def _compile(
    i: int,
    rule: Rule,
    estate: Estate,
    groups: dict[str, frozenset[str]],
    source: str | None,
    lines: Sequence[int | None],
) -> _Compiled:
    base = f"rules[{i}]"
    _check_names(rule.actions, ACTIONS, "action", f"{base}.{rule.effect}")
    _check_names(rule.runbooks, catalog.names(), "runbook", f"{base}.runbooks")
    _check_names(rule.regions, list(estate.regions), "region", f"{base}.regions")
    persons: set[str] = set()
    for j, subject in enumerate(rule.who):
        key_path = f"{base}.who[{j}]"
        if subject == ANY:
            if len(rule.who) > 1:
                raise EstateError(
                    "'*' already means every person; give '*' or names, not both",
                    key_path=key_path,
                )
            persons.update(estate.people)
        elif subject.startswith(GROUP_PREFIX):
            group = subject.removeprefix(GROUP_PREFIX)
            if group not in groups:
                raise UnknownNameError("group", group, list(groups), key_path=key_path)
            persons.update(groups[group])
        else:
            _check_person(subject, estate, groups, key_path)
            persons.add(subject)
    line = lines[i] if i < len(lines) else None
    where = f"{source}:{line}" if source and line else f"{source or 'rules'}[{i}]"
    return _Compiled(
        rule=rule,
        where=where,
        persons=frozenset(persons),
        actions=frozenset(rule.actions),
        runbooks=frozenset(rule.runbooks),
        regions=frozenset(rule.regions),
    )


# ---- error placement ---------------------------------------------------------------------


def _explain(exc: ValidationError, root: yaml.Node | None, shown: str) -> EstateError:
    """The first pydantic error as an EstateError at its file, line and key path.

    An unknown key comes first: it usually explains a missing one (``region:`` for
    ``regions:``).
    """
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    err = errors[0]
    loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = f"unknown key {loc[-1]!r} (expected one of: {', '.join(_keys_at(loc[:-1]))})"
    elif err["type"] == "missing":
        msg = "required key is missing"
    elif err["type"] == "too_short":
        msg = "needs at least one entry (names, or '*' for all)"
    elif "input" in err and not isinstance(err["input"], dict | list):
        msg = f"{msg} (got {err['input']!r})"
    more = len(errors) - 1
    if more:
        msg += f" (and {more} more error{'s' if more > 1 else ''})"
    line_loc = loc[:-1] if err["type"] == "missing" else loc
    return EstateError(msg, file=shown, line=_line_of(root, line_loc), key_path=_format_path(loc))


def _keys_at(loc: list[Any]) -> list[str]:
    model: type[BaseModel] = EntitlementsFile
    if loc[:1] == ["rules"] and len(loc) == 2:
        model = Rule
    elif loc[:1] == ["groups"] and len(loc) == 2:
        model = Group
    return list(model.model_fields)


def _line_in(file: str | None, key_path: str) -> int | None:
    """The line of ``key_path`` in a YAML file, or None if it cannot be read."""
    if not file:
        return None
    try:
        root = read_yaml(file).root
    except EstateError:
        return None
    return _line_of(root, _parse_path(key_path))
