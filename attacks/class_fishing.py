"""Class fishing: one class's examples isolated by a crafted head, then inverted (malicious-server emulator).

Wen et al. (ICML 2022) zero every non-target row of the classification head
and give those classes huge biases (:func:`fedguard.attacks.craft.class_fishing`).
Every non-target logit is then the same large number, the target class's
softmax probability is ~0, and only examples *of the target class* send a
gradient below the head: the update of every other layer is theirs alone. A
server that learnt the client's label counts in an earlier round (fedguard's
``label_counts`` attack does it from one update) fishes for a class the
client holds once, and the update becomes that one example's gradient.

fedguard's emulator picks that class (the smallest non-zero count the audit's
label attack found, else class 0), crafts the head, computes the client's
update under it, and inverts the isolated gradient: exactly with the
``∇W / ∇b`` quotient when a Linear layer sees the raw input
(:class:`~fedguard.attacks.fc_inversion.FCInversion`), otherwise with
Inverting Gradients (:class:`~fedguard.attacks.inverting_gradients.InvertingGradients`)
on the layers below the head, as the paper does.

References
----------
Y. Wen, J. Geiping, L. Fowl, M. Goldblum, T. Goldstein, "Fishing for User
Data in Large-Batch Federated Learning via Gradient Magnification", ICML 2022.
"""

from __future__ import annotations

import dataclasses
import time
from typing import ClassVar

import torch

from fedguard.layers import Head, find_head, head_not_updated
from fedguard.threat import ServerView
from fedguard.types import Reconstruction

from .base import Attack, Budget, register_attack
from .fc_inversion import FCInversion
from .inverting_gradients import InvertingGradients
from .mkor import invert_features, public_examples

#: The least bias of a fishing head's zeroed rows: a logit no input moves, far above any honest head's biases (the
#: inspect rule FG502 calls a bias of 50 high).
PLANTED_BIAS = 100.0

__all__ = ["ClassFishing", "fishing_target", "invert_isolated", "unfishable_head"]


def unfishable_head(view: ServerView, reads: str) -> str | None:
    """Why a server cannot fish with ``view``'s head: no classification head with a bias (whose swamping biases mute
    the other classes), or an update that holds nothing of the head's ``reads`` (``"weight"``: class fishing reads the
    fished row; ``"bias"``: feature fishing counts the examples by it); None when it can."""
    head = find_head(view.model, view.input_shape, view.device, view.num_classes)
    if head is None or head.bias is None:
        return "the model has no classification head with a bias to fish with"
    return head_not_updated(view.model, head, view.tensors, reads, "to fish with")


def fishing_target(view: ServerView) -> int:
    """The class a server fishes for: the rarest class present in the label counts it has, else class 0."""
    if view.label_counts is None:
        return 0
    counts = torch.as_tensor(view.label_counts).long().cpu()
    present = torch.nonzero(counts > 0).flatten()
    if not len(present):
        return 0
    return int(present[torch.argmin(counts[present])])


def invert_isolated(
    view: ServerView, head: Head, gradient: dict, labels: torch.Tensor, budget: Budget, through: str = "gradients"
) -> tuple[Reconstruction, str]:
    """Invert ``gradient``, the isolated gradient (or a positive multiple of it) of ``len(labels)`` examples fished with
    ``view.model`` (head ``head``).

    By FC inversion where a Linear layer sees the input (exact). Otherwise
    ``through="gradients"`` runs Inverting Gradients on the layers below the
    head, as a batch of its own; ``through="features"``, or where the update
    holds nothing below the head (layers the client froze, or no layers
    below it), reads the examples' mean feature off the fished row of the
    head (``∇W_t / ∇b_t``, exact for one example) and fits an image to it
    through the layers below
    (:func:`~fedguard.attacks.mkor.invert_features`, from the public data's
    mean image, or the box's middle without public data). Returns the reconstruction and the route taken.
    """
    start = time.perf_counter()
    count = len(labels)
    below = {k: v for k, v in gradient.items() if k not in (head.weight, head.bias)}
    isolated = dataclasses.replace(
        view, tensors=below, protocol="fedsgd", batch_size=count, local_steps=None, local_lr=None,
        local_batch_size=None, labels=labels, label_counts=None, label_source="the fished class", next_round=None,
    )  # fmt: skip
    if FCInversion().applies(isolated) is None:  # its "protocol" would be the isolated view's, not the client's
        rec = FCInversion().run(isolated, budget)
        return dataclasses.replace(rec, details={k: v for k, v in rec.details.items() if k != "protocol"}), "fc_inversion"
    if through == "gradients" and below:  # with no layer below the head in the update, the head's fished row
        return InvertingGradients().run(isolated, budget), "inverting_gradients"
    row = int(labels[0])
    feature = (gradient[head.weight][row] / gradient[head.bias][row]).detach().float().to(view.device)
    lo, hi = view.threat.input_range
    prior = public_examples(view)[0].mean(0, keepdim=True)
    image, fit = invert_features(view.model, head.module, feature[None], prior, (lo, hi), budget, budget.max_iterations)
    stopped = fit.pop("stopped")
    rec = Reconstruction(
        attack="feature_inversion", images=image.cpu().float().expand(count, *view.input_shape).clone(), labels=labels,
        iterations=int(fit["inversion_iterations"]), seconds=time.perf_counter() - start, stopped=stopped, details=fit,
    )  # fmt: skip
    return rec, "feature_inversion"


