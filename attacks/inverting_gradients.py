"""Inverting Gradients: rebuild the batch by matching the update's direction.

Geiping et al. match the *direction* of the update rather than its size:
the loss is one minus the cosine similarity between the simulated and the
received update (all parameters as one vector) plus a total-variation prior,
minimised by Adam on the *signs* of the gradient (step 0.1, decayed by 10x at
3/8, 5/8 and 7/8 of the iterations), with the images clamped to the valid
box after every step, from several random restarts; the restart with the
smallest cosine distance is kept. The FedAvg variant unrolls the client's
local steps (same mini-batches, same learning rate) inside the loss, so the
server compares ``W_T - W_0`` with ``W_T - W_0``.

As in the authors' code, the optimised variable lives in the standardised
space of the data (``x = 0.5 + 0.25 z`` here: the usual CIFAR-like
standardisation, so the step size 0.1 and the TV weights keep their meaning);
the box is ``[0, 1]`` in pixels, the start ``z ~ N(0, 1)``.

fedguard runs the restarts side by side (as one batch through
``torch.func.vmap``, or in worker threads of plain autograd when that is
faster for the model on this device: see :mod:`fedguard.attacks._matching`),
forms the gradient of the cosine with respect to the simulated update in
closed form, differentiates with respect to the images only (a plain
``loss.backward()`` also forms second derivatives for every parameter, and
torch's double backward of a convolution a weight-shaped term the images'
gradient does not need: :mod:`fedguard.attacks._split_conv`), and fits the
learning-rate schedule to the time budget: when ``--time-budget`` would end
the run before ``--max-iterations``, the decays are placed at 3/8,
5/8 and 7/8 of the iterations that fit, from the speed measured between
iterations 5 and 15 (the first few carry one-time costs and would under-plan
the run).

Labels are fixed to those the server knows or recovered (iDLG for one
example, label counts for a batch). Recovered counts say nothing of which
local mini-batch held which example, so over several FedAvg mini-batches the
first restart takes the labels in class order and each other restart a
seeded shuffle of them, the best kept by the cosine as ever; a server that
knew the order rebuilds more. On an MLP, batch 8 in mini-batches of 2 (4
steps, lr 0.1, 200 iterations, seeds 0-2): 20.0, 23.4 and 16.6 dB with two
restarts in class order, 20.0, 23.4 and 21.7 with one of them shuffled,
21.8, 23.4 and 24.0 with eight restarts (TV 0), against 30.7, 34.3 and 27.9
with the labels in the client's order; through the audit (TV 0.01, 400 digits,
seeds 0-5) 18.1 dB on average in class order, 18.3 with the default two
restarts one of them shuffled, 19.1 with four. Learning the assignment along with the images,
as soft labels with or without the counts imposed by Sinkhorn scaling, did
no better than class order (docs/audit.md). The report says so
(``details["label_order"]``).

References
----------
Geiping, J., Bauermeister, H., Dröge, H. & Moeller, M. "Inverting Gradients -
How easy is it to break privacy in federated learning?" NeurIPS 2020.
"""

from __future__ import annotations

import time
from typing import ClassVar

import torch
import torch.nn.functional as F

from fedguard.threat import NO_BATCH_SIZE, ServerView
from fedguard.types import Reconstruction

from ._matching import MatchingObjective, ServerModel
from .base import ENGINES, MAX_STARTS, Attack, Budget, choice_option, number_option, register_attack, whole_option

__all__ = ["InvertingGradients", "MEAN", "STD", "milestones"]

#: Standardisation of the optimised variable: x = MEAN + STD * z.
MEAN, STD = 0.5, 0.25
#: Default TV weight. Geiping et al. use 1e-1..1e-4 by setting; 0.01 reaches 17-18 dB on a
#: ResNet-18 with BatchNorm at running statistics in 1000 iterations (docs/benchmarks.md),
#: where breaching's default 0.2 over-smooths short runs.
DEFAULT_TV = 0.01
#: The largest TV weight taken: the weighted term of a 3x224x224 image must stay finite in float32 (3.4e38); 1e308 had
#: been taken and the attack run on an infinite loss.
MAX_TV = 1e30
DEFAULT_RESTARTS = 2
#: Logit of a restart's own labels when they differ between restarts (softmax: one-hot to within e^-30).
LABEL_LOGIT = 30.0
#: The schedule is fitted to the time budget from the speed between these two iterations
#: (the first ones include one-time costs: engine choice, allocator and autograd warm-up).
CALIBRATION_START, CALIBRATION_END = 5, 15


