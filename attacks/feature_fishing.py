"""Feature fishing: one example isolated over several rounds, then inverted (malicious-server emulator).

Class fishing (:mod:`fedguard.attacks.class_fishing`) isolates a class; when
the client holds several examples of every class, Wen et al. (ICML 2022) go
on to fish on one feature ``f`` of the head's input. Their crafted head
(:func:`fedguard.attacks.craft.feature_fishing`) puts a steep softmax
boundary at ``f = v``: only examples on its "wrong" side send a gradient
below the head. Two rounds with boundaries ``v1 < v2`` then differ by the
gradient of exactly the examples with ``f`` in ``[v1, v2)``, whatever their
class, and the target bias's gradients differ by their number over ``B``.
The server bisects windows of ``f`` round after round -- the paper's
multi-round threat: the client's batch is the same in every round, as for
a client that trains on all its local data each round -- until a window holds
one example, and inverts that example's gradient as class fishing does
(:func:`~fedguard.attacks.class_fishing.invert_isolated`).

fedguard's emulator, playing the server with its public data:

* **feature** -- the head input's most spread feature on the public data,
  run in training mode in chunks of ``B`` (the client's BatchNorm statistics);
* **steepness** -- ``max(300, 50 B / σ_f)`` logits per unit of ``f``: the
  paper's 300, raised until the softmax's transition (about ±5 logits)
  spans under a twentieth of the mean gap between ``B`` examples spread like
  the public data (about ``4 σ_f / B``); an untrained LeNet's features spread
  by ~0.03, where 300 would blur the windows' counts;
* **rounds** -- boundaries below and above every public value first, then the
  window holding the fewest examples but at least two is split between two
  of the public data's values inside it, about its median, never within the
  softmax's transition of a public value (:meth:`FishingPlan.split`), at
  most ``max_rounds`` rounds. A window whose count is within
  :data:`COUNT_TOLERANCE` of one is one example. Without one, the smallest
  window is inverted as a batch of its examples.

References
----------
Y. Wen, J. Geiping, L. Fowl, M. Goldblum, T. Goldstein, "Fishing for User
Data in Large-Batch Federated Learning via Gradient Magnification", ICML 2022.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from typing import ClassVar

import torch

from fedguard.layers import find_head, layer_input
from fedguard.threat import NO_BATCH_SIZE, NO_GRADIENT, ServerView
from fedguard.types import Reconstruction

from .base import Attack, Budget, register_attack, whole_option
from .class_fishing import fishing_target, invert_isolated, unfishable_head
from .mkor import MKOR

__all__ = ["FeatureFishing", "FishingPlan", "fishing_plan", "COUNT_TOLERANCE"]

#: A window whose example count (read off the target bias) is this close to 1 holds one example.
COUNT_TOLERANCE = 0.2
#: Half the width, in logits, of the softmax's transition at a boundary (see :attr:`FishingPlan.margin`).
TRANSITION_LOGITS = 5.0
#: Public examples the feature statistics are measured on.
MAX_PUBLIC = 256
#: The paper's boundary steepness (``feat_multiplier``), and how far the emulator raises it per example per σ_f.
PAPER_MULTIPLIER = 300.0
SHARPNESS = 50.0


@dataclasses.dataclass(frozen=True)
class FishingPlan:
    """The server's choices: target class, feature, steepness, and the feature's public values (sorted)."""

    target: int
    feature: int
    multiplier: float
    public: torch.Tensor

    @property
    def low(self) -> float:
        return float(self.public[0] - self.public.std())

    @property
    def high(self) -> float:
        return float(self.public[-1] + self.public.std())

    def options(self, boundary: float) -> dict:
        """Crafter options that put the softmax boundary at ``f = boundary``."""
        return {"target": self.target, "feature": self.feature, "feature_val": float(boundary),
                "calibrate": True, "feat_multiplier": self.multiplier}  # fmt: skip

    def holds_tie(self, low: float, high: float) -> bool:
        """Whether ``[low, high)`` holds a value several public examples share: a ReLU's 0, where ``f`` sends no
        gradient below the head (``∇f = 0``), so an example fished there cannot be inverted."""
        inside = self.public[(self.public >= low) & (self.public < high)]
        return len(torch.unique(inside)) < len(inside)

    @property
    def margin(self) -> float:
        """Half the width of the softmax's transition in ``f``: an example closer to a boundary counts only partly."""
        return TRANSITION_LOGITS / self.multiplier

    def split(self, low: float, high: float) -> float | None:
        """Where to split the window ``[low, high)``, or None where it cannot be split.

        Halfway between two neighbouring distinct public values inside the window, the pair that halves its public
        values most evenly (with one value inside, the middle of its wider side; with none, the window's middle), at
        least :attr:`margin` from every public value and from the window's ends. Many examples can share one value
        (a ReLU's 0): a boundary on or near them counts each partly -- two such parts had read as one example, and
        the window was inverted to nothing -- and a window that holds only them cannot be split (bisecting towards
        them had spent the rounds).
        """
        inside = self.public[(self.public > low) & (self.public < high)]
        values = torch.unique(inside)
        if len(values) >= 2:
            cuts = 0.5 * (values[1:] + values[:-1])
            ok = values[1:] - values[:-1] > 2 * self.margin  # halfway between values inside: a margin from the ends too
            if not ok.any():
                return None
            below = torch.searchsorted(inside.sort().values, cuts[ok])
            return float(cuts[ok][torch.argmin((2 * below - len(inside)).abs())])
        if len(inside) > len(values):  # one value that several public examples share: where the window's examples are
            return None
        ends = [low, *values.tolist(), high]  # around a single public value, the middle of the wider side
        left, right = max(zip(ends, ends[1:]), key=lambda pair: pair[1] - pair[0])
        return 0.5 * (left + right) if right - left > 2 * self.margin else None


