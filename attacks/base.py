"""The attack interface of ``fedguard audit``: one small ABC, one registry, one budget.

An attack is what a curious server runs on an uploaded update. It gets a
:class:`~fedguard.threat.ServerView` (the update plus only what the threat
model grants) and a :class:`Budget` (iterations, seconds, Ctrl-C), and
returns a :class:`~fedguard.types.Reconstruction`. It never sees the true
batch; :mod:`fedguard.metrics` measures the reconstruction afterwards.

Adding an attack is one module that subclasses :class:`Attack`, decorates it
with ``@register_attack("name")`` and is listed in :data:`BUILTIN_MODULES`;
the CLI's ``--attack`` choices, the docs table and the tests all enumerate
:func:`attacks`.
"""

from __future__ import annotations

import abc
import importlib
import threading
import time
from typing import Any, Callable, ClassVar, Sequence

from fedguard.checks import finite, whole
from fedguard.layers import find_head, head_not_updated
from fedguard.registry import Registry
from fedguard.threat import ServerView
from fedguard.types import Reconstruction

__all__ = ["Attack", "ATTACKS", "Budget", "attacks", "register_attack", "BUILTIN_MODULES", "whole_option", "number_option", "choice_option", "ENGINES", "KNOWN_LABELS", "unreadable_head"]

#: Modules that register the built-in attacks, in the order the audit runs them:
#: label attacks first, because their labels seed the image attacks; analytic before optimisation.
BUILTIN_MODULES: tuple[str, ...] = ("label_counts", "idlg", "fc_inversion", "dlg", "inverting_gradients", "imprint", "class_fishing", "feature_fishing", "mkor")

ATTACKS: Registry[type["Attack"]] = Registry("attack")

#: How the optimisation attacks evaluate their starts: ``vmap`` (one batched call), ``loop`` (one call each,
#: side by side in worker threads on a CPU), or ``auto`` (by device and model size).
ENGINES: tuple[str, ...] = ("auto", "vmap", "loop")

#: Why a label attack does not apply to a server that knows the labels (``--attacker-labels known``): recovering
#: them reveals nothing it did not have (they had been counted as leakage: medium for a batch of one).
KNOWN_LABELS = "the server knows the labels already (threat model labels=known): recovering them reveals nothing more"


def unreadable_head(view: ServerView) -> str | None:
    """Why the labels cannot be read off ``view``'s update: the logits come from no Linear layer with a row per class,
    or the update holds nothing of its weight (:func:`~fedguard.layers.head_not_updated`); None when they can."""
    head = find_head(view.model, view.input_shape, view.device, view.num_classes)
    if head is None:
        return "the model's logits do not come from a Linear layer with one row per class"
    return head_not_updated(view.model, head, view.tensors)


#: Most random starts (DLG) or restarts (Inverting Gradients) an attack takes: they are optimised side by side, as one
#: batch, so more only run out of memory (100 million starts of DLG on LeNet asked for 2,289 GiB); 1,024 single
#: images of 32x32 take 12 MB.
MAX_STARTS = 1024


def whole_option(value: Any, name: str, minimum: int, maximum: int | None = None) -> int:
    """``value`` as an int in ``[minimum, maximum]``; ValueError naming the option ``name`` otherwise."""
    return whole(value, name, minimum, maximum, error=ValueError)


def number_option(value: Any, name: str, *, positive: bool) -> float:
    """``value`` as a finite float above 0 (``positive``) or at least 0; ValueError naming ``name`` otherwise."""
    return finite(value, name, positive=positive, error=ValueError)


def choice_option(value: Any, name: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``; ValueError listing them otherwise."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; use one of {', '.join(choices)}")
    return value


def register_attack(name: str):
    """Class decorator: register an :class:`Attack` subclass under ``name``."""
    return ATTACKS.register_class(name)


def attacks() -> Registry[type["Attack"]]:
    """The attack registry with every built-in attack loaded (in audit order)."""
    for module in BUILTIN_MODULES:
        importlib.import_module(f"{__package__}.{module}")
    # Registration follows import order (a caller may import dlg before label_counts):
    # put the built-ins back in audit order, any other attack after them.
    ATTACKS.reorder(list(BUILTIN_MODULES))
    return ATTACKS


class Budget:
    """How long an attack may run: iterations, seconds, and a stop flag set by Ctrl-C.

    Attacks call :meth:`check` once per iteration; it returns the reason to
    stop (``interrupted``, ``time_budget``, ``max_iterations``) or None, and
    forwards progress to the ``progress`` callback ``(done, total, fields)``.
    """

    def __init__(
        self,
        max_iterations: int,
        seconds: float | None = None,
        stop: threading.Event | None = None,
        progress: Callable[[int, int, dict], None] | None = None,
        spent: float = 0.0,
    ):
        self.max_iterations = int(max_iterations)
        self.seconds = None if seconds is None else float(seconds)
        self.stop = stop if stop is not None else threading.Event()
        self.progress = progress
        self.started = time.perf_counter() - spent  # ``spent``: seconds the attack took before it started (crafting)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def remaining(self) -> float:
        return float("inf") if self.seconds is None else max(0.0, self.seconds - self.elapsed())

    def check(self, iteration: int, **fields) -> str | None:
        if self.progress is not None:
            self.progress(iteration, self.max_iterations, fields)
        if self.stop.is_set():
            return "interrupted"
        if self.seconds is not None and self.elapsed() >= self.seconds:
            return "time_budget"
        if iteration >= self.max_iterations:
            return "max_iterations"
        return None

    def interrupted(self) -> bool:
        return self.stop.is_set()


class Attack(abc.ABC):
    """A server-side attack on one update."""

    #: Registry name, also the value of ``--attack``.
    name: ClassVar[str]
    #: Short human title.
    title: ClassVar[str]
    #: The paper (authors, venue, year).
    reference: ClassVar[str]
    #: ``images`` (rebuilds inputs) or ``labels`` (recovers labels only).
    kind: ClassVar[str]
    #: Iterations when ``--max-iterations`` is not given (0 for analytic attacks).
    default_iterations: ClassVar[int] = 0
    #: Malicious-server emulators name the crafter (:mod:`fedguard.attacks.craft`) whose model the
    #: audit builds for the client's architecture; the client's update is then computed under it
    #: and the attack sees that model and that update. None for attacks on the model as received.
    emulates: ClassVar[str | None] = None
    #: Whether the audit runs it without ``--attack`` (emulators run on request).
    default: ClassVar[bool] = True

    def crafter_options(self, view: ServerView) -> dict:
        """Options for the crafter named by :attr:`emulates`, chosen from what the server knows (``view``)."""
        return {}

    def applies(self, view: ServerView) -> str | None:
        """None when the attack can run on ``view``; else why not (one phrase)."""
        return None

    def planted(self, view: ServerView) -> bool:
        """Whether the model in ``view`` already carries what the crafter named by :attr:`emulates` plants: a
        server sent it. The audit then attacks the client's own update under it, and runs the attack unasked."""
        return False

    @abc.abstractmethod
    def run(self, view: ServerView, budget: Budget) -> Reconstruction:
        """Attack the update in ``view`` within ``budget``; keep the best result on interruption."""
