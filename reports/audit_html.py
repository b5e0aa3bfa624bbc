"""One self-contained HTML page per audit (``templates/audit.html``).

Inline CSS and the reconstruction grids as ``data:`` PNG images: no scripts,
no fonts, nothing loaded from the network. Every value is escaped by Jinja2's
autoescape. Layout::

    ┌ fedguard audit ──────────────────────────────────────────────┐
    │ [BLOCK] leakage high (worst: dlg)                            │
    │ model · data · protocol · device · seed · time               │
    ├ Attacks ─────────────────────────────────────────────────────┤
    │ attack │ level │ PSNR │ SSIM │ labels │ iterations │ time    │
    ├ per attack: true images over reconstructions (PNG)           │
    ├ Secure aggregation: rounds until disaggregation, what-ifs    │
    ├ Threat model │ Update │ Thresholds │ Skipped attacks         │
    └──────────────────────────────────────────────────────────────┘
"""

from __future__ import annotations

import base64
from typing import ClassVar, Mapping

from fedguard.types import AuditReport

from .audit_base import AuditRenderer, register_audit_renderer
from .audit_sentences import accepted_said, defense_summary, exposure_summary, nearest_estimate, thresholds_said, threat_items
from .base import generated_at, shown_command, tool_version
from .html import sentence, template_environment

TEMPLATE = "audit.html"


@register_audit_renderer("html")
class AuditHtmlRenderer(AuditRenderer):
    """Self-contained HTML page with the reconstruction grids inline."""

    name: ClassVar[str] = "html"
    suffix: ClassVar[str] = ".html"

    def render(self, report: AuditReport, *, color: bool = False, images: Mapping[str, bytes] | None = None) -> str:
        pictures = {name: "data:image/png;base64," + base64.b64encode(png).decode("ascii") for name, png in (images or {}).items()}
        return template_environment().get_template(TEMPLATE).render(
            r=report,
            exposure_summary=exposure_summary(report.exposure) if report.exposure is not None else None,
            nearest=nearest_estimate,
            defense=defense_summary(report.update),
            accepted=sentence(accepted) if (accepted := accepted_said(report)) else None,
            threat_said="; ".join(threat_items(report)),
            thresholds_said=sentence(thresholds_said(report)) if report.leakage.thresholds else "",
            pictures=pictures,
            generated=generated_at(),
            command=shown_command(),
            tool_version=tool_version(report),
        )

