"""MKOR: class-wise inputs read off a crafted model's update (malicious-server emulator).

Maximum Knowledge Orthogonality Reconstruction (Wang et al., WACV 2024) sends
a model whose first fully connected layer reaches each class's logit through
its own rows only (:func:`fedguard.attacks.craft.mkor`: averaging rows and
identity layers; :func:`~fedguard.attacks.craft.mkor_inconspicuous`: opposite
row pairs merged into one unit per class, hidden among honest weights), and
whose convolutions pass the image through (copy, min and shift filters).

For the rows ``R_j`` of class ``j`` and a batch of ``N`` examples trained with
cross-entropy, every example reaches the rows with the same positive path
factor ``a_n``, so

    N Σ_{r∈R_j} ∇W_r = Σ_n p_{n,j} a_n φ(x_n) − Σ_{n: y_n=j} a_n φ(x_n)

(``φ`` the features the layer sees, ``p`` the softmax) and the same without
``φ`` for the biases. The first sum, the softmax's share, is what the
server cannot observe; it estimates it by running the crafted model on its
own public data (the gradient of ``logsumexp`` of the logits, scaled to
``N`` examples). What is left is the ``a``-weighted **mean feature of class
j**, and ``(…) / Σ a_n`` with ``a`` from the public data also estimates how
many examples the class has. The paper's code trains with NLL on the raw
outputs, where the first sum is zero; fedguard's clients use cross-entropy.

The image comes from inverting the known feature extractor: fedguard fits an
image in the input range whose features match the class's mean feature
(Adam, starting from the public data's mean image), which does for any
architecture what the authors' per-network code does by hand (inverse
sigmoids, the upper and lower bounds that copy and min filters leave after
max-pooling). Each class image is reported once per estimated example of
the class, so every example is compared with its class's reconstruction, as
in the paper's tables.

References
----------
F. Wang, S. Velipasalar, M. C. Gursoy, "Maximum Knowledge Orthogonality
Reconstruction with Gradients in Federated Learning", WACV 2024
(code: github.com/wfwf10/MKOR).
"""

from __future__ import annotations

import math
import time
from typing import ClassVar

import torch
from torch import nn

from fedguard.layers import find_first_layer, layer_input, linear_layers
from fedguard.threat import NO_BATCH_SIZE, NO_GRADIENT, ServerView
from fedguard.torch_state import evaluating
from fedguard.types import Reconstruction

from .base import Attack, Budget, register_attack
from .label_counts import round_counts

__all__ = ["MKOR", "InconspicuousMKOR", "class_rows", "path_energy", "mkor_rows", "class_features", "invert_features",
           "public_examples", "CLASS_ROW_SHARE", "CUT_PATHS_SHARE", "MANY_CLASSES"]

#: A first-layer row belongs to class j when at least this share of its paths to the logits ends at j.
CLASS_ROW_SHARE = 0.9
#: Most of the paths' energy that the first-layer rows reaching no class alone keep in a model whose later layers cut
#: them (naive MKOR's identity layers). Measured on LeNet-5, the MLP, VGG-11 and the sigmoid LeNet-5 at 2, 3, 5 and 10
#: classes: naive MKOR 0 (its noise option 0.01: 2e-4; 0.1: 0.02; 0.3: 0.16; 0.4: 0.21-0.25; 0.5: 0.22-0.36); honest
#: fresh models (6 seeds each) at least 0.49 with two classes, 0.78 with three, 0.97 with five; honest trained ones
#: (LeNet-5, the MLP and the sigmoid LeNet-5 on 2, 3 and 5 digit classes, SGD and Adam, 5 epochs, 36 models) at
#: least 0.56.
CUT_PATHS_SHARE = 0.3
#: From this many classes on, honest first-layer rows reach one class alone for at most two of them (fresh LeNet-5,
#: MLP, VGG-11 and sigmoid LeNet-5, 6 seeds each: every class at 2-4 classes, up to 5 of 5-6, at most 2 of 7 and 1 of
#: 8-10), under the half of the classes :meth:`MKOR.planted` asks for: rows that reach one class alone are then
#: MKOR's whatever noise hides their signature.
MANY_CLASSES = 7
#: ``fedguard inspect``'s detectors of MKOR's first-layer rows: averaging rows (FG101) and opposite pairs (FG104).
ROW_DETECTORS = ("constant_rows", "opposite_rows")
#: Public examples used to estimate the softmax's share of the update.
PUBLIC_EXAMPLES = 256
#: Pull toward the start image (the public mean), decayed 10x over the fit: the pixels the features pin
#: down follow the features, the others stay at the prior instead of drifting. Measured on exact class
#: means (digits, batch 100): 0 gives 10 dB on a noisy max-pool LeNet, a fixed 1e-2 costs 3-5 dB on the
#: sigmoid LeNet; 1e-2 decayed to 1e-3 gives 17-20 dB and 21-30 dB.
PRIOR_WEIGHT = 1e-2
PRIOR_DECAY = 0.1
#: Adam's step (in input-range units) when fitting an image to a class's mean feature.
LEARNING_RATE = 0.05


