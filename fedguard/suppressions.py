"""Findings the client has checked and accepts: ``--ignore RULE[:LAYER]``.

An honest design can trip a rule (a model that shares one weight vector across units on purpose reads as an
imprint layer, FG301), and a gate that blocks on it every round leaves its user no way on but to stop checking.
As bandit's ``--skip`` and pip-audit's ``--ignore-vuln`` do, ``--ignore`` names what to accept: a rule, by its id
(``FG301``) or name (``imprint-identical-rows``), anywhere or in one layer (``FG301:features.0``: that layer and
the parameters under it). An ignored finding is not dropped: reports list it apart as suppressed (SARIF: a result
with an external suppression, SARIF's record of an accepted finding), and the verdict and exit code follow the
findings left. The layer is scoped so that accepting one layer's pattern does not hide the same pattern planted in
another layer next round; an ``--ignore`` that matched nothing is named (:func:`unmatched`), as a stale entry
should be dropped or corrected.

FG001 cannot be ignored: a file that would run code when unpickled was refused unread, so none of its weights
were checked and no verdict but malicious says anything true about it.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping, Sequence

from fedguard.errors import InputError, did_you_mean
from fedguard.types import Finding, Rule

#: Rules that cannot be ignored, and why (the end of the error message).
UNIGNORABLE = {
    "FG001": "a file it reports would run code when loaded and is refused unread, so no weight in it would be "
             "checked; save the model's state_dict with torch.save(model.state_dict(), path) or as .safetensors and "
             "inspect that",
}


@dataclasses.dataclass(frozen=True)
class Ignore:
    """One accepted rule, anywhere (``layer`` None) or in ``layer`` and the parameters under it."""

    rule_id: str
    layer: str | None = None

    def __str__(self) -> str:
        return self.rule_id if self.layer is None else f"{self.rule_id}:{self.layer}"

    @classmethod
    def from_text(cls, text: str) -> "Ignore":
        """``RULE`` or ``RULE:LAYER`` as written (the rule not looked up: :func:`parse_ignores` does)."""
        rule, sep, layer = text.strip().partition(":")
        return cls(rule.strip(), layer.strip() if sep else None)

    def matches(self, finding: Finding) -> bool:
        if finding.rule_id != self.rule_id:
            return False
        if self.layer is None:
            return True
        return finding.layer is not None and (finding.layer == self.layer or finding.layer.startswith(self.layer + "."))


def parse_ignores(specs: Iterable[str | Ignore] | None, rules: Mapping[str, Rule]) -> tuple[Ignore, ...]:
    """``RULE`` or ``RULE:LAYER`` texts (or :class:`Ignore`) as :class:`Ignore`; a rule is its id in any case or its
    name. An unknown rule, an empty layer or FG001 is an InputError."""
    if specs is None:
        return ()
    if isinstance(specs, (str, Ignore)):
        specs = [specs]
    by_name = {rule.name.lower(): rule_id for rule_id, rule in rules.items()}
    by_id = {rule_id.lower(): rule_id for rule_id in rules}
    parsed: dict[Ignore, None] = {}
    for spec in specs:
        if isinstance(spec, str):
            spec = Ignore.from_text(spec)
        elif not isinstance(spec, Ignore):
            raise InputError(f"--ignore {spec!r:.40} is not text; give RULE or RULE:LAYER, e.g. FG301 or FG301:fc1")
        rule_text, layer = spec.rule_id.strip(), spec.layer
        rule_id = by_id.get(rule_text.lower()) or by_name.get(rule_text.lower())
        if rule_id is None:
            raise InputError(f"--ignore {spec}: unknown rule {rule_text!r}"
                             f"{did_you_mean(rule_text, [*rules, *(r.name for r in rules.values())])}; "
                             "give a rule id or name as `fedguard rules` lists them, e.g. FG301 or FG301:fc1")  # fmt: skip
        if layer == "":
            raise InputError(f"--ignore {spec}: the layer after ':' is empty; name the layer as the report does "
                             f"(e.g. {rule_id}:fc1), or give {rule_id} alone to ignore it in every layer")  # fmt: skip
        if rule_id in UNIGNORABLE:
            raise InputError(f"--ignore {spec}: {rule_id} cannot be ignored: {UNIGNORABLE[rule_id]}")
        parsed[Ignore(rule_id, layer)] = None
    return tuple(parsed)


def split_findings(findings: Iterable[Finding], ignores: Sequence[Ignore]) -> tuple[list[Finding], list[Finding]]:
    """``findings`` as (kept, suppressed): a finding some entry of ``ignores`` matches is suppressed."""
    kept: list[Finding] = []
    suppressed: list[Finding] = []
    for finding in findings:
        (suppressed if any(ignore.matches(finding) for ignore in ignores) else kept).append(finding)
    return kept, suppressed


def recorded_ignores(report) -> list[Ignore]:
    """The ``--ignore`` entries an inspection report's config records (none for a report built without them)."""
    return [Ignore.from_text(str(text)) for text in report.config.get("ignore") or ()]


def unmatched(ignores: Sequence[Ignore], suppressed: Iterable[Finding]) -> list[Ignore]:
    """The entries of ``ignores`` that matched none of ``suppressed`` (stale or misspelt layers)."""
    suppressed = list(suppressed)
    return [ignore for ignore in ignores if not any(ignore.matches(f) for f in suppressed)]


def unmatched_in(report) -> list[Ignore]:
    """The ``--ignore`` entries an inspection report records that matched none of its accepted findings."""
    return unmatched(recorded_ignores(report), report.suppressed)
