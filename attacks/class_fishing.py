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

from fedguard.threat import NO_GRADIENT, ServerView
from fedguard.types import Reconstruction

from ._head import find_head
from .base import Attack, Budget, register_attack
from .fc_inversion import FCInversion
from .inverting_gradients import InvertingGradients

__all__ = ["ClassFishing", "fishing_target"]


def fishing_target(view: ServerView) -> int:
    """The class a server fishes for: the rarest class present in the label counts it has, else class 0."""
    if view.label_counts is None:
        return 0
    counts = torch.as_tensor(view.label_counts).long().cpu()
    present = torch.nonzero(counts > 0).flatten()
    if not len(present):
        return 0
    return int(present[torch.argmin(counts[present])])


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
        head = find_head(view.model, view.input_shape, view.device, view.num_classes)
        if head is None or head.bias is None or head.weight not in view.tensors:
            return "the model has no classification head with a bias to fish with"
        if view.as_gradient() is None:
            return NO_GRADIENT
        return None

    def run(self, view: ServerView, budget: Budget) -> Reconstruction:
        start = time.perf_counter()
        head = find_head(view.model, view.input_shape, view.device, view.num_classes)
        target = int(torch.nonzero(head.module.weight.detach().abs().sum(1)).flatten()[0])
        count = 1
        if view.label_counts is not None:
            count = max(1, int(torch.as_tensor(view.label_counts)[target]))
        labels = torch.full((count,), target, dtype=torch.long)
        # the layers below the head hold the fished examples' gradient alone: attack it as a batch of `count`
        isolated = dataclasses.replace(
            view, tensors={k: v for k, v in view.as_gradient().items() if k not in (head.weight, head.bias)},
            protocol="fedsgd", batch_size=count, local_steps=None, local_lr=None, local_batch_size=None,
            labels=labels, label_counts=None, label_source="the fished class",
        )
        inversion = FCInversion() if FCInversion().applies(isolated) is None else InvertingGradients()
        rec = inversion.run(isolated, budget)
        details = {"target_class": target, "examples_fished": count, "inversion": inversion.name, **rec.details}
        return dataclasses.replace(
            rec, attack=self.name, labels=labels[: len(rec.images)], seconds=time.perf_counter() - start, details=details
        )