def class_rows(linears: list[nn.Linear], num_classes: int) -> list[torch.Tensor]:
    """Rows of the first Linear layer whose paths to the logits end at one class, per class.

    Row ``r``'s paths to the logits are column ``r`` of ``W_L ⋯ W_2`` (a
    single Linear layer is the head itself); the row belongs to class ``j``
    when ``j`` holds at least :data:`CLASS_ROW_SHARE` of the column's energy.
    Signed products let the small noise an inconspicuous server puts on
    the cut connections average out instead of piling up.
    """
    if len(linears) == 1:  # each row is one class's logit (an identity of paths, without building it)
        return [torch.tensor([j]) if j < linears[0].out_features else torch.zeros(0, dtype=torch.long) for j in range(num_classes)]
    energy = path_energy(linears, num_classes)
    total = energy.sum(0)
    share, owner = (energy / total.clamp_min(1e-300)).max(0)
    owned = (total > 0) & (share >= CLASS_ROW_SHARE)
    return [torch.nonzero(owned & (owner == j)).flatten() for j in range(num_classes)]


def path_energy(linears: list[nn.Linear], num_classes: int) -> torch.Tensor:
    """``[num_classes, rows]``: the squares of ``W_L ⋯ W_2`` (two Linear layers or more), the paths from each row of
    the first layer to each logit, on the CPU in float64."""
    paths = linears[-1].weight.detach().cpu().double()[:num_classes]  # rows on the CPU, where the update is read
    for lin in reversed(linears[1:-1]):
        paths = paths @ lin.weight.detach().cpu().double()
    return paths.pow(2)


def mkor_rows(model: nn.Module, linears: list[nn.Linear], rows: list[torch.Tensor]) -> bool:
    """Whether the first Linear layer's rows are MKOR's: the rows that reach no class alone cut off (they keep at most
    :data:`CUT_PATHS_SHARE` of the paths' energy: naive MKOR's identity layers), or ``fedguard inspect``'s FG101 or
    FG104 reading averaging rows or opposite pairs in the layer (:data:`ROW_DETECTORS`; the inconspicuous form keeps
    honest paths beside its pairs)."""
    from fedguard.detectors import InspectContext
    from fedguard.inspect import run_detectors
    from fedguard.modelview import ModelView

    total = path_energy(linears, len(rows)).sum(0)
    owned = torch.zeros(len(total), dtype=torch.bool)
    for r in rows:
        owned[r] = True
    if float(total.sum()) > 0 and float(total[~owned].sum()) <= CUT_PATHS_SHARE * float(total.sum()):
        return True
    first = next((name for name, module in model.named_modules() if module is linears[0]), None)
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    findings, _ = run_detectors(InspectContext(view=ModelView.from_state_dict(state, model)), ROW_DETECTORS)
    return any(f.layer == first for f in findings)


