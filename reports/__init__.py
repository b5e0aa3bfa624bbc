"""Output formats for ``fedguard inspect``: text, json, sarif, html.

>>> from fedguard.reports import RENDERERS, render
>>> RENDERERS.names()
['text', 'json', 'sarif', 'html']

``render(fmt, report)`` returns the whole output as a string; the caller
writes it (atomically, see :func:`fedguard.io.write_atomic`). Its optional
``rules`` maps rule id to :class:`~fedguard.types.Rule` (default: every rule
fedguard has).
"""

from __future__ import annotations

from typing import Mapping

from fedguard.types import InspectionReport, Rule

from .base import RENDERERS, Renderer, check_format, check_report, load_schema, register_renderer
from . import text, json_report, sarif, html  # noqa: F401  (register the formats)
from .html import render_summary

__all__ = ["RENDERERS", "Renderer", "load_schema", "register_renderer", "render", "render_summary"]


def render(fmt: str, report: InspectionReport, rules: Mapping[str, Rule] | None = None, color: bool = False) -> str:
    """Render ``report`` in format ``fmt`` (a name in :data:`RENDERERS`).

    ``rules`` maps rule id to :class:`~fedguard.types.Rule` (None: every rule
    fedguard has, :func:`fedguard.inspect.rules`). Raises ``KeyError`` naming
    the valid formats when ``fmt`` is unknown, and
    :class:`~fedguard.errors.InputError` when ``fmt`` is not a name (the
    report passed first) or ``report`` is not an
    :class:`~fedguard.types.InspectionReport`. ``color`` only affects
    ``text``; pass True only when writing to a TTY.
    """
    check_format(fmt)
    if rules is None:
        from fedguard.inspect import rules as every_rule

        rules = every_rule()
    renderer = RENDERERS.get(fmt)
    check_report(report, InspectionReport, "fedguard.inspect.inspect_model")
    return renderer().render(report, rules, color=color)
