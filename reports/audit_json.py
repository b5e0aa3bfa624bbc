"""Stable, versioned JSON for ``fedguard audit``; described by ``schemas/audit-report.schema.json``.

Field-by-field documentation: ``docs/audit.md``. ``schema_version`` is
``MAJOR.MINOR``: a minor bump only adds fields, a major bump renames, removes
or retypes one. The document never contains pixel data: the reconstruction
grids are PNG files named in ``attacks[].image_file``. Non-finite numbers are
the strings ``"nan"``, ``"inf"``, ``"-inf"``. Sample output (abridged)::

    {
      "schema_version": "1.12",
      "tool": {"name": "fedguard", "version": "0.1.0"},
      "command": "audit",
      "generated": "2026-12-06 03:00:00 UTC",
      "command_line": ["fedguard", "audit", "--arch", "lenet", "--data", "digits", "--format", "json"],
      "verdict": "block",
      "fail_on": "high",
      "interrupted": false,
      "notes": [],
      "leakage": {"level": "high", "measured": true, "worst_attack": "dlg", "baseline_psnr": 11.3,
                  "by_attack": {"label_counts": "low", "dlg": "high"}, "thresholds": {...}},
      "attacks": [
        {"name": "dlg", "level": "high", "psnr_mean": 52.1, "psnr_max": 52.1,
         "ssim_mean": 0.9999, "ssim_max": 0.9999, "label_accuracy": 1.0,
         "seconds": 18.2, "iterations": 131, "starts": 4, "start_success_rate": 0.75,
         "image_file": "audit.json-dlg.png", "samples": [...], ...}
      ],
      "skipped": {"idlg": "..."},
      "model": {...}, "data": {...}, "update": {...}, "threat": {...}, "config": {...},
      "exposure": {"outcome": "exposed", "rounds_to_exposure": 30, "settings": {...},
                   "scenarios": [{"label": "noise 1 on the sums", "outcome": "not exposed", ...}]},
      "seconds": 21.4
    }
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Mapping

from fedguard.types import AttackOutcome, AuditReport

from .audit_base import AuditRenderer, register_audit_renderer
from .base import check_report, command_line, generated_at, json_safe, printable_values, tool_version

__all__ = ["SCHEMA_VERSION", "audit_to_dict"]

#: 1.1: leakage.measured, data.sha256, update.sha256; 1.2: exposure outcome "cut short"; 1.3: notes, update.agreement;
#: 1.4: data.batch_sha256; 1.5: exposure.budget; 1.6: update.defense "unknown" for an update fedguard did not compute;
#: 1.7: update.defense_settings (--defense); 1.8: model.weights_sha256, update.tensors_sha256, generated,
#: config.exposure_requested, skipped's "not requested" entries;
#: 1.9: command_line; 1.10: model.inspection; 1.11: model.inspection's suppressed, ignore and ignore_unmatched;
#: 1.12: config.strict, leakage.measured true for an update that is zero everywhere
SCHEMA_VERSION = "1.12"
#: Significant digits of the measured floats (PSNR to 0.0001 dB, seconds to the millisecond); settings stay as given.
JSON_DIGITS = 6


def _outcome(o: AttackOutcome) -> dict[str, Any]:
    return {
        "name": o.name,
        "title": o.title,
        "reference": o.reference,
        "kind": o.kind,
        "level": str(o.level),
        "psnr_mean": o.psnr_mean,
        "psnr_max": o.psnr_max,
        "ssim_mean": o.ssim_mean,
        "ssim_max": o.ssim_max,
        "mse_mean": o.mse_mean,
        "label_accuracy": o.label_accuracy,
        "label_count_error": o.label_count_error,
        "label_counts_exact": o.label_counts_exact,
        "seconds": o.seconds,
        "iterations": o.iterations,
        "stopped": o.stopped,
        "starts": o.starts,
        "start_success_rate": o.start_success_rate,
        "recovered_fraction": o.recovered_fraction,
        "image_file": o.image_file,
        "samples": [
            {
                "index": s.index,
                "match": s.match,
                "psnr": s.psnr,
                "ssim": s.ssim,
                "mse": s.mse,
                "label": s.label,
                "rebuilt_label": s.rebuilt_label,
                "level": str(s.level),
                "baseline_psnr": s.baseline_psnr,
                "baseline_ssim": s.baseline_ssim,
            }
            for s in o.samples
        ],
        "details": dict(o.details),
    }


def audit_to_dict(report: AuditReport) -> dict[str, Any]:
    """The JSON document for ``report`` as plain Python values (``docs/json-schema.md``); InputError when ``report``
    is not an :class:`~fedguard.types.AuditReport`."""
    check_report(report, AuditReport, "fedguard.audit.audit")
    doc = {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "fedguard", "version": tool_version(report)},
        "command": "audit",
        "generated": generated_at(),
        "command_line": command_line(),
        "verdict": str(report.verdict),
        "fail_on": str(report.fail_on),
        "interrupted": bool(report.interrupted),
        "notes": list(report.notes),
        "leakage": {
            "level": str(report.leakage.level),
            "measured": report.measured,
            "worst_attack": report.leakage.worst_attack,
            "baseline_psnr": report.leakage.baseline_psnr,
            "by_attack": {k: str(v) for k, v in report.leakage.by_attack.items()},
            "thresholds": dict(report.leakage.thresholds),
        },
        "attacks": [_outcome(o) for o in report.attacks],
        "skipped": dict(report.skipped),
        "model": dict(report.model),
        "data": dict(report.data),
        "update": dict(report.update),
        "threat": dict(report.threat),
        "config": dict(report.config),
        "exposure": None if report.exposure is None else dict(report.exposure),
        "seconds": report.seconds,
    }
    doc = json_safe(doc)
    for key in ("attacks", "leakage", "seconds"):
        doc[key] = json_safe(doc[key], digits=JSON_DIGITS)
    for key in ("norm", "loss", "epsilon"):  # measured: six significant digits (epsilon had printed 17)
        if key in doc["update"]:
            doc["update"][key] = json_safe(doc["update"][key], digits=JSON_DIGITS)
    if doc["update"].get("agreement"):
        for key in ("cosine", "scale"):  # no scale where the recomputed update is zero
            if key in doc["update"]["agreement"]:
                doc["update"]["agreement"][key] = json_safe(doc["update"]["agreement"][key], digits=JSON_DIGITS)
    doc["exposure"] = _measurements_rounded(doc["exposure"])
    return printable_values(doc)


def _measurements_rounded(value: Any) -> Any:
    """``value`` with its floats to :data:`JSON_DIGITS` significant digits, except under ``settings``: what the
    user asked for stays as typed, so that the report says how to repeat the run."""
    if isinstance(value, dict):
        return {k: v if k == "settings" else _measurements_rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_measurements_rounded(v) for v in value]
    return json_safe(value, digits=JSON_DIGITS)


@register_audit_renderer("json")
class AuditJsonRenderer(AuditRenderer):
    """Machine-readable audit report, schema version :data:`SCHEMA_VERSION`."""

    name: ClassVar[str] = "json"
    suffix: ClassVar[str] = ".json"

    def render(self, report: AuditReport, *, color: bool = False, images: Mapping[str, bytes] | None = None) -> str:
        return json.dumps(audit_to_dict(report), indent=2, ensure_ascii=True, allow_nan=False) + "\n"