def class_features(
    model: nn.Module, first: nn.Linear, rows: list[torch.Tensor], grad_w: torch.Tensor, grad_b: torch.Tensor,
    batch_size: int, public: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean feature and estimated example count of every class from the first Linear layer's gradient.

    Returns ``features [num_classes, in]`` and ``counts [num_classes]``
    (float; classes without rows get count 0).
    """
    params = [first.weight, first.bias]
    logits = model(public)
    num_classes = len(rows)
    share_w, share_b = (g.cpu() for g in torch.autograd.grad(torch.logsumexp(logits, dim=1).sum(), params, retain_graph=True))
    path = torch.autograd.grad(logits[:, :num_classes].sum(), [first.bias])[0].cpu()
    scale = batch_size / len(public)
    dim = grad_w.shape[1]
    features = torch.zeros(num_classes, dim, dtype=torch.float64)
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for j, r in enumerate(rows):
        if not len(r):
            continue
        r = r.cpu()
        weight = scale * share_w[r].double().sum(0) - batch_size * grad_w[r].double().sum(0)
        mass = scale * float(share_b[r].double().sum()) - batch_size * float(grad_b[r].double().sum())
        per_example = float(path[r].double().sum()) / len(public)
        if mass <= 0 or per_example <= 0:
            continue
        features[j] = weight / mass
        counts[j] = mass / per_example
    return features, counts


def invert_features(
    model: nn.Module, layer: nn.Module, targets: torch.Tensor, start: torch.Tensor, input_range: tuple[float, float],
    budget: Budget, iterations: int, known: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict]:
    """Images in ``input_range`` whose features at ``layer`` match ``targets`` (Adam, cosine-decayed step).

    ``known`` (bool, one per feature) leaves the other features out of the fit.
    The model runs in eval mode; its parameters get no gradient.
    """
    mask = torch.ones(targets.shape[1], device=targets.device) if known is None else known.to(targets.device, targets.dtype)
    lo, hi = input_range
    x = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=LEARNING_RATE * (hi - lo))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, iterations))
    norms = (targets * mask).pow(2).sum(1).clamp_min(1e-12)
    residual, done, stopped = float("nan"), 0, "max_iterations"
    with evaluating(model):
        for done in range(1, iterations + 1):
            fit = (((layer_input(model, layer, x) - targets) * mask).pow(2).sum(1) / norms).sum()
            weight = PRIOR_WEIGHT * PRIOR_DECAY ** (done / iterations)
            loss = fit + weight * (x - start).pow(2).flatten(1).mean(1).sum() / (hi - lo) ** 2
            (x.grad,) = torch.autograd.grad(loss, [x])
            opt.step()
            sched.step()
            with torch.no_grad():
                x.clamp_(lo, hi)
            residual = float(fit.detach()) / len(targets)
            reason = budget.check(done, feature_error=residual)
            if reason is not None:
                stopped = reason
                break
    return x.detach(), {"inversion_iterations": done, "feature_error": residual, "stopped": stopped}


def public_examples(view: ServerView) -> tuple[torch.Tensor, str]:
    """Up to PUBLIC_EXAMPLES of the server's public data, or uniform noise in the input box without it, and which."""
    lo, hi = view.threat.input_range
    if view.auxiliary is not None and len(view.auxiliary[0]):
        return view.auxiliary[0][:PUBLIC_EXAMPLES].to(view.device, torch.float32), "public data"
    gen = torch.Generator().manual_seed(view.seed)
    noise = lo + (hi - lo) * torch.rand(PUBLIC_EXAMPLES, *view.input_shape, generator=gen)
    return noise.to(view.device), "uniform noise (no public data)"


@register_attack("mkor")
class MKOR(Attack):
    """MKOR (Wang et al., WACV 2024): class-mean inputs from a model with class-wise paths.

    References
    ----------
    F. Wang, S. Velipasalar, M. C. Gursoy, "Maximum Knowledge Orthogonality
    Reconstruction with Gradients in Federated Learning", WACV 2024.
    """

    name: ClassVar[str] = "mkor"
    title: ClassVar[str] = "MKOR class-wise reconstruction, malicious server (naive parameters)"
    reference: ClassVar[str] = "Wang, Velipasalar & Gursoy, Maximum Knowledge Orthogonality Reconstruction, WACV 2024"
    kind: ClassVar[str] = "images"
    default_iterations: ClassVar[int] = 300
    emulates: ClassVar[str | None] = "mkor"
    default: ClassVar[bool] = False

    def __init__(self, rows: list[torch.Tensor] | None = None) -> None:
        """``rows``: each class's rows of the first Linear layer, for a server that knows them (it planted
        them); by default they are found from the model's paths (:func:`class_rows`)."""
        if rows is not None and (
            not isinstance(rows, (list, tuple)) or not all(isinstance(r, torch.Tensor) and r.dim() == 1 for r in rows)
        ):
            raise ValueError(f"bad MKOR rows {rows!r:.60}; give one 1-D tensor of row indices per class, or None")
        self.rows = rows if rows is None else [r.cpu() for r in rows]  # indices into the update, read on the CPU

    def _class_rows(self, linears: list[nn.Linear], num_classes: int) -> list[torch.Tensor]:
        return self.rows if self.rows is not None else class_rows(linears, num_classes)

    def crafter_options(self, view: ServerView) -> dict:
        """The averaging rows' bias (``first_bias``): the paper's 0 where the first layer's input is never negative
        (pixels in ``[0, 1]``), else half as much again as the lowest input mean over the server's public examples
        and the input box's two constant images, so that every example switches the rows on. A model that
        normalises its input first, ``(x - 0.5) / 0.2``, had every row off for a digit's dark background: nothing
        rebuilt where the inconspicuous form, whose pairs of opposite rows always have one on, rebuilt 16 dB."""
        first = find_first_layer(view.model, view.input_shape, view.device)
        if first is None or not isinstance(first.module, nn.Linear):  # convolutions first: their crafted
            return {}  # pass-through filters set what the layer sees (after a ReLU, never negative)
        lo, hi = view.threat.input_range
        box = torch.tensor([lo, hi], dtype=torch.float32).view(2, *[1] * len(view.input_shape)).expand(2, *view.input_shape)
        probes = torch.cat([public_examples(view)[0], box.to(view.device)])
        with evaluating(view.model), torch.no_grad():
            lowest = float(layer_input(view.model, first.module, probes).mean(dim=1).min())
        return {"first_bias": -1.5 * lowest} if lowest < 0 else {}

    def applies(self, view: ServerView) -> str | None:
        heads = linear_layers(view.model, view.input_shape, view.device)
        linears = [h.module for h in heads]
        if not linears or linears[0].bias is None:
            return "the model has no fully connected layer with a bias"
        if heads[0].weight not in view.tensors or heads[0].bias not in view.tensors:
            return (f"the first fully connected layer ({heads[0].name}), where MKOR's rows are planted, is not in the "
                    "update (frozen in the client's training, or reparametrised): nothing of it to read")
        with evaluating(view.model), torch.no_grad():  # two examples: BatchNorm without running statistics needs them
            seen = layer_input(view.model, linears[0], torch.zeros(2, *view.input_shape, device=view.device)).shape[1]
        if seen != linears[0].in_features:
            return ("the first fully connected layer is applied to each token or position, not once to the example "
                    "(its update mixes them: MKOR reads one feature vector per example)")
        if any(after.in_features != before.out_features for before, after in zip(linears, linears[1:])):
            return ("the fully connected layers do not form one chain (parallel branches or heads): MKOR follows "
                    "each row's paths to the logits through a chain")
        if not any(len(r) for r in self._class_rows(linears, view.num_classes)):
            return "no row of the first fully connected layer reaches one class alone (not an MKOR model)"
        if view.batch_size is None:
            return NO_BATCH_SIZE
        if view.as_gradient() is None:
            return NO_GRADIENT
        return None

    def planted(self, view: ServerView) -> bool:
        """Rows of the first fully connected layer that reach one class alone, for at least half the classes (an
        MKOR model has them for every class; honest models, 60 of the zoo's with two Linear layers or more, had
        them for at most one class, class fishing's for one), and, under :data:`MANY_CLASSES` classes, rows that are
        MKOR's (:func:`mkor_rows`).

        With few classes honest rows reach one class alone by chance: fresh LeNet-5, MLP, VGG-11 and sigmoid
        LeNet-5 models (6 seeds each) had such rows for every class at 2-4 classes and half of them at 5 (at most
        two from 7), and the audit had attacked every honest two-class model as MKOR's. There the rows' signature
        decides, which MKOR's noise option hides from about 0.5 (cut paths) and the inconspicuous form's from 0.3
        (FG104): such models of 2-6 classes are not attacked unasked (the other attacks still attack the update).
        Not for a lone Linear head, every class's alone in any model: the features before it passed on linearly did
        not tell MKOR's sigmoid LeNet (2.6-10 % off linear at a midpoint) from honest ones (0.6-13 %); `fedguard
        inspect` reads those paths."""
        if self.applies(view) is not None:
            return False
        linears = [h.module for h in linear_layers(view.model, view.input_shape, view.device)]
        if len(linears) == 1:
            return False
        rows = self._class_rows(linears, view.num_classes)
        owners = sum(len(r) > 0 for r in rows)
        if owners < max(2, math.ceil(view.num_classes / 2)):
            return False
        return view.num_classes >= MANY_CLASSES or mkor_rows(view.model, linears, rows)

    def run(self, view: ServerView, budget: Budget) -> Reconstruction:
        start = time.perf_counter()
        model = view.model
        with evaluating(model):
            heads = linear_layers(model, view.input_shape, view.device)
            linears = [h.module for h in heads]
            first = linears[0]
            grads = view.as_gradient()
            rows = self._class_rows(linears, view.num_classes)
            public, source = public_examples(view)
            grad_w = grads[heads[0].weight].detach().cpu()
            features, counts = class_features(
                model, first, rows, grad_w, grads[heads[0].bias].detach().cpu(), int(view.batch_size), public
            )
            # features whose weight-gradient column is zero in every class row carry nothing (a pruning
            # defense such as Soteria, or features no example switches on): they are left to the prior
            known = torch.cat([grad_w[r] for r in rows]).ne(0).any(0)
            present = counts >= 0.5
            classes = torch.nonzero(present).flatten()
            targets = features[classes].to(view.device, torch.float32)
            prior = public.mean(0, keepdim=True).expand(len(classes), *view.input_shape)
            lo, hi = view.threat.input_range
            flat_size = math.prod(view.input_shape)  # a first Linear applied per token reads part of the input
            if not len(classes):
                images, fit = torch.zeros(0, *view.input_shape), {"inversion_iterations": 0}
                budget.check(0)
            elif find_first_layer(model, view.input_shape, view.device).module is first and first.in_features == flat_size:
                flat = torch.where(known.to(view.device), targets, prior.flatten(1))
                images, fit = flat.reshape(-1, *view.input_shape).clamp(lo, hi), {"inversion_iterations": 0}
                budget.check(0)
            else:
                images, fit = invert_features(
                    model, first, targets, prior.contiguous(), (lo, hi), budget, budget.max_iterations, known
                )
        repeats = torch.as_tensor(round_counts(counts[classes].numpy(), int(view.batch_size))).clamp_min(1)
        images = images.cpu().repeat_interleave(repeats, dim=0)
        labels = classes.repeat_interleave(repeats)
        stopped = fit.pop("stopped", "done")
        details = {
            "layer": heads[0].name,
            "classes_found": classes.tolist(),
            "rows_per_class": [int(len(rows[j])) for j in classes.tolist()],
            "estimated_counts": [round(float(counts[j]), 2) for j in classes.tolist()],
            "softmax_share_from": source,
            "features_known": int(known.sum()),
            **fit,
        }
        if not len(classes):  # e.g. a normalisation between the input and the crafted layer spoils its class rows
            details["why_nothing"] = "no class's rows in the crafted layer show an example of the batch"
        return Reconstruction(
            attack=self.name,
            images=images.float(),
            labels=labels,
            labels_from_update=True,
            iterations=int(fit.get("inversion_iterations", 0)),
            seconds=time.perf_counter() - start,
            stopped=stopped,
            details=details,
        )


@register_attack("mkor_inconspicuous")
class InconspicuousMKOR(MKOR):
    """MKOR's inconspicuous form (Wang et al., WACV 2024): opposite row pairs hidden among honest weights."""

    name: ClassVar[str] = "mkor_inconspicuous"
    title: ClassVar[str] = "MKOR class-wise reconstruction, malicious server (inconspicuous parameters)"
    emulates: ClassVar[str | None] = "mkor_inconspicuous"

    def crafter_options(self, view: ServerView) -> dict:
        return {}  # one row of each opposite pair is on for any input: no bias to choose
