"""Per-class label counts of a batch from the last layer's update (Geng et al.).

For cross-entropy over a softmax, the gradient of the head's bias for class
``j`` averaged over a batch of ``B`` examples is

    g_b[j] = p̄_j - n_j / B,

where ``p̄_j`` is the batch-mean softmax probability of class ``j`` and
``n_j`` the number of examples labelled ``j``. Without a bias, the row sums of
the weight gradient give the same with a factor ``Ô`` (the mean sum of the
head's input features; non-negative after ReLU/sigmoid): ``sum_k g_W[j, k] ≈
Ô (p̄_j - n_j / B)``. Where the head's input can be negative (Tanh, LayerNorm)
its sum is about zero and changes sign from example to example, so the rows
are read along another direction of the features (:func:`readout`). The
server knows everything but ``p̄`` and ``n``, so it
estimates ``p̄`` by running the model on data it has and solves for ``n``:

* One example -- no estimate: its class is the one whose entry is negative
  (iDLG, :func:`~fedguard.attacks.idlg.idlg_label`), exact where ``p̂``
  from the server's data could outweigh a confident model's small gradient.
* FedSGD -- ``p̂`` is the mean softmax over the server's public data of the
  domain (Geng et al. use random dummy inputs; public data of the task is
  closer to the client's and is what a server realistically holds). With
  enough labelled public data per class, the class-conditional means ``M``
  give a better model, ``p̄ ≈ Mᵀ n / B``, and ``n`` solves the linear system
  ``(Mᵀ - I) n / B = g_b`` under ``n ≥ 0``, ``Σ n = B``.
* FedAvg -- the update ``W_T - W_0`` is turned into one average gradient
  ``(W_0 - W_T) / (T·lr)`` (Geng et al.); ``p̄`` now moves along the local
  training, and it moves with ``n`` itself: the more examples of a class,
  the faster the client's softmax learns it. The server simulates the
  client's ``T`` local steps from ``W_0`` on public data weighted to counts
  ``n`` and solves ``n = B (p̄_sim(n) - g_b)`` for ``n`` in ``[0, B]``
  by bounded least squares (scipy's ``least_squares``), starting from the
  average of ``p̂`` at ``W_0`` and ``W_T``, within ``MAX_SIMULATIONS``
  simulations (and, where the weight update's estimate follows, half the time
  budget left: ``SOLVER_SHARE``). BatchNorm layers in the simulation
  normalise by the simulation set's statistics weighted to ``n``, as the
  client's normalise by its batch of that composition (a BatchNorm MLP's
  skewed batches at lr 0.1: 138 → 170 of 180 counts exact;
  docs/benchmarks.md). Iterating the equation as a fixed point does not do:
  at lr 0.01 the map's slope nears or passes one and the iteration stalls
  or swings (measured on the DLG LeNet, 5 steps, batches 8-64: 64 % of
  counts exact after three rounds, 95 % solved; MINPACK's unbounded root
  finder: 78 %).
* FedAvg, second estimate -- where a model learns the client's batch within
  the local steps (the BatchNorm ConvNet at lr 0.01), the bias equation is
  nearly flat in ``n`` and its solve does not close. The head's *weight*
  update then carries the counts (RLU, Chen & Vikalo): it is the class means
  of the head's input weighted by how wrong the softmax was on each class.
  It is read along the directions that vary least within a class (within
  each row's own class where the bias equation's solve has not closed,
  ``_closed``), cross-fitted (``_error_mass``), and divided by how well the client learns
  its own examples, measured on public batches of the estimated counts
  trained the way the client trains (``_feature_counts``). The two estimates
  are weighed by their inverse variances: the weight update's from the
  spread of the public examples around their class means, the bias
  equation's from its misfit at the solution (``MISFIT_SCALE`` times it, at
  least ``MIN_EQUATION_SD``) and its error on public batches like the
  client's (``_equation_sd``; docs/benchmarks.md). On the DLG LeNet, whose
  sigmoid features barely separate the classes, the solve's misfit is small
  and the bias equation decides; on the ConvNet at lr 0.01 the weight update
  does (80.8 % of the counts exact, 6 trials × batches 8-64).

Counts are rounded to integers that sum to ``B`` in proportion to the
estimate (Hamilton's method: scaled to ``B``, then largest remainders). They
seed DLG and Inverting Gradients with labels (Geiping et al. assume known
labels; Geng et al. show they can be recovered).

References
----------
Geng, J., Mou, Y., Li, F., Li, Q., Beyan, O., Decker, S. & Rong, C. "Towards
General Deep Leakage in Federated Learning." arXiv:2110.09074 (2021).
Wainakh, A., Ventola, F., Müßig, T., et al. "User-Level Label Leakage from
Gradients in Federated Learning." PoPETs 2022.
Chen, H. & Vikalo, H. "Recovering Labels from Local Updates in Federated
Learning." ICML 2024 (arXiv:2405.00955).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import time
from typing import Callable, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedguard.layers import Head, find_head, forward_flops
from fedguard.threat import NO_BATCH_SIZE, ServerView
from fedguard.types import Reconstruction
from fedguard.update import compute_update, minibatch_slices

from .base import KNOWN_LABELS, Attack, Budget, register_attack, unreadable_head

__all__ = ["LabelCounts", "round_counts", "estimate_counts", "readout", "CUT_BY_TIME_BUDGET"]

#: Per class, at least this many labelled public examples before the class-conditional model is used.
MIN_PER_CLASS_FOR_CONDITIONAL = 10
#: Public examples per class used to simulate FedAvg's local training.
SIMULATION_PER_CLASS = 12
#: Public examples the softmax and head-input statistics are measured on (the audit passes them shuffled); the
#: weight update's class means need many (docs/benchmarks.md: 256 gave 64 % of the ConvNet's counts, 1 789 gave 68 %).
#: As many as ``STATS_FLOPS`` of forward passes allow at each point of the path (1-3 s on 2 CPU cores):
#: all 2 048 on LeNet and the ConvNet, the floor of 256 on ResNet-18.
MAX_SERVER_EXAMPLES = 2048
MIN_SERVER_EXAMPLES = 256
STATS_FLOPS = 1e11
#: Simulated local trainings the FedAvg solver may run (its finite differences included: scipy's ``max_nfev`` leaves
#: them out, ten a step for ten classes), and its tolerance in examples. The work is bounded by counts, not
#: by seconds, so that the same seed gives the same counts on any machine: only the attack's time budget (reported as
#: ``stopped: time_budget``) cuts it by the clock. It had stopped at 30 s, and the weight update at 20 s, whatever the
#: budget: on a loaded machine the benchmark's ConvNet at lr 0.01 got 161 of 240 counts, on an idle one 194.
MAX_SIMULATIONS = 60
#: Share of the time budget left that the solver may take where the weight update's estimate follows it (which then
#: has the rest): under the audit's default budget of 20 s the solver had taken all of it on the ConvNet.
SOLVER_SHARE = 0.5
SOLVER_TOLERANCE = 1e-3
#: The solver's finite-difference step, relative to the counts: at 1e-3 the ConvNet's solve (lr 0.003) stalled at a
#: residual above the true counts' and its counts were 85.0 % exact; at 1e-2 it closes, 91.7 % (docs/benchmarks.md).
SOLVER_DIFF_STEP = 1e-2
#: Points of the path from W_0 to W_T (fractions of the update) the head's statistics are measured at.
PATH_POINTS = (0.0, 0.5, 1.0)
#: The bias equation's standard deviation, in examples: its misfit at the solution times this, at least the floor, and at
#: least its error on ``EQUATION_CHECKS`` public batches of the estimated composition.
MISFIT_SCALE = 4.0
MIN_EQUATION_SD = 0.2
EQUATION_CHECKS = 4
#: The least standard deviation of a count from the head's weight update.
MIN_FEATURE_SD = 0.2
#: Shrinkage of the head input's within-class covariance towards its mean variance.
COVARIANCE_SHRINKAGE = 0.1
#: Folds the head's weight update is cross-fitted over.
CROSS_FIT_FOLDS = 5
#: Rounds of re-measuring ``ā`` at the estimated counts, and public batches trained per round.
CONFIDENCE_ROUNDS = 3
CONFIDENCE_DRAWS = 8


class _Stop(Exception):
    """Time ran out, or the user stopped, inside the FedAvg solver."""


def _scaled_to(counts: np.ndarray, total: float) -> np.ndarray:
    """``counts`` scaled to sum to ``total`` (uniform when they sum to zero)."""
    whole = counts.sum()
    return counts * (total / whole) if whole > 0 else np.full_like(counts, total / max(len(counts), 1))


def round_counts(raw: np.ndarray, total: int) -> np.ndarray:
    """Non-negative integers summing to ``total`` in proportion to ``raw`` (Hamilton's method).

    ``raw`` is scaled to sum to ``total`` and the remainder handed out by
    largest remainders. Unscaled, an estimate that falls short of ``total``
    on a skewed batch's classes gave one phantom example to each class the
    batch does not hold (ConvNet, FedAvg at lr 0.003 and 0.01, 5 skewed
    batches: 62 % and 44 % of the counts exact, 88 % and 88 % scaled; random
    batches unchanged; docs/benchmarks.md).
    """
    raw = _scaled_to(np.clip(np.nan_to_num(np.asarray(raw, dtype=np.float64), nan=0.0), 0.0, None), total)
    floor = np.floor(raw)
    rest = max(int(total - floor.sum()), 0)
    floor[np.argsort(floor - raw, kind="stable")[:rest]] += 1
    return floor.astype(np.int64)


def _solve_conditional(M: np.ndarray, g: np.ndarray, batch: int) -> np.ndarray:
    """n >= 0 with Σn = B minimising ||(Mᵀ - I) n / B - g||."""
    from scipy.optimize import lsq_linear

    C = len(g)
    A = (M.T - np.eye(C)) / batch
    w = 100.0
    A2 = np.vstack([A, w * np.ones((1, C)) / batch])
    b2 = np.concatenate([g, [w]])
    return lsq_linear(A2, b2, bounds=(0.0, float(batch))).x


class _Stats:
    """Softmax and head-input statistics of a model on the server's data (in training mode, in chunks of the batch
    size); once ``out_of_time()`` says so, of the chunks measured by then (at least one)."""

    def __init__(self, model: nn.Module, head: Head, inputs: torch.Tensor, labels: torch.Tensor | None, chunk: int,
                 num_classes: int, out_of_time: Callable[[], bool]):  # fmt: skip
        net = copy.deepcopy(model)
        net.train()
        feats: list[torch.Tensor] = []
        hook = dict(net.named_modules())[head.name].register_forward_hook(lambda m, a, o: feats.append(a[0].detach()))
        probs = []
        chunk = max(2, int(chunk))
        measured = 0
        try:
            with torch.no_grad():
                for start in range(0, len(inputs), chunk):
                    if probs and out_of_time():
                        break
                    xb = inputs[start : start + chunk]
                    if len(xb) < 2:
                        xb = inputs[-2:] if len(inputs) >= 2 else xb.expand(2, *xb.shape[1:])
                    probs.append(F.softmax(net(xb), dim=-1))
                    measured = min(len(inputs), start + chunk)
        finally:
            hook.remove()
        self._summarise(torch.cat(probs)[:measured].double().cpu(), torch.cat(feats)[:measured].flatten(1).double().cpu(),
                        labels, num_classes)  # fmt: skip

    def _summarise(self, probs: torch.Tensor, features: torch.Tensor, labels: torch.Tensor | None, num_classes: int) -> None:
        self.probs, self.features, self.examples = probs, features, len(probs)
        self.p_mean = self.probs.mean(0).numpy()
        self.conditional = None
        if labels is not None:
            y = labels[: len(self.probs)].cpu()
            counts = torch.bincount(y, minlength=num_classes)
            if int(counts.min()) >= MIN_PER_CLASS_FOR_CONDITIONAL:
                self.conditional = np.stack([self.probs[y == j].mean(0).numpy() for j in range(num_classes)])

    def first(self, n: int, labels: torch.Tensor | None, num_classes: int) -> "_Stats":
        """The statistics of the first ``n`` examples only (points of a path cut short at different lengths)."""
        out = copy.copy(self)
        out._summarise(self.probs[:n], self.features[:n], labels, num_classes)
        return out


def _shifted(model: nn.Module, tensors: dict, scale: float) -> nn.Module:
    net = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name in tensors:
                p.add_(tensors[name].to(p.dtype) * scale)
    return net


def readout(features: torch.Tensor) -> torch.Tensor:
    """The direction ``u`` a bias-free head's weight gradient is read along: ``g_W u ≈ Ô (p̄ - n / B)`` with
    ``Ô`` the mean of ``o · u`` over the head's inputs ``o`` (``features``, one row an example), which needs ``o · u``
    about the same for every example.

    The all-ones vector (Geng et al.'s row sums) when the features are non-negative (after ReLU or sigmoid).
    Otherwise the row sums fail: after LayerNorm every example's features sum to about zero, after Tanh the sum
    changes sign from example to example. Then the direction along which the features' mean stands out most
    against their spread, ``(Σ + λI)⁻¹ ō`` (Fisher's criterion for one class; ``Σ`` shrunk by
    ``COVARIANCE_SHRINKAGE`` towards its mean variance). Measured on an MLP whose bias-free head reads Tanh,
    LayerNorm or GELU features (batches of 16, 4 seeds, 40 counts each): FedSGD 7, 6 and 20 exact with the row
    sums, 40, 40 and 40 along this direction; FedAvg (3 steps, lr 0.1) 36, 31 and 34, then 40, 36 and 40. After
    ReLU or sigmoid the row sums stay (40 of 40 either way)."""
    features = features.double()
    if float(features.min()) >= 0:
        return torch.ones(features.shape[1], dtype=features.dtype, device=features.device)
    mean = features.mean(0)
    centred = features - mean
    covariance = centred.T @ centred / max(len(features) - 1, 1)
    spread = float(covariance.diagonal().mean())
    covariance = (1 - COVARIANCE_SHRINKAGE) * covariance + COVARIANCE_SHRINKAGE * max(spread, 1e-12) * torch.eye(
        len(mean), dtype=covariance.dtype, device=covariance.device)
    return torch.linalg.solve(covariance, mean)  # o · u averages ōᵀ(Σ + λI)⁻¹ō > 0


def _head_signal(grads: dict, head: Head, direction: torch.Tensor | None) -> np.ndarray:
    """The head's bias gradient (``direction`` None), or its weight gradient read along ``direction``."""
    if direction is None:
        return grads[head.bias].double().cpu().numpy()
    return (grads[head.weight].double() @ direction.to(grads[head.weight].device)).cpu().numpy()


def _raw_counts(g_head: np.ndarray, stats_p: np.ndarray, batch: int, scale: float, conditional) -> np.ndarray:
    """``B (p̄ - g / scale)``, or the class-conditional solve; ``scale`` is 1 for the bias, ``Ô`` for the weight rows."""
    target = g_head / max(scale, 1e-12)
    if conditional is not None:
        return _solve_conditional(conditional, target, batch)
    return batch * (stats_p - target)


def _sgd_step(params: list[torch.Tensor], loss: torch.Tensor, lr: float) -> None:
    """One plain SGD step on ``params`` (the client's local update rule)."""
    grads = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.sub_(lr * g)


def _weighted_batch_norm(module: nn.modules.batchnorm._BatchNorm, share: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``module``'s training-mode output on ``x`` with the batch statistics weighted per example by ``share`` (sum one)."""
    dims = [0, *range(2, x.dim())]
    per_channel = [1, -1] + [1] * (x.dim() - 2)
    w = share.reshape(-1, *[1] * (x.dim() - 1)) / x[0, 0].numel()
    mean = (w * x).sum(dims, keepdim=True)
    var = (w * (x - mean) ** 2).sum(dims, keepdim=True)
    out = (x - mean) * torch.rsqrt(var + module.eps)
    if module.affine:
        out = out * module.weight.reshape(per_channel) + module.bias.reshape(per_channel)
    return out


def _simulate(model: nn.Module, counts: np.ndarray, xs: torch.Tensor, ys: torch.Tensor, batch: int, steps: int, lr: float, num_classes: int) -> np.ndarray:
    """Mean batch softmax along ``steps`` SGD steps on ``(xs, ys)`` weighted to the composition ``counts``.

    BatchNorm layers normalise by the simulation set's statistics weighted the same way: the client's batch of
    composition ``counts`` is what its BatchNorm sees, not the simulation set's even mix of classes.
    """
    per_class = torch.bincount(ys, minlength=num_classes).clamp(min=1).to(xs.device)
    n = torch.as_tensor(counts, dtype=xs.dtype, device=xs.device)
    w = n[ys] / (batch * per_class[ys])
    net = copy.deepcopy(model)
    net.train()
    for m in net.modules():  # w sums to one: counts sum to B, and every class has simulation examples
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.forward = functools.partial(_weighted_batch_norm, m, w)
    params = [p for p in net.parameters() if p.requires_grad]
    acc = torch.zeros(num_classes, dtype=torch.float64, device=xs.device)
    for _ in range(steps):
        out = net(xs)
        acc += (w[:, None] * F.softmax(out.detach(), dim=-1)).sum(0).double()
        _sgd_step(params, (w * F.cross_entropy(out, ys, reduction="none")).sum(), lr)
    return (acc / steps).cpu().numpy()


def _discriminant_duals(H: torch.Tensor, y: torch.Tensor, num_classes: int, within: int | None = None) -> torch.Tensor:
    """Directions ``D`` with ``M D = I`` for the class means ``M`` of ``H`` that vary least within a class.

    ``D = Σ⁻¹ Mᵀ (M Σ⁻¹ Mᵀ)⁻¹`` (the generalised least-squares fit of
    ``ΔW ≈ -(lr/B) S M``) with ``Σ`` the within-class covariance, pooled over
    the classes or, with ``within``, that one class's alone, shrunk by
    ``COVARIANCE_SHRINKAGE`` towards its mean variance (cross-fitted, 0.03, 0.1
    and 0.3 are within 2 points of one another on the ConvNet at lr 0.01); by Woodbury's
    identity when there are fewer examples than features. Along the class
    means themselves (the plain least-squares fit), 256 public examples gave
    64 % of the counts exact there, all 1 789 gave 68 %, these directions 74 %
    (ConvNet, lr 0.01, 4 trials × batches 8-64, with ``ā`` from the path).
    """
    M = torch.stack([H[y == k].mean(0) for k in range(num_classes)])
    R = H - M[y] if within is None else (H - M[y])[y == within]
    N, d = R.shape
    mean_var = float((R**2).sum()) / (N * d)
    a, c = (1 - COVARIANCE_SHRINKAGE) / N, COVARIANCE_SHRINKAGE * (mean_var if mean_var > 0 else 1.0)
    if d <= N:
        X = torch.linalg.solve(a * (R.T @ R) + c * torch.eye(d, dtype=H.dtype), M.T)
    else:
        X = (M.T - R.T @ torch.linalg.solve((c / a) * torch.eye(N, dtype=H.dtype) + R @ R.T, R @ M.T)) / c
    return X @ torch.linalg.inv(M @ X)


def _error_mass(weight_update: torch.Tensor, path: list[_Stats], labels: torch.Tensor, confidence: torch.Tensor, batch: int, steps: int, lr: float,
                own_class: bool = False) -> tuple[np.ndarray, np.ndarray] | None:  # fmt: skip
    """``-S[k, k] = T n_k (1 - ā_k)`` from the head's weight update, and its standard deviation (RLU, Chen & Vikalo 2024).

    ``ΔW = -(lr/B) Σ_t (P_t - Y)ᵀ H_t ≈ -(lr/B) S M``, where ``M`` holds the
    class means of the head's input and ``S[j, k] = Σ_t Σ_{i in k} (p_ij - δ_jk)``;
    ``ā_k`` is the mean confidence of class ``k`` in its own examples along the
    local steps. ``H`` is measured on the server's labelled data at
    ``PATH_POINTS`` of the known path from ``W_0`` to ``W_T`` and ``S`` is read
    off along :func:`_discriminant_duals`. Fitted on the same examples they are
    measured on, those directions overfit: the client's examples project on
    their own class's direction at about 0.92, the public ones at 0.97-1.0
    (ConvNet, 2 048 features, 1 789 public examples), which shrinks ``S``. So
    ``S`` is cross-fitted: the directions from ``CROSS_FIT_FOLDS - 1`` folds,
    the class means they see from the held-out fold, ``S = ΔW' D A⁻¹``
    averaged over the folds (measured: the fitted ``S[k, k]`` over the true one
    0.93 without, 0.96 with).

    The error left is the client's own examples straying from the class means:
    class ``j``'s mean strays by its examples' spread over ``n_j``, which
    moves ``S[k, k]`` by ``S[k, j]`` times that spread projected on ``D[:, k]``;
    the standard deviation adds these up at the counts ``confidence`` (the
    path's ``ā``) gives. Most of that error is class ``k``'s own examples in
    row ``k`` (``S[k, k]`` is the row's largest entry), so with ``own_class``
    row ``k`` is read along directions that vary least within class ``k``
    alone (its own shrunk covariance in :func:`_discriminant_duals`): on the
    ConvNet at lr 0.01 the error of ``-S[k, k]`` fell from 7.6 to 6.2 % (four
    batches of 32-64). The standard deviation stays the pooled directions',
    which these directions make smaller, so the weight update may be weighed
    a little lightly there (docs/benchmarks.md's figures were measured so).
    """
    W = weight_update.detach().double().cpu().flatten(1)
    H = torch.stack([s.features for s in path]).mean(0)
    y = labels[: len(H)].cpu()
    C = W.shape[0]
    per_class = torch.bincount(y, minlength=C)
    if int(per_class.min()) < 2 or W.shape[1] != H.shape[1]:
        return None
    folds = min(CROSS_FIT_FOLDS, int(per_class.min()) // 2)
    fold = torch.empty_like(y)  # dealt out within each class, so every fold holds at least two of each
    for k in range(C):
        members = torch.nonzero(y == k).flatten()
        fold[members] = torch.arange(len(members)) % folds
    G = -(batch / lr) * W

    def read(fit: torch.Tensor, held: torch.Tensor | None) -> torch.Tensor:
        """``S`` read along directions fitted on the examples ``fit``, scaled by the class means of ``held``."""
        def through(D: torch.Tensor) -> torch.Tensor:
            if held is None:
                return G @ D
            return G @ D @ torch.linalg.inv(torch.stack([(H[held & (y == k)] @ D).mean(0) for k in range(C)]))

        if not own_class:
            return through(_discriminant_duals(H[fit], y[fit], C))
        return torch.stack([through(_discriminant_duals(H[fit], y[fit], C, within=k))[k] for k in range(C)])

    try:
        D = _discriminant_duals(H, y, C)
        if folds >= 2:
            S = torch.stack([read(fold != f, fold == f) for f in range(folds)]).mean(0)
        elif own_class:
            S = read(torch.ones_like(y, dtype=torch.bool), None)
        else:  # fitted on every example: the pooled directions just computed
            S = G @ D
    except RuntimeError:  # singular class means (e.g. identical inputs)
        return None
    mass = (-S.diagonal()).clamp(min=0)
    counts = mass / (steps * (1 - confidence))
    spread_on_duals = torch.stack([(H[y == j] @ D).var(0) for j in range(C)])  # [j, k]
    sd = ((S**2) * spread_on_duals.T / counts.clamp(min=1.0)[None, :]).sum(1).sqrt()
    if not (torch.isfinite(mass).all() and torch.isfinite(sd).all()):
        return None
    return mass.numpy(), sd.numpy()


def _path_confidence(path: list[_Stats], labels: torch.Tensor) -> torch.Tensor:
    """Mean softmax of each class in the public examples of that class, over the path's points."""
    P = torch.stack([s.probs for s in path]).mean(0)
    y = labels[: len(P)].cpu()
    return torch.stack([P[y == k, k].mean() for k in range(P.shape[1])]).clamp(max=0.99)


def _draw(pool: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` indices into ``range(pool)``, without replacement while the pool lasts."""
    if n <= pool:
        return torch.randperm(pool, generator=gen)[:n]
    return torch.randint(pool, (n,), generator=gen)


def _public_batch(pools: list[torch.Tensor], counts: np.ndarray, gen: torch.Generator) -> torch.Tensor | None:
    """Indices of a shuffled public batch of composition ``counts`` drawn from each class's ``pools``; None if empty."""
    pick = [pools[k][_draw(len(pools[k]), int(counts[k]), gen)] for k in range(len(pools)) if counts[k] > 0 and len(pools[k])]
    if not pick:
        return None
    idx = torch.cat(pick)
    return idx[torch.randperm(len(idx), generator=gen)]


def _own_confidence(view: ServerView, xs: torch.Tensor, ys: torch.Tensor, counts: np.ndarray, gen: torch.Generator, out_of_time: Callable[[], bool]) -> np.ndarray:
    """Mean confidence of each class in its own examples along the local steps, on public batches of composition ``counts``.

    A client learns its own examples within the local steps, faster than the
    public examples of their classes (ConvNet at lr 0.01: confidence 0.35 on a
    class's client examples, 0.07 on the public ones along the same path), and
    the more examples of a class the faster. So public batches of the same
    composition are trained as the client trains (its schedule of mini-batches)
    ``CONFIDENCE_DRAWS`` times; ``nan`` for a class with no examples.
    """
    C = view.num_classes
    pools = [torch.nonzero(ys == k).flatten() for k in range(C)]
    own = torch.zeros(C, dtype=torch.float64)
    seen = torch.zeros(C, dtype=torch.float64)
    for _ in range(CONFIDENCE_DRAWS):
        if out_of_time():
            break
        idx = _public_batch(pools, counts, gen)
        if idx is None:
            break
        bx, by = xs[idx.to(xs.device)], ys[idx.to(xs.device)]
        net = copy.deepcopy(view.model)
        net.train()
        params = [p for p in net.parameters() if p.requires_grad]
        for sl in minibatch_slices(len(by), view.local_batch_size or len(by), int(view.local_steps)):
            out = net(bx[sl])
            p_own = F.softmax(out.detach(), dim=-1).gather(1, by[sl, None]).flatten().double().cpu()
            own.index_add_(0, by[sl].cpu(), p_own)
            seen.index_add_(0, by[sl].cpu(), torch.ones_like(p_own))
            _sgd_step(params, F.cross_entropy(out, by[sl]), float(view.local_lr))
    return (own / seen).numpy()


def _feature_counts(view: ServerView, path: list[_Stats], xs: torch.Tensor, ys: torch.Tensor, weight_update: torch.Tensor, batch: int,
                    out_of_time: Callable[[], bool], own_class: bool = False) -> tuple[np.ndarray, np.ndarray] | None:  # fmt: skip
    """Counts and their standard deviations from the head's weight update: ``n_k = -S[k, k] / (T (1 - ā_k))``.

    ``-S[k, k]`` comes from :func:`_error_mass`. ``ā`` starts from the public
    examples along the path and is then re-measured ``CONFIDENCE_ROUNDS`` times
    on public batches of the counts estimated so far, rounded to ``B`` in
    proportion (:func:`_own_confidence`; RLU simulates the local training on
    auxiliary data the same way). Rounded by largest remainders alone, a
    skewed batch's shortfall went to the classes it does not hold, one
    example each, and its own classes' ``ā`` was measured at too few examples
    (ConvNet, 5 skewed batches at lr 0.003: 26 % of the counts exact, 62 %
    with these batches in proportion, 88 % with the final counts too).

    Measured (ConvNet, lr 0.01, 5 steps, 4 trials × batches 8-64, the rest of
    digits as public data, per cent of 160 counts exact): with the client's
    true ``S`` and its own ``ā``, 100 %; the fitted ``S`` with the client's
    own ``ā`` 87.5-89 %, with ``ā`` from the path 71 %, from public batches of
    the true composition 90 %, re-measured at the estimated counts over three
    rounds 80-83 %. The fitted ``S`` from 256 public examples by plain least
    squares gave 64 % (docs/benchmarks.md).
    """
    steps = int(view.local_steps)
    path_conf = _path_confidence(path, ys)
    fit = _error_mass(weight_update, path, ys, path_conf, batch, steps, float(view.local_lr), own_class)
    if fit is None:
        return None
    mass, mass_sd = fit
    path_conf = path_conf.numpy()
    conf = path_conf
    gen = torch.Generator(device="cpu").manual_seed(view.seed + 41)
    for _ in range(CONFIDENCE_ROUNDS):
        counts = mass / (steps * (1 - conf))
        if out_of_time():
            break
        own = _own_confidence(view, xs, ys, round_counts(counts, batch), gen, out_of_time)
        conf = np.clip(np.where(np.isnan(own), path_conf, own), 0.0, 0.99)
    scale = steps * (1 - conf)
    return mass / scale, mass_sd / scale


def _closed(misfit: float) -> bool:
    """Whether the bias equation's solve closed: its misfit, ``MISFIT_SCALE`` times, within ``MIN_EQUATION_SD``.

    Where it did not, the weight update carries the counts, and :func:`_error_mass` reads each row of the head's
    update along directions from its own class's public examples. Measured (docs/benchmarks.md): the ConvNet at
    lr 0.01, whose solves never close, 367 → 390 of 480 counts exact over 12 trials; LeNet at lr 0.01 and the ConvNet
    at lr 0.003, whose solves close on all but one batch, unchanged; skewed batches 2 counts up or down. Used
    everywhere, the same readout cost LeNet at lr 0.01 7 of 240 counts.
    """
    return MISFIT_SCALE * misfit <= MIN_EQUATION_SD


def _equation_sd(view: ServerView, head: Head, direction: torch.Tensor | None, xs: torch.Tensor, ys: torch.Tensor, simulated: torch.Tensor,
                 counts: np.ndarray, equation: Callable[[np.ndarray, np.ndarray], np.ndarray], misfit: float,
                 out_of_time: Callable[[], bool]) -> np.ndarray:  # fmt: skip
    """Standard deviation of the bias equation's counts, partly measured on public batches of the estimated composition.

    Each of ``EQUATION_CHECKS`` public batches of composition ``counts``
    (drawn from the examples the simulation does not use, the indices
    ``simulated``, in each class that has more than ``SIMULATION_PER_CLASS``
    of them) is trained as the client trains, and the
    equation is evaluated at its true counts: what is left is the
    simulation's error for a batch like the client's, in examples. Per class,
    its root mean square, at least ``MISFIT_SCALE`` times the solve's misfit
    and ``MIN_EQUATION_SD``. The solve can close (misfit near zero) where the
    simulation is wrong: a BatchNorm MLP at lr 0.3 learns its batch within
    the local steps, its equation turns flat, and with the floor alone the
    bias equation outweighed a better weight update (docs/benchmarks.md).
    """
    spare = torch.ones(len(ys), dtype=torch.bool, device=ys.device)
    spare[simulated] = False
    members = [torch.nonzero(ys == k).flatten() for k in range(view.num_classes)]
    pools = [m[spare[m]] if int(spare[m].sum()) > SIMULATION_PER_CLASS else m for m in members]
    gen = torch.Generator(device="cpu").manual_seed(view.seed + 53)
    to_gradient = -1.0 / (int(view.local_steps) * float(view.local_lr))
    squares = []
    for _ in range(EQUATION_CHECKS):
        idx = _public_batch(pools, counts, gen)
        if idx is None or len(idx) != int(counts.sum()) or out_of_time():
            break  # no public batch of this composition: a class it holds has no public examples
        idx = idx.to(xs.device)
        update = compute_update(view.model, xs[idx], ys[idx], protocol="fedavg", local_steps=int(view.local_steps),
                                local_lr=float(view.local_lr), local_batch_size=view.local_batch_size,
                                allow_divergence=True)  # fmt: skip
        g = _head_signal({k: v * to_gradient for k, v in update.tensors.items()}, head, direction)
        squares.append(equation(np.bincount(ys[idx].cpu().numpy(), minlength=view.num_classes).astype(np.float64), g) ** 2)
    error = np.sqrt(np.mean(squares, axis=0)) if squares else np.zeros(view.num_classes)
    return np.maximum(error, max(MISFIT_SCALE * misfit, MIN_EQUATION_SD))


def _affordable_examples(model: nn.Module, xs: torch.Tensor) -> int:
    """How many public examples the statistics measure: ``STATS_FLOPS`` worth of forward passes, within the bounds."""
    net = copy.deepcopy(model)
    net.train()
    probe = xs[:2] if len(xs) >= 2 else xs.expand(2, *xs.shape[1:])
    per_example = max(forward_flops(net, probe) / 2, 1.0)
    return int(min(MAX_SERVER_EXAMPLES, max(MIN_SERVER_EXAMPLES, STATS_FLOPS // per_example)))


def _simulation_set(view: ServerView, xs: torch.Tensor, ys: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Up to SIMULATION_PER_CLASS public examples per class (noise, labelled per class, when a class has none), with
    the indices of the public examples taken."""
    C = view.num_classes
    gen = torch.Generator(device="cpu").manual_seed(view.seed + 29)
    lo, hi = view.threat.input_range
    parts_x, parts_y, taken = [], [], []
    for j in range(C):
        if ys is not None:
            pool = torch.nonzero(ys == j).flatten()[:SIMULATION_PER_CLASS]
        else:
            pool = torch.empty(0, dtype=torch.long, device=xs.device)
        if len(pool):
            parts_x.append(xs[pool])
        else:
            parts_x.append((lo + (hi - lo) * torch.rand(2, *view.input_shape, generator=gen)).to(xs.device))
        parts_y.append(torch.full((len(parts_x[-1]),), j, dtype=torch.long, device=xs.device))
        taken.append(pool)
    return torch.cat(parts_x), torch.cat(parts_y), torch.cat(taken)


def estimate_counts(view: ServerView, head: Head, budget: Budget | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(counts, raw, details)`` for the batch behind ``view``'s update.

    One example: its class is the one whose head gradient is negative (iDLG's identity, exact); the routes below
    subtract the mean softmax of the server's data, which decides where the model is confident on the example (its
    gradient then near 0) and the server has only noise to run it on: two of eight such batches of a trained
    five-class ConvNet had read the class the noise favours."""
    batch = int(view.batch_size)
    if batch == 1:
        from .idlg import idlg_counts  # imports readout from here

        _, counts, how = idlg_counts(view)
        return counts.numpy(), counts.double().numpy(), {"route": "single_example", "model": f"iDLG's identity ({how['route']})"}
    grads = view.as_gradient()
    use_bias = head.bias is not None and head.bias in grads
    xs, ys = view.server_data(batch)
    use = _affordable_examples(view.model, xs)
    xs, ys = xs[:use], (None if ys is None else ys[:use])
    chunk = batch if batch > 1 else 2
    details: dict = {"route": "bias" if use_bias else "weight_rows", "server_data": "public" if ys is not None else "noise"}

    cut: list[str] = []  # the parts the time budget stopped before their work was done

    def out_of_budget(part: str) -> Callable[[], bool]:
        """Ctrl-C or --time-budget: estimate from what ``part`` measured so far."""

        def out() -> bool:
            if budget is None:
                return False
            if not budget.interrupted() and budget.remaining() <= 0 and part not in cut:
                cut.append(part)
            return budget.interrupted() or budget.remaining() <= 0

        return out

    def read(stats: list[_Stats]) -> tuple[torch.Tensor | None, float]:
        """The head's readout direction (None: the bias) and its scale ``Ô`` over ``stats``."""
        if use_bias:
            return None, 1.0
        direction = readout(stats[0].features)
        if not bool((stats[0].features >= 0).all()):
            details["readout"] = "weight rows along the features' steadiest direction (the head's input can be negative)"
        return direction, float(np.mean([float((s.features @ direction).mean()) for s in stats]))

    if view.protocol == "fedsgd":
        stats = _Stats(view.model, head, xs, ys, chunk, view.num_classes, out_of_budget("statistics"))
        direction, scale = read([stats])
        raw = _raw_counts(_head_signal(grads, head, direction), stats.p_mean, batch, scale, stats.conditional)
        details.update({"model": "conditional" if stats.conditional is not None else "mean", "server_examples": stats.examples})
        return round_counts(raw, batch), raw, _noting_cuts(details, cut)
    from scipy.optimize import least_squares

    # FedAvg: solve n = raw(p_sim(n)) with the local training simulated (a bounded least-squares solve, scipy's
    # trust-region reflective, keeps n in [0, B]); then weigh it against the counts the head's weight update gives
    points = PATH_POINTS if ys is not None else (PATH_POINTS[0], PATH_POINTS[-1])  # the inner points serve the weight update's estimate
    path = [_Stats(_shifted(view.model, view.tensors, s), head, xs, ys, chunk, view.num_classes, out_of_budget("statistics"))
            for s in points]  # fmt: skip
    measured = min(stats.examples for stats in path)
    if measured < len(xs):  # cut short by the budget: every point on the same examples
        xs, ys = xs[:measured], (None if ys is None else ys[:measured])
        path = [stats.first(measured, ys, view.num_classes) for stats in path]
    details["server_examples"] = measured
    p0 = np.mean([path[0].p_mean, path[-1].p_mean], axis=0)
    direction, o0 = read([path[0], path[-1]])
    g_head = _head_signal(grads, head, direction)
    raw = _raw_counts(g_head, p0, batch, o0, None)
    sx, sy, simulated = _simulation_set(view, xs, ys)
    best = [float("inf"), raw]
    simulations = [0]
    weight_update_follows = ys is not None and head.weight in view.tensors
    solver_time = math.inf if budget is None else budget.remaining() * (SOLVER_SHARE if weight_update_follows else 1.0)
    deadline = time.perf_counter() + solver_time

    def equation(n: np.ndarray, g: np.ndarray) -> np.ndarray:
        p_sim = _simulate(view.model, _scaled_to(n, batch), sx, sy, batch, int(view.local_steps), float(view.local_lr), view.num_classes)
        return n - _raw_counts(g, p_sim, batch, o0, None)

    def residual(n: np.ndarray) -> np.ndarray:
        if budget is not None and budget.interrupted():
            raise _Stop
        if simulations[0] >= MAX_SIMULATIONS:  # the work bound first: past it the clock has cut nothing
            raise _Stop
        if time.perf_counter() > deadline:
            cut.append("simulated solve")
            raise _Stop
        simulations[0] += 1
        r = equation(n, g_head)
        if float(np.abs(r).max()) < best[0]:
            best[:] = [float(np.abs(r).max()), n.copy()]
        return r

    with contextlib.suppress(_Stop):
        least_squares(residual, np.clip(raw, 0, batch), bounds=(0.0, float(batch)), xtol=SOLVER_TOLERANCE, max_nfev=MAX_SIMULATIONS, diff_step=SOLVER_DIFF_STEP)
    misfit, raw = best
    details.update({"model": "simulated_local_training", "simulation_residual": round(misfit, 4)})
    feature = None
    if weight_update_follows:
        out_of_time = out_of_budget("weight update")
        equation_sd = _equation_sd(view, head, direction, xs, ys, simulated, round_counts(raw, batch), equation, misfit, out_of_time)
        own_class = not _closed(misfit)
        feature = _feature_counts(view, path, xs, ys, view.tensors[head.weight], batch, out_of_time, own_class)
    if feature is not None:
        # inverse-variance weighting of the two estimates
        equation_var = equation_sd**2
        feature_var = np.maximum(feature[1], MIN_FEATURE_SD) ** 2
        details.update({"model": "simulated_local_training+weight_update", "simulated_counts": [round(float(v), 3) for v in raw],
                        "simulated_sd": [round(float(v), 3) for v in equation_sd],
                        "weight_update_counts": [round(float(v), 3) for v in feature[0]], "weight_update_sd": [round(float(v), 3) for v in feature[1]],
                        "weight_update_directions": "each class's own" if own_class else "pooled"})  # fmt: skip
        raw = (raw / equation_var + feature[0] / feature_var) / (1 / equation_var + 1 / feature_var)
    return round_counts(raw, batch), raw, _noting_cuts(details, cut)


#: The key of an estimate's ``details`` that lists the parts of it the time budget stopped (absent where none was).
CUT_BY_TIME_BUDGET = "cut_by_time_budget"


def _noting_cuts(details: dict, cut: list[str]) -> dict:
    """``details`` with :data:`CUT_BY_TIME_BUDGET`, the parts of the estimate the time budget stopped, where any."""
    if cut:
        details[CUT_BY_TIME_BUDGET] = cut
    return details


@register_attack("label_counts")
class LabelCounts(Attack):
    """Examples per class from the head's update (Geng et al. 2021); seeds the image attacks.

    References
    ----------
    Geng, J., Mou, Y., Li, F., Li, Q., Beyan, O., Decker, S. & Rong, C. "Towards
    General Deep Leakage in Federated Learning." arXiv:2110.09074 (2021).
    """

    name: ClassVar[str] = "label_counts"
    title: ClassVar[str] = "Label counts (General Deep Leakage)"
    reference: ClassVar[str] = "Geng et al., Towards General Deep Leakage in Federated Learning, arXiv:2110.09074, 2021"
    kind: ClassVar[str] = "labels"
    default_iterations: ClassVar[int] = 0

    def applies(self, view: ServerView) -> str | None:
        if view.threat.labels == "known":
            return KNOWN_LABELS
        if (unreadable := unreadable_head(view)) is not None:
            return unreadable
        if view.batch_size is None:
            return NO_BATCH_SIZE
        if view.protocol == "fedavg" and view.batch_size != 1 and (view.local_steps is None or view.local_lr is None):
            return "the server does not know the local schedule (threat model)"  # one example: the sign needs none
        return None

    def run(self, view: ServerView, budget: Budget) -> Reconstruction:
        start = time.perf_counter()
        head = find_head(view.model, view.input_shape, view.device, view.num_classes)
        budget.check(0)
        counts, raw, details = estimate_counts(view, head, budget)
        labels = torch.repeat_interleave(torch.arange(len(counts)), torch.as_tensor(counts))
        budget.check(1)
        details["raw_counts"] = [round(float(v), 3) for v in raw]
        return Reconstruction(
            attack=self.name,
            labels=labels,
            label_counts=torch.as_tensor(counts, dtype=torch.int64),
            iterations=0,
            seconds=time.perf_counter() - start,
            stopped="interrupted" if budget.interrupted() else "time_budget" if budget.remaining() <= 0 or CUT_BY_TIME_BUDGET in details else "done",
            details=details,
        )
