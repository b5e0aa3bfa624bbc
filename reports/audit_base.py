"""Renderers for ``fedguard audit``: one small ABC, one registry.

Same shape as the inspect renderers (:mod:`fedguard.reports.base`): a renderer
turns one :class:`~fedguard.types.AuditReport` into a string; the CLI picks it
by ``--format`` and writes it atomically. ``text``, ``json`` and ``html`` are
registered in :data:`AUDIT_RENDERERS` by :func:`audit_renderers`.

The reconstruction grids the HTML page embeds are :mod:`fedguard.reports.grids`'s.
"""

from __future__ import annotations

import abc
import importlib
from typing import ClassVar, Mapping

from fedguard.registry import Registry
from fedguard.types import AuditReport

from .base import check_format, check_report

__all__ = ["AuditRenderer", "AUDIT_RENDERERS", "register_audit_renderer", "audit_renderers", "render_audit"]

AUDIT_RENDERERS: Registry[type["AuditRenderer"]] = Registry("audit output format")
_MODULES = ("audit_text", "audit_json", "audit_html")


class AuditRenderer(abc.ABC):
    """Turns an audit report into text in one output format."""

    name: ClassVar[str]
    suffix: ClassVar[str]

    @abc.abstractmethod
    def render(self, report: AuditReport, *, color: bool = False, images: Mapping[str, bytes] | None = None) -> str:
        """The whole output; ``images`` maps attack name to its PNG grid (HTML embeds them)."""


def register_audit_renderer(name: str):
    """Class decorator: register an :class:`AuditRenderer` subclass under ``name``."""
    return AUDIT_RENDERERS.register_class(name)


def audit_renderers() -> Registry[type[AuditRenderer]]:
    for module in _MODULES:
        importlib.import_module(f"{__package__}.{module}")
    return AUDIT_RENDERERS


def render_audit(fmt: str, report: AuditReport, *, color: bool = False, images: Mapping[str, bytes] | None = None) -> str:
    """Render ``report`` as ``fmt``: ``text``, ``json`` or ``html`` (KeyError naming the valid formats when unknown).

    ``color`` only affects ``text`` (pass True only when writing to a TTY). ``images`` are the PNG grids of true
    images over reconstructions that ``html`` embeds, by attack name: None embeds each attack's grid
    (:func:`fedguard.reports.grids.attack_grids`), ``{}`` none (the page then holds no images of the batch, as
    ``fedguard audit --no-images``)."""
    check_format(fmt)
    renderer = audit_renderers().get(fmt)
    check_report(report, AuditReport, "fedguard.audit.audit")
    if images is None and fmt == "html":
        from fedguard.reports.grids import attack_grids

        images = attack_grids(report)
    return renderer().render(report, color=color, images=images)
