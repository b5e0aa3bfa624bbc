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
import functools
from pathlib import Path
from typing import ClassVar, Mapping

from fedguard.types import AuditReport

from .audit_base import AuditRenderer, fmt_num, register_audit_renderer
from .audit_text import exposure_summary
from .base import format_value
from .html import _generated_at

TEMPLATE = "audit.html"


@functools.lru_cache(maxsize=1)
def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = fmt_num
    env.filters["value"] = format_value
    return env


@register_audit_renderer("html")
class AuditHtmlRenderer(AuditRenderer):
    """Self-contained HTML page with the reconstruction grids inline."""

    name: ClassVar[str] = "html"
    suffix: ClassVar[str] = ".html"

    def render(self, report: AuditReport, *, color: bool = False, images: Mapping[str, bytes] | None = None) -> str:
        pictures = {name: "data:image/png;base64," + base64.b64encode(png).decode("ascii") for name, png in (images or {}).items()}
        return _environment().get_template(TEMPLATE).render(
            r=report,
            exposure_summary=exposure_summary(report.exposure) if report.exposure is not None else None,
            pictures=pictures,
            generated=_generated_at(),
            tool_version=report.tool_version,
        )
