"""One self-contained HTML page per inspection, or one page over several.

The page has inline CSS only: no scripts, no fonts, no images, no links to
the network, so it opens the same offline, in a mail attachment or printed.
Every value from the model file (paths, layer names, messages, evidence) is
escaped by Jinja2's autoescape. Layout (``templates/inspect.html``)::

    ┌ fedguard inspect — global.pt ───────────────────────────────┐
    │ [MALICIOUS]  global.pt                                       │
    │ sha256 6f1c…  size 251,234 B  62,006 parameters  11 layers   │
    │ arch lenet5  fedguard 0.1.0  0.42 s  generated 2025-…Z       │
    ├ Findings ────────────────────────────────────────────────────┤
    │ severity │ rule  │ layer │ title │ confidence │ message │ evidence │
    ├ Rules that fired ────────────────────────────────────────────┤
    │ FG301 imprint-identical-rows — help text — reference         │
    └──────────────────────────────────────────────────────────────┘

:func:`render_summary` puts several reports on one page: a table model ->
verdict -> findings per severity, then one section per model as above, then
one rules appendix for all of them.

The generation time is now (UTC), or ``SOURCE_DATE_EPOCH`` when that is set,
for reproducible pages.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

from fedguard.errors import InputError
from fedguard.suppressions import recorded_ignores
from fedguard.types import InspectionReport, Rule

from .base import (
    SEVERITY_ORDER,
    Renderer,
    data_used,
    exit_note,
    fired_rules,
    fmt_num,
    format_value,
    generated_at,
    more_detectors,
    plural,
    printable,
    register_renderer,
    severity_counts,
    shown_command,
    shown_findings,
    tool_version,
)

TEMPLATE = "inspect.html"


def _shown(value: Any) -> Any:
    """Every value a page prints, with bidirectional overrides and control characters shown as escapes
    (:func:`printable`); markup the page built itself is left as it is."""
    import markupsafe

    if isinstance(value, str) and not isinstance(value, markupsafe.Markup):
        return printable(value)
    return value


@functools.lru_cache(maxsize=1)
def template_environment():
    """The jinja2 environment of every HTML page, built on first use so other formats never import jinja2."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("fedguard.reports", "templates"),  # as the schemas: also from a zip
        autoescape=True,
        finalize=_shown,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["value"] = lambda value: format_value(value, max_items=64)  # a page has room: lists and dicts whole
    # up to 64 entries (the text report shows 8)
    env.filters["thousands"] = lambda n: f"{int(n):,}"
    env.filters["num"] = fmt_num
    env.filters["more_detectors"] = more_detectors
    env.filters["exit_note"] = exit_note
    env.filters["sentence"] = sentence
    env.filters["code_spans"] = code_spans
    return env


def sentence(text: str) -> str:
    """``text`` with its first letter upper case (``str.capitalize`` lowers the rest: dB, SSIM)."""
    return text[:1].upper() + text[1:]


def code_spans(text: str):
    """``text`` escaped (and :func:`printable`), each span between backticks as ``<code>`` (the sentences that name a
    command, which the text report shows in backticks)."""
    import re

    import markupsafe

    escaped = str(markupsafe.escape(printable(text)))
    return markupsafe.Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped))


def _model(report: InspectionReport, anchor: str, description: str | None = None) -> dict[str, Any]:
    stale = report.ignore_unmatched
    return {
        "anchor": anchor,
        "report": report,
        "name": Path(report.path).name or report.path,
        "description": description,
        "verdict": str(report.verdict),
        "tool_version": tool_version(report),
        "findings": (shown := shown_findings(report.findings))[0],
        "findings_left_out": shown[1],
        "suppressed": (accepted := shown_findings(report.suppressed))[0],
        "suppressed_left_out": accepted[1],
        "accepted_by": [str(i) for i in recorded_ignores(report) if str(i) not in stale],
        "ignore_unmatched": list(stale),
        "counts": severity_counts(report.findings),
        "data_used": data_used(report),
    }


def _page(
    reports: Sequence[InspectionReport],
    rules: Mapping[str, Rule],
    title: str,
    summary: bool,
    descriptions: Sequence[str] | None = None,
    introduction: str | None = None,
) -> str:
    descriptions = list(descriptions) if descriptions is not None else [None] * len(reports)
    if len(descriptions) != len(reports):
        raise InputError(f"{plural(len(descriptions), 'description')} for {plural(len(reports), 'report')}; give one per report")
    models = [_model(r, f"model-{i + 1}", d) for i, (r, d) in enumerate(zip(reports, descriptions))]
    every_finding = [f for r in reports for f in (*r.findings, *r.suppressed)]
    versions = sorted({m["tool_version"] for m in models})
    return template_environment().get_template(TEMPLATE).render(
        title=title,
        introduction=introduction,
        summary=summary,
        models=models,
        severities=[str(s) for s in SEVERITY_ORDER],
        fired=fired_rules(every_finding, rules),
        tool_version=", ".join(versions),
        generated=generated_at(),
        command=shown_command(),
    )


def render_report(report: InspectionReport, rules: Mapping[str, Rule]) -> str:
    """The HTML page for one inspection."""
    return _page([report], rules, f"fedguard inspect — {Path(report.path).name or report.path}", summary=False)


def render_summary(
    reports: Sequence[InspectionReport],
    rules: Mapping[str, Rule],
    title: str,
    descriptions: Sequence[str] | None = None,
    introduction: str | None = None,
) -> str:
    """One HTML page over several inspections (the demo's summary).

    Parameters
    ----------
    reports : sequence of InspectionReport
        The inspections, in the order they should appear.
    rules : mapping of str to Rule
        Every rule fedguard has, by rule id.
    title : str
        Page title and heading.
    descriptions : sequence of str, optional
        What each model is (e.g. "honest LeNet-5, trained 2 epochs"), one per report, shown beside its name.
    introduction : str, optional
        A paragraph under the title: what was inspected and why (the demo says what its models are).

    Returns
    -------
    str
        A self-contained page: an overview table (model, verdict, findings per
        severity), one section per model, and an appendix of the rules that fired.
    """
    return _page(list(reports), rules, title, summary=True, descriptions=descriptions, introduction=introduction)


@register_renderer("html")
class HtmlRenderer(Renderer):
    """Self-contained HTML page (inline CSS, no scripts, no network)."""

    name: ClassVar[str] = "html"
    suffix: ClassVar[str] = ".html"

    def render(self, report: InspectionReport, rules: Mapping[str, Rule], *, color: bool = False) -> str:
        return render_report(report, rules)