@register_attack("class_fishing")
class ClassFishing(Attack):
    """Class fishing (Wen et al., ICML 2022): a crafted head isolates one class; its examples are inverted.

    References
    ----------
    Y. Wen et al. "Fishing for User Data in Large-Batch Federated Learning
    via Gradient Magnification." ICML 2022.
    """

    name: ClassVar[str] = "class_fishing"
    title: ClassVar[str] = "Class fishing, malicious server"
    reference: ClassVar[str] = "Wen, Geiping, Fowl, Goldblum & Goldstein, Fishing for User Data, ICML 2022"
    kind: ClassVar[str] = "images"
    default_iterations: ClassVar[int] = InvertingGradients.default_iterations
    emulates: ClassVar[str | None] = "class_fishing"
    default: ClassVar[bool] = False

    def crafter_options(self, view: ServerView) -> dict:
        return {"target": fishing_target(view)}

    def applies(self, view: ServerView) -> str | None:
        return unfishable_head(view, "weight")

    def planted(self, view: ServerView) -> bool:
        """A fishing head sent: rows of exactly zero whose biases swamp every logit (``PLANTED_BIAS`` or more; the
        paper's code uses 1000), beside at least one row that is not zero (the class fished for)."""
        head = find_head(view.model, view.input_shape, view.device, view.num_classes)
        if head is None or head.bias is None:
            return False
        weight, bias = head.module.weight.detach(), head.module.bias.detach()
        zero = (weight == 0).all(dim=1)
        return bool(zero.any() and (~zero).any() and (bias[zero] >= PLANTED_BIAS).all())

    def run(self, view: ServerView, budget: Budget) -> Reconstruction:
        start = time.perf_counter()
        head = find_head(view.model, view.input_shape, view.device, view.num_classes)
        target = int(torch.nonzero(head.module.weight.detach().abs().sum(1)).flatten()[0])
        gradient = view.gradient_direction()
        if head.bias is not None and head.bias in gradient and float(gradient[head.bias][target]) >= 0:
            # p - y summed over the batch: negative for the class's examples, and every other example's p is about 0
            # behind the zero rows' biases: no example of the class (it had inverted a zero gradient into noise)
            return Reconstruction(
                attack=self.name, images=torch.zeros(0, *view.input_shape), labels=torch.zeros(0, dtype=torch.long),
                seconds=time.perf_counter() - start, stopped="done",
                details={"target_class": target, "examples_fished": 0,
                         "why_nothing": f"the head's update shows no example of the class fished for ({target}): its "
                                        "row is not pulled toward it (none in the batch, or noise hides them)"},
            )  # fmt: skip
        count = 1
        if view.label_counts is not None:
            count = max(1, int(torch.as_tensor(view.label_counts)[target]))
        labels = torch.full((count,), target, dtype=torch.long)
        # the layers below the head and the head's target row hold the fished examples' gradient alone
        # FC inversion's quotient and Inverting Gradients' cosine need no scale, so no local schedule
        rec, inversion = invert_isolated(view, head, gradient, labels, budget)
        details = {"target_class": target, "examples_fished": count, "inversion": inversion, **rec.details}
        return dataclasses.replace(
            rec, attack=self.name, labels=labels[: len(rec.images)], seconds=time.perf_counter() - start, details=details
        )