def fishing_plan(view: ServerView) -> FishingPlan | None:
    """The plan for ``view`` (its head's input is the same in the received and the crafted model), or None."""
    head = find_head(view.model, view.input_shape, view.device, view.num_classes)
    if head is None or view.auxiliary is None or not view.threat.auxiliary_data or not view.batch_size:
        return None
    public = view.auxiliary[0][:MAX_PUBLIC].to(view.device)
    if len(public) < 2:  # no spread to measure a feature's by
        return None
    net = copy.deepcopy(view.model).train()  # a copy: training-mode BatchNorm updates its running statistics
    layer = dict(net.named_modules())[head.name]
    chunk = max(2, int(view.batch_size))
    with torch.no_grad():
        feats = torch.cat([layer_input(net, layer, public[i : i + chunk]) for i in range(0, len(public), chunk)])
    spread = feats.double().std(0)
    feature = int(spread.argmax())
    sigma = float(spread[feature])
    if not math.isfinite(sigma) or sigma <= 0:
        return None
    multiplier = max(PAPER_MULTIPLIER, SHARPNESS * int(view.batch_size) / sigma)
    return FishingPlan(fishing_target(view), feature, multiplier, feats[:, feature].double().sort().values.cpu())


@register_attack("feature_fishing")
class FeatureFishing(Attack):
    """Feature fishing (Wen et al., ICML 2022): rounds of crafted heads isolate one example; it is inverted.

    Parameters
    ----------
    max_rounds : int
        Rounds the server may send the client (each a crafted model, the same batch). The rounds also stop at
        half the time budget, which leaves the other half to the inversion (on ResNet-18 each round's crafting and
        training takes about 0.6 s on 2 cores; they had run on past a budget of 2 s to 5 s).

    References
    ----------
    Y. Wen et al. "Fishing for User Data in Large-Batch Federated Learning
    via Gradient Magnification." ICML 2022.
    """

    name: ClassVar[str] = "feature_fishing"
    title: ClassVar[str] = "Feature fishing, malicious server over several rounds"
    reference: ClassVar[str] = "Wen, Geiping, Fowl, Goldblum & Goldstein, Fishing for User Data, ICML 2022"
    kind: ClassVar[str] = "images"
    default_iterations: ClassVar[int] = MKOR.default_iterations
    emulates: ClassVar[str | None] = "feature_fishing"
    default: ClassVar[bool] = False

    def __init__(self, max_rounds: int = 16):
        self.max_rounds = whole_option(max_rounds, "feature fishing max_rounds", 2)
        self._memo: tuple[object, int | None, FishingPlan | None] | None = None

    def _plan(self, view: ServerView) -> FishingPlan | None:
        """:func:`fishing_plan`, measured once per public data set and batch size.

        ``crafter_options`` sees the received model, ``applies`` and ``run`` the crafted one: their
        head inputs are the same, so one forward pass over the public data serves all three.
        """
        public = view.auxiliary[0] if view.auxiliary is not None else None
        if self._memo is None or self._memo[0] is not public or self._memo[1] != view.batch_size:
            self._memo = (public, view.batch_size, fishing_plan(view))
        return self._memo[2]

    def crafter_options(self, view: ServerView) -> dict:
        plan = self._plan(view)
        return plan.options(plan.high) if plan is not None else {"target": fishing_target(view)}

    def applies(self, view: ServerView) -> str | None:
        if (unfishable := unfishable_head(view, "bias")) is not None:
            return unfishable
        if view.as_gradient() is None:
            return NO_GRADIENT
        if view.batch_size is None:
            return NO_BATCH_SIZE
        if view.next_round is None:
            return "the server gets one round; feature fishing needs several with the same batch (malicious-server emulation)"
        if self._plan(view) is None:
            return "the server has no public data on which a feature of the head's input varies (threat model)"
        return None

    def run(self, view: ServerView, budget: Budget) -> Reconstruction:
        start = time.perf_counter()
        head = find_head(view.model, view.input_shape, view.device, view.num_classes)
        plan = self._plan(view)
        grads = {plan.high: view.as_gradient()}
        batch = int(view.batch_size)

        def count(low: float, high: float) -> float:
            return batch * float(grads[low][head.bias][plan.target] - grads[high][head.bias][plan.target])

        def ask(boundary: float) -> None:
            grads[boundary] = view.next_round(plan.options(boundary)).as_gradient()

        ask(plan.low)
        window = (plan.low, plan.high)
        while True:
            bounds = sorted(grads)
            windows = [(count(a, b), a, b) for a, b in zip(bounds, bounds[1:])]
            split = [(n, cut) for n, a, b in windows if n >= 1 + COUNT_TOLERANCE and (cut := plan.split(a, b)) is not None]
            single = [(abs(n - 1), a, b) for n, a, b in windows if abs(n - 1) <= COUNT_TOLERANCE and not plan.holds_tie(a, b)]
            if single:
                window, ended = min(single)[1:], "isolated"
                break
            ended = (
                "interrupted" if budget.interrupted()
                else "time_budget" if budget.seconds is not None and budget.elapsed() >= budget.seconds / 2
                else "max_rounds" if len(grads) >= self.max_rounds
                else None if split else "unsplittable"
            )  # fmt: skip
            if ended is not None:
                held = [(plan.holds_tie(a, b), n, a, b) for n, a, b in windows if n >= 1 - COUNT_TOLERANCE]
                if held:
                    window = min(held)[2:]
                break
            ask(min(split)[1])
        low, high = window
        fished = max(1, round(count(low, high)))
        # the window's examples, as the "high" round's model sees a batch of them: their gradient alone
        isolated = {k: grads[high][k] - grads[low][k] for k in grads[high]}
        labels = torch.full((fished,), plan.target, dtype=torch.long)
        rec, inversion = invert_isolated(view, head, isolated, labels, budget, through="features")
        details = {
            "target_class": plan.target, "feature": plan.feature, "multiplier": round(plan.multiplier, 1),
            "rounds": len(grads), "rounds_ended": ended, "window": [round(low, 6), round(high, 6)],
            "examples_fished": fished, "inversion": inversion, **rec.details,
        }  # fmt: skip
        if ended == "time_budget":
            details["cut_short"] = (f"its rounds were stopped at half the time budget after {len(grads)} of at most "
                                    f"{self.max_rounds}, before one example was isolated (it inverted {fished} together)")  # fmt: skip
        # the window's examples may be of any class: the difference of two rounds does not tell
        return dataclasses.replace(rec, attack=self.name, labels=None, seconds=time.perf_counter() - start, details=details)
