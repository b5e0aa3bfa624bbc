"""SARIF 2.1.0 for CI dashboards (GitHub code scanning, Azure DevOps, DefectDojo).

One run: ``tool.driver`` lists every fedguard rule as a ``reportingDescriptor``
(help text in text and markdown, paper in ``properties.reference``, where to
read it in ``helpUri``); each finding is a ``result`` whose level follows its
severity (critical/high -> ``error``, medium -> ``warning``, low/info ->
``note``), located at the model file (``physicalLocation``, at line 1: a
model file has no lines, and GitHub code scanning places a result only with
``region.startLine``, its rule GH1003) and, when it has one, the layer
(``logicalLocation`` of kind ``module``). The file itself is the run's only
``artifact``, with its SHA-256; a relative path is relative to the
invocation's ``workingDirectory``. A result's ``partialFingerprints`` are its
rule, file path and layer, not the file's contents, so that a finding that
stays from one round's model to the next stays one alert; so does a finding
dismissed on GitHub when the same rule fires in the same layer of a later
round's model (accept findings with ``--ignore`` instead, which the reports
list apart each round). Output validates
against the OASIS SARIF 2.1.0 schema (errata 01).
Sample output (abridged)::

    {
      "$schema": "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json",
      "version": "2.1.0",
      "runs": [{
        "tool": {"driver": {"name": "fedguard", "version": "0.1.0",
                            "rules": [{"id": "FG001", "name": "code-importing-pickle", ...}, ...]}},
        "invocations": [{"executionSuccessful": true, "commandLine": "fedguard inspect global.pt --format sarif",
                         "arguments": ["inspect", "global.pt", "--format", "sarif"], "properties": {...}}],
        "artifacts": [{"location": {"uri": "global.pt"}, "hashes": {"sha-256": "6f1c..."}}],
        "results": [{
          "ruleId": "FG101", "ruleIndex": 3, "level": "error",
          "message": {"text": "Averaging (constant-weight) rows in imprint.0: ..."},
          "locations": [{
            "physicalLocation": {"artifactLocation": {"uri": "global.pt", "index": 0}, "region": {"startLine": 1}},
            "logicalLocations": [{"name": "imprint.0", "fullyQualifiedName": "imprint.0", "kind": "module"}]}],
          "properties": {"severity": "high", "confidence": "high", "evidence": {...}}
        }]
      }]
    }
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import Any, ClassVar, Mapping
from urllib.parse import quote

from fedguard.suppressions import recorded_ignores
from fedguard.types import Finding, InspectionReport, Rule, Severity

from .base import (
    Renderer,
    command_line,
    json_safe,
    printable_values,
    register_renderer,
    severity_counts,
    shown_command,
    sorted_findings,
    tool_version,
)

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA_URI = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"

#: SARIF ``result.level`` for each severity.
LEVELS: dict[Severity, str] = {
    Severity.CRITICAL: "error",
    Severity.HIGH: "error",
    Severity.MEDIUM: "warning",
    Severity.LOW: "note",
    Severity.INFO: "note",
}

#: ``security-severity`` (a CVSS-like 0-10 score GitHub code scanning sorts by).
SECURITY_SEVERITY: dict[Severity, str] = {
    Severity.CRITICAL: "9.5",
    Severity.HIGH: "8.0",
    Severity.MEDIUM: "5.5",
    Severity.LOW: "3.0",
    Severity.INFO: "0.0",
}


def artifact_uri(path: str) -> str:
    """A valid URI reference for ``path`` as this system reads it: absolute paths become ``file:`` URIs,
    relative ones a percent-encoded relative reference with ``/`` separators (on POSIX, ``c:/m.pt`` is the
    folder ``c:`` and ``//tmp/m.pt`` is ``/tmp/m.pt``, not Windows' drive and network share)."""
    text = str(path)
    if os.name == "nt":
        pure: PurePath = PureWindowsPath(text)
    else:
        pure = PurePosixPath("/" + text.lstrip("/") if text.startswith("/") else text)
    if pure.is_absolute():
        return pure.as_uri()
    return quote(os.fsencode(pure.as_posix()), safe="/-._~")  # a name that is not UTF-8 keeps its bytes


def _descriptor(rule: Rule) -> dict[str, Any]:
    markdown = rule.help or rule.summary
    if rule.reference:
        markdown += f"\n\n**Reference:** {rule.reference}" + (f" ({rule.url})" if rule.url else "")
    descriptor: dict[str, Any] = {
        "id": rule.rule_id,
        "name": rule.name,
        "shortDescription": {"text": rule.summary or rule.name},
        "fullDescription": {"text": rule.help or rule.summary or rule.name},
        "help": {"text": rule.help or rule.summary or rule.name, "markdown": markdown},
        "properties": {"tags": ["security", "federated-learning"]},
    }
    if rule.url:
        descriptor["helpUri"] = rule.url
    if rule.reference:
        descriptor["properties"]["reference"] = rule.reference
    return descriptor


def _fingerprint(uri: str, finding: Finding) -> str:
    """The finding's identity across runs: its rule, the file's path and the layer (the file's SHA-256 had made each
    round's model a new alert, and an accepted finding untraceable from one round to the next)."""
    key = "\x1f".join([uri, finding.rule_id, finding.layer or ""])
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _result(report: InspectionReport, f: Finding, rule_index: int, uri: str) -> dict[str, Any]:
    """The SARIF ``result`` for finding ``f``."""
    where = f" in {f.layer}" if f.layer is not None else ""
    location: dict[str, Any] = {"physicalLocation": {"artifactLocation": {"uri": uri, "index": 0}, "region": {"startLine": 1}}}
    if f.layer is not None:
        location["logicalLocations"] = [{"name": f.layer, "fullyQualifiedName": f.layer, "kind": "module"}]
    return {
        "ruleId": f.rule_id,
        "ruleIndex": rule_index,
        "level": LEVELS[f.severity],
        "message": {"text": f"{f.title}{where}: {f.message}"},
        "locations": [location],
        "partialFingerprints": {"fedguardFinding/v2": _fingerprint(uri, f)},
        "properties": {
            "severity": str(f.severity),
            "confidence": str(f.confidence),
            "title": f.title,
            "layer": f.layer,
            "evidence": json_safe(f.evidence),
        },
    }


def _accepted_by(report: InspectionReport, f: Finding) -> str:
    """The ``--ignore`` entry (as the report's config records it) that matches ``f``."""
    return next((str(entry) for entry in recorded_ignores(report) if entry.matches(f)), f.rule_id)


def report_to_sarif(report: InspectionReport, rules: Mapping[str, Rule]) -> dict[str, Any]:
    """The SARIF log for ``report`` as plain Python values."""
    findings = sorted_findings(report.findings)
    suppressed = sorted_findings(report.suppressed)

    # Every rule fedguard has, by id; a finding whose rule is unknown still gets one.
    all_rules: dict[str, Rule] = dict(rules)
    for f in [*findings, *suppressed]:
        all_rules.setdefault(f.rule_id, Rule(f.rule_id, f.title, f.title, "", ""))
    rule_ids = sorted(all_rules)
    index = {rule_id: i for i, rule_id in enumerate(rule_ids)}
    descriptors = [_descriptor(all_rules[r]) for r in rule_ids]
    for f in [*findings, *suppressed]:  # worst severity seen per rule, for dashboards that sort by it (an accepted
        # finding's too: a rule whose every result was suppressed had read as no security rule)
        props = descriptors[index[f.rule_id]]["properties"]
        if float(props.get("security-severity", "-1")) < float(SECURITY_SEVERITY[f.severity]):
            props["security-severity"] = SECURITY_SEVERITY[f.severity]

    uri = artifact_uri(report.path)
    results = [_result(report, f, index[f.rule_id], uri) for f in findings]
    for f in suppressed:  # listed, with the reason: SARIF's record of an accepted finding
        result = _result(report, f, index[f.rule_id], uri)
        result["suppressions"] = [{"kind": "external", "status": "accepted",
                                   "justification": f"accepted with fedguard --ignore {_accepted_by(report, f)}"}]
        results.append(result)

    artifact: dict[str, Any] = {
        "location": {"uri": uri},
        "length": int(report.size_bytes),
        "hashes": {"sha-256": report.sha256},
        "properties": {
            "fileFormat": report.file_format,
            "nParameters": int(report.n_parameters),
            "nLayers": int(report.n_layers),
            "loaded": bool(report.loaded),
            "arch": report.arch,
        },
    }
    invocation: dict[str, Any] = {"executionSuccessful": True}
    try:  # what a relative artifact path is relative to (a reader elsewhere could not resolve ../m/global.pt)
        here = Path.cwd().as_uri()
        invocation["workingDirectory"] = {"uri": here if here.endswith("/") else here + "/"}  # / is file:///
    except OSError:  # the directory was removed while the run went on: the relative path is all there is
        pass
    typed = command_line()
    if typed:  # how to repeat the run (from Python there is no command line, and the config says what was given)
        invocation.update(commandLine=shown_command(), arguments=printable_values(typed[1:]))
    invocation["properties"] = printable_values({
        "detectorsRun": list(report.detectors_run),
        "seconds": json_safe(float(report.seconds)),
        "reference": report.reference,
        "config": json_safe(dict(report.config)),
        "ignoreUnmatched": list(report.ignore_unmatched),
    })
    run: dict[str, Any] = {
        "tool": {
            "driver": {
                "name": "fedguard",
                "version": tool_version(report),
                "rules": descriptors,
            }
        },
        "invocations": [invocation],
        "artifacts": printable_values([artifact]),  # the rules above are fedguard's own text, Markdown line breaks included
        "results": printable_values(results),
        "properties": {
            "verdict": str(report.verdict),
            "summary": severity_counts(report.findings),
        },
    }
    return {"$schema": SARIF_SCHEMA_URI, "version": SARIF_VERSION, "runs": [run]}


@register_renderer("sarif")
class SarifRenderer(Renderer):
    """SARIF 2.1.0 log with one run."""

    name: ClassVar[str] = "sarif"
    suffix: ClassVar[str] = ".sarif"

    def render(self, report: InspectionReport, rules: Mapping[str, Rule], *, color: bool = False) -> str:
        return json.dumps(report_to_sarif(report, rules), indent=2, ensure_ascii=True, allow_nan=False) + "\n"
