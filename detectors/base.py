"""The detector interface: one small protocol, one registry.

A detector is a class with a short registry ``name``, the ``rules`` it can
report (rule id, help text, paper) and a ``run(context)`` that yields
:class:`~fedguard.types.Finding` objects. Behavioural detectors declare what
they need (an architecture, the client's data, a reference model) in ``needs``
and are skipped, with a note, when it is not there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import abc
from typing import Any, Callable, ClassVar, Hashable, Iterable

import torch
from torch import nn

from fedguard.modelview import ModelView
from fedguard.registry import Registry
from fedguard.types import Confidence, Finding, Rule, Severity

#: Everything a detector may look at.
NEEDS_MODULE, NEEDS_DATA, NEEDS_REFERENCE = "module", "data", "reference"
#: The command-line option that gives each (the data are run through --arch, which they need too).
NEED_FLAGS = {NEEDS_MODULE: "--arch", NEEDS_DATA: "--data", NEEDS_REFERENCE: "--reference"}


@dataclass(frozen=True)
class InspectContext:
    """What a detector gets.

    Parameters
    ----------
    view : ModelView
        The received model.
    reference : ModelView or None
        The previous round's model (``--reference``).
    data : tuple of (inputs, labels) or None
        A batch of the client's own data (``--data``), float inputs in [0, 1].
    fresh : callable or None
        Builds the expected architecture (``--arch``) afresh, at its own initialisation: what an honest model of it
        does is a baseline for a behavioural check (FG801, FG803); :func:`fresh_module` builds it seeded.
    """

    view: ModelView
    reference: ModelView | None = None
    data: tuple[torch.Tensor, torch.Tensor] | None = None
    fresh: Callable[[], nn.Module] | None = None
    #: What :meth:`shared` computed, by key (empty in a copy made with ``dataclasses.replace``).
    computed: dict[Hashable, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    def shared(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """``compute()``, once for this context: what several detectors read (the client's examples through the
        model's fully connected layers) is computed by the first to ask. A ``compute`` that raises is tried again by
        the next."""
        if key not in self.computed:
            self.computed[key] = compute()
        return self.computed[key]

    def has(self, need: str) -> bool:
        return {
            NEEDS_MODULE: self.view.module is not None,
            NEEDS_DATA: self.data is not None and self.view.module is not None,
            NEEDS_REFERENCE: self.reference is not None,
        }[need]


def fresh_module(context: InspectContext, device: torch.device) -> nn.Module:
    """``context.fresh()`` on ``device``, seeded 0 so that a baseline is the same every run (the caller's random state
    kept). Raises what the architecture's code raises."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return context.fresh().to(device)


class Detector(abc.ABC):
    """Base class: subclasses set ``name``, ``rules`` and implement ``run``."""

    name: ClassVar[str]
    rules: ClassVar[tuple[Rule, ...]]
    needs: ClassVar[frozenset[str]] = frozenset()

    @abc.abstractmethod
    def run(self, context: InspectContext) -> Iterable[Finding]:
        """Yield the findings for ``context``; yield nothing on a benign model."""

    def rule(self, rule_id: str) -> Rule:
        return next(r for r in self.rules if r.rule_id == rule_id)

    def finding(self, rule_id: str, title: str, severity: Severity, confidence: Confidence,
                layer: str | None, message: str, **evidence) -> Finding:
        """A finding of one of this detector's rules."""
        self.rule(rule_id)  # fails loudly on a typo in a rule id
        return Finding(rule_id, title, severity, confidence, layer, message, evidence)


DETECTORS: Registry[type[Detector]] = Registry("detector")
register_detector = DETECTORS.register_class


def rounded(value: float, digits: int = 4) -> float:
    """A float trimmed to ``digits`` significant digits for evidence (keeps inf/nan)."""
    value = float(value)
    if value == 0 or value != value or value in (float("inf"), float("-inf")):
        return value
    return float(f"{value:.{digits}g}")
