"""Stable, versioned JSON for scripts; described by ``schemas/inspect-report.schema.json``.

Field-by-field documentation: ``docs/json-schema.md``. ``schema_version`` is
``MAJOR.MINOR``: a minor bump only adds fields, a major bump renames, removes
or retypes one. Findings are listed worst first. Evidence values are plain
JSON: numpy/torch numbers become numbers, arrays become lists, and NaN/±Inf
become the strings ``"nan"``, ``"inf"``, ``"-inf"``. Sample output (``fedguard craft imprint --arch lenet5 -o
imp.pt``, then ``fedguard inspect imp.pt --arch lenet5 --format json``; four of the five findings left out)::

    {
      "schema_version": "1.5",
      "tool": {"name": "fedguard", "version": "0.1.0"},
      "path": "imp.pt",
      "sha256": "9a4a0d482d6a...",
      "file_format": "torch",
      "size_bytes": 1057785,
      "n_parameters": 263322,
      "n_layers": 7,
      "loaded": true,
      "arch": "lenet5",
      "reference": null,
      "verdict": "malicious",
      "summary": {"critical": 0, "high": 5, "medium": 0, "low": 0, "info": 0},
      "findings": [
        {"rule_id": "FG301", "title": "Imprint layer: identical rows",
         "severity": "high", "confidence": "high", "layer": "imprint.0",
         "message": "128 of 128 units of imprint.0 share one weight vector ...",
         "evidence": {"identical_rows": 128, "rows": 128, "distinct_biases": 128, ...}}
      ],
      "suppressed": [],
      "ignore_unmatched": [],
      "detectors_run": ["constant_rows", "architecture_drift", "fishing", "imprint", ...],
      "seconds": 0.42,
      "config": {"num_classes": null, "input_shape": null, "data": null, "data_sha256": null,
                 "data_examples": null, "data_shape": null, "seed": 0, "detectors_requested": null, "ignore": [],
                 "reference_sha256": null, "torch": "2.13.0", "fail_on": "medium"},
      "command_line": ["fedguard", "inspect", "imp.pt", "--arch", "lenet5", "--format", "json"]
    }
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Mapping

from fedguard.types import InspectionReport, Rule

from .base import (
    Renderer,
    check_report,
    command_line,
    json_safe,
    printable_values,
    register_renderer,
    severity_counts,
    sorted_findings,
    tool_version,
)

__all__ = ["SCHEMA_VERSION", "report_to_dict"]

SCHEMA_VERSION = "1.5"


def _finding_dicts(findings) -> list[dict[str, Any]]:
    """``findings`` as JSON objects, worst first."""
    items = []
    for finding in sorted_findings(findings):
        item = finding.to_dict()
        item["evidence"] = json_safe(item["evidence"])
        items.append(item)
    return items


def report_to_dict(report: InspectionReport) -> dict[str, Any]:
    """The JSON document for ``report`` as plain Python values (``docs/json-schema.md``); InputError when ``report``
    is not an :class:`~fedguard.types.InspectionReport`."""
    check_report(report, InspectionReport, "fedguard.inspect.inspect_model")
    return printable_values({
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "fedguard", "version": tool_version(report)},
        "path": str(report.path),
        "sha256": report.sha256,
        "file_format": report.file_format,
        "size_bytes": int(report.size_bytes),
        "n_parameters": int(report.n_parameters),
        "n_layers": int(report.n_layers),
        "loaded": bool(report.loaded),
        "arch": report.arch,
        "reference": None if report.reference is None else str(report.reference),
        "verdict": str(report.verdict),
        "summary": severity_counts(report.findings),
        "findings": _finding_dicts(report.findings),
        "suppressed": _finding_dicts(report.suppressed),
        "ignore_unmatched": list(report.ignore_unmatched),
        "detectors_run": list(report.detectors_run),
        "seconds": json_safe(float(report.seconds)),
        "config": json_safe(dict(report.config)),
        "command_line": command_line(),
    })  # fmt: skip


@register_renderer("json")
class JsonRenderer(Renderer):
    """Machine-readable report, schema version :data:`SCHEMA_VERSION`."""

    name: ClassVar[str] = "json"
    suffix: ClassVar[str] = ".json"

    def render(self, report: InspectionReport, rules: Mapping[str, Rule], *, color: bool = False) -> str:
        return json.dumps(report_to_dict(report), indent=2, ensure_ascii=True, allow_nan=False) + "\n"