def milestones(total: int) -> tuple[int, int, int]:
    """The three learning-rate decay points of Geiping et al.'s code for ``total`` iterations."""
    return (int(total // 2.667), int(total // 1.6), int(total // 1.142))


@register_attack("inverting_gradients")
class InvertingGradients(Attack):
    """Inverting Gradients (Geiping et al. 2020), batched restarts, FedSGD and unrolled FedAvg.

    Parameters
    ----------
    restarts : int
        Random restarts, optimised side by side; the best by cosine distance is kept.
    tv : float
        Weight of the total-variation prior.
    lr : float
        Adam step size (on signed gradients, standardised space).
    engine : {"auto", "vmap", "loop"}

    References
    ----------
    Geiping, J., Bauermeister, H., Dröge, H. & Moeller, M. "Inverting Gradients -
    How easy is it to break privacy in federated learning?" NeurIPS 2020.
    """

    name: ClassVar[str] = "inverting_gradients"
    title: ClassVar[str] = "Inverting Gradients"
    reference: ClassVar[str] = "Geiping, Bauermeister, Dröge & Moeller, Inverting Gradients, NeurIPS 2020"
    kind: ClassVar[str] = "images"
    default_iterations: ClassVar[int] = 2000

    def __init__(self, restarts: int = DEFAULT_RESTARTS, tv: float = DEFAULT_TV, lr: float = 0.1, engine: str = "auto"):
        self.restarts = whole_option(restarts, "Inverting Gradients restarts", 1, MAX_STARTS)
        self.tv = number_option(tv, "Inverting Gradients tv", positive=False)
        if self.tv > MAX_TV:
            raise ValueError(f"Inverting Gradients tv {self.tv:g} is more than its float32 loss holds (at most {MAX_TV:g}); "
                             f"give a weight such as {DEFAULT_TV:g}")  # fmt: skip
        self.lr = number_option(lr, "Inverting Gradients lr", positive=True)
        self.engine = choice_option(engine, "Inverting Gradients engine", ENGINES)

    def applies(self, view: ServerView) -> str | None:
        if view.batch_size is None:
            return NO_BATCH_SIZE
        if view.protocol == "fedavg" and (view.local_steps is None or view.local_lr is None):  # before the labels:
            return "the server does not know the local schedule to unroll (threat model)"  # label counts need it too
        if view.labels is None:
            return ("no labels to fix: none could be read off the update (no Linear head of one row per class, or DLG "
                    "found none within its budget); the threat model's labels=known audits a server that knows them")
        return None

    def run(self, view: ServerView, budget: Budget) -> Reconstruction:
        start_time = time.perf_counter()
        B, C = int(view.batch_size), view.num_classes
        R = self.restarts
        gen = torch.Generator(device="cpu").manual_seed(view.seed * 1000 + 23)
        z = torch.randn(R, B, *view.input_shape, generator=gen).to(view.device)
        lo, hi = view.threat.input_range
        mean, std = lo + MEAN * (hi - lo), STD * (hi - lo)
        z_lo, z_hi = (lo - mean) / std, (hi - mean) / std
        labels = F.one_hot(view.labels.to(view.device).long(), C).to(z.dtype)
        minibatches = -(-B // int(view.local_batch_size or B))
        shuffled = view.protocol == "fedavg" and minibatches > 1 and view.threat.labels != "known"  # recovered labels
        orders = [torch.arange(B)] + [torch.randperm(B, generator=gen) for _ in range(R - 1)] if shuffled else None
        # per restart, labels as near-one-hot logits (the objective's per-guess labels; their gradient goes unused)
        logits = LABEL_LOGIT * torch.stack([labels[order.to(labels.device)] for order in orders]) if shuffled else None
        server = ServerModel(view)
        objective = MatchingObjective(
            server,
            [view.tensors[n] for n in server.names],
            distance="cosine",
            to_pixels=lambda v: mean + std * v,
            labels=None if shuffled else labels,
            tv_weight=self.tv,
            engine=self.engine,
        )
        z.requires_grad_(True)
        opt = torch.optim.Adam([z], lr=self.lr)
        planned = budget.max_iterations
        marks = milestones(planned)
        stopped = None
        it = 0
        last_loss = torch.full((R,), float("nan"))
        calibration_started = 0.0
        while True:
            reason = budget.check(it, loss=float(last_loss.min()) if it else float("nan"), planned=planned)
            if reason:
                stopped = reason
                break
            loss, _, gz, _ = objective(z.detach(), logits)
            last_loss = loss.detach().cpu()
            z.grad = gz.sign()
            opt.step()
            with torch.no_grad():
                z.clamp_(z_lo, z_hi)
            it += 1
            for group in opt.param_groups:
                group["lr"] = self.lr * 0.1 ** sum(it >= m for m in marks)
            if it == CALIBRATION_START:
                calibration_started = time.perf_counter()
            if it == CALIBRATION_END and budget.seconds is not None:
                rate = (CALIBRATION_END - CALIBRATION_START) / max(time.perf_counter() - calibration_started, 1e-9)
                fits = it + int(rate * budget.remaining() * 0.97)
                if fits < planned:
                    planned = max(it + 1, fits)
                    marks = milestones(planned)
            if it >= planned and planned < budget.max_iterations:
                stopped = "time_budget"
                break
        with torch.no_grad():
            scores = objective.distance_only(z.detach(), logits).double().cpu()
        scores = torch.where(torch.isfinite(scores), scores, torch.full_like(scores, float("inf")))
        best = int(torch.argmin(scores))
        images = (mean + std * z.detach()).clamp(lo, hi).cpu()
        details = {}
        if shuffled:
            tried = "in class order" + (f" for one restart, shuffled for the {R - 1} other" + ("s" if R > 2 else "") +
                                        f" (the best: {'class order' if best == 0 else 'a shuffle'})" if R > 1 else "")
            details["label_order"] = (f"labels {view.label_source}, placed across the client's {minibatches} local "
                                      f"mini-batches {tried}: the update does not say which mini-batch held which example, "
                                      "and a server that knew would rebuild more (labels known to the server give that "
                                      "bound)")  # fmt: skip
        return Reconstruction(
            attack=self.name,
            images=images[best],
            labels=(view.labels if orders is None else view.labels[orders[best].to(view.labels.device)]).detach().cpu().long(),
            candidates=images,
            candidate_losses=tuple(float(s) for s in scores),
            iterations=it,
            seconds=time.perf_counter() - start_time,
            stopped=stopped or "max_iterations",
            details={
                "restarts": R,
                "best_restart": best,
                "cosine_distance": float(scores[best]),
                "tv": self.tv,
                "lr": self.lr,
                "planned_iterations": planned,
                "milestones": list(marks),
                "labels": "fixed: " + (view.label_source or "given"),
                "engine": objective.engine,
                "protocol": view.protocol + (f" unrolled ({view.local_steps} steps, lr {view.local_lr})" if view.protocol == "fedavg" else ""),
                **details,
            },
        )
