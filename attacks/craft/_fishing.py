"""Class and feature fishing: a head that lets one class, or one side of a feature, through (Wen et al., ICML
2022)."""

from __future__ import annotations

import copy
import math
from typing import Literal, Sequence

import torch
from torch import nn

from fedguard.attacks.craft._base import CRAFTERS, Shape, dry_check, inputs_of, seeded_generator
from fedguard.attacks.craft._sites import need_linear, trace_sites
from fedguard.checks import is_whole


def _targets(target: int | Sequence[int], num_classes: int) -> list[int]:
    targets = [int(target)] if is_whole(target) else [int(t) for t in target]
    if not targets:
        raise ValueError("no target class given; name at least one, e.g. target=0")
    for t in targets:
        if not 0 <= t < num_classes:
            raise ValueError(f"target class {t} is outside 0..{num_classes - 1}; choose a target from 0 to {num_classes - 1}")
    if len(set(targets)) < len(targets):
        raise ValueError(f"target classes {targets} name a class twice; name each once")
    return targets


@CRAFTERS.register("class_fishing")
def class_fishing(
    model: nn.Module,
    *,
    input_shape: Shape,
    num_classes: int,
    data: torch.Tensor | None = None,
    seed: int = 0,
    target: int | Sequence[int] = 0,
    bias_multiplier: float = 1000.0,
    target_row: Literal["keep", "constant"] = "keep",
    class_multiplier: float = 1.0,
    target_bias: float | Literal["keep"] = 0.0,
) -> nn.Module:
    """Class fishing: only the target class can produce a gradient.

    In the last ``nn.Linear``: non-target rows 0 and non-target biases
    ``bias_multiplier`` (1000 in the paper's code); the target row is kept and
    multiplied by ``class_multiplier`` (``target_row="keep"``) or set to the
    constant ``class_multiplier`` (``target_row="constant"``, the released
    code's ``reconfigure_for_class_attack`` with 0.5); the target bias is
    ``target_bias`` (a number, or ``"keep"`` for the original bias as in the
    released code).

    Every non-target logit is 1000 for every input, so the target class's
    softmax probability is ~0: a target-class sample has logit gradient -1 on
    the target row, a non-target sample has ~0 there, and the rows that reach
    the rest of the network are zero for non-targets. The update of every
    layer below the last is the target class's samples' alone.

    References
    ----------
    Y. Wen, J. Geiping, L. Fowl, M. Goldblum, T. Goldstein, "Fishing for User
    Data in Large-Batch Federated Learning via Gradient Magnification",
    ICML 2022 (code: breaching ``malicious-fishing.yaml``: bias_multiplier 1000,
    class_multiplier 0.5).
    """
    model = copy.deepcopy(model)
    lins = need_linear(trace_sites(model, input_shape), "class_fishing")
    last: nn.Linear = lins[-1].module
    targets = _targets(target, last.out_features)
    if len(set(targets)) == last.out_features:  # no logit left to swamp: the model is an honest classifier
        raise ValueError(f"every one of the {last.out_features} classes is a target (no other logit is left to swamp)")
    with torch.no_grad():
        w = torch.zeros_like(last.weight)
        if target_row == "keep":
            w[targets] = last.weight[targets] * class_multiplier
        elif target_row == "constant":
            w[targets] = class_multiplier
        else:
            raise ValueError(f"unknown target_row {target_row!r}; use 'keep' or 'constant'")
        last.weight.copy_(w)
        if last.bias is None:
            raise ValueError("it needs a last linear layer with a bias")
        b = torch.full_like(last.bias, bias_multiplier)
        b[targets] = last.bias[targets] if target_bias == "keep" else float(target_bias)
        if float(b[targets].max()) >= bias_multiplier:  # the muted logits must stand above the target's
            raise ValueError(f"bias_multiplier {bias_multiplier} is not above the target's bias "
                             f"({float(b[targets].max()):.4g}): no class is muted; use a larger bias_multiplier")
        last.bias.copy_(b)
    return dry_check(model, input_shape, "class_fishing")


@CRAFTERS.register("feature_fishing")
def feature_fishing(
    model: nn.Module,
    *,
    input_shape: Shape,
    num_classes: int,
    data: torch.Tensor | None = None,
    seed: int = 0,
    target: int = 0,
    feature: int | None = None,
    feature_val: float | None = None,
    quantile: float = 0.5,
    feat_multiplier: float = 300.0,
    bias_multiplier: float = 1000.0,
    keep_row: bool = False,
    calibrate: bool = False,
    max_examples: int = 256,
) -> nn.Module:
    """Feature fishing: split the target class's samples on one feature.

    In the last ``nn.Linear``: every weight 0 except ``W[target, feature] =
    feat_multiplier`` (300 in the paper's code), non-target biases
    ``bias_multiplier`` (1000) and the target bias ``-feature_val *
    feat_multiplier``. ``keep_row=True`` keeps the other entries of the target
    row, so the one feature is ~300/|w| times larger than its neighbours.

    ``feature`` is the most spread feature of the last layer's input on
    ``data`` (the released code estimates it with a KS test on feature
    statistics), else a random one. ``feature_val`` is its ``quantile`` on
    ``data`` (0.5: the first step of the binary search), else 0.5 (the released
    code's fall-back); at most ``max_examples`` examples of ``data`` (a
    seeded random subset) are run. ``calibrate=True`` shifts ``feature_val`` by
    ``-(bias_multiplier + ln(C-1)) / feat_multiplier`` so that the softmax
    boundary itself, not just the bias, sits at that value (the quantile, or
    the ``feature_val`` given).

    Examples whose feature lies on the "wrong" side of the boundary -- of the
    target class below it, of another class above it -- send a gradient
    ``∓feat_multiplier ∇f`` below the head; the others send ~0. Two rounds
    with boundaries ``v1 < v2`` therefore differ by ``-feat_multiplier Σ ∇f``
    over the examples with ``f`` in ``[v1, v2)``, whatever their class, and
    the target bias's gradients differ by ``-(their number) / B``
    (:mod:`fedguard.attacks.feature_fishing` runs that search).

    References
    ----------
    Y. Wen, J. Geiping, L. Fowl, M. Goldblum, T. Goldstein, "Fishing for User
    Data in Large-Batch Federated Learning via Gradient Magnification",
    ICML 2022 (code: breaching ``reconfigure_for_feature_attack``).
    """
    model = copy.deepcopy(model)
    lins = need_linear(trace_sites(model, input_shape), "feature_fishing")
    last: nn.Linear = lins[-1].module
    (t,) = _targets(target, last.out_features)
    if last.bias is None:
        raise ValueError("it needs a last linear layer with a bias")
    if data is not None and len(data) > max_examples:
        data = data[torch.randperm(len(data), generator=seeded_generator(seed))[:max_examples]]
    feats = inputs_of(model, last, data) if data is not None else None
    if feature is None:
        if feats is not None and len(feats) > 1:
            feature = int(feats.std(dim=0).argmax())
        else:
            feature = int(torch.randint(last.in_features, (1,), generator=seeded_generator(seed)))
    if not 0 <= feature < last.in_features:
        raise ValueError(f"feature {feature} is outside 0..{last.in_features - 1}; choose a feature from 0 to {last.in_features - 1}")
    if feature_val is None:
        feature_val = float(torch.quantile(feats[:, feature], quantile)) if feats is not None else 0.5
    if calibrate:
        feature_val -= (bias_multiplier + math.log(max(1, last.out_features - 1))) / feat_multiplier
    with torch.no_grad():
        w = torch.zeros_like(last.weight)
        if keep_row:
            w[t] = last.weight[t]
        w[t, feature] = feat_multiplier
        last.weight.copy_(w)
        b = torch.full_like(last.bias, bias_multiplier)
        b[t] = -float(feature_val) * feat_multiplier
        last.bias.copy_(b)
    return dry_check(model, input_shape, "feature_fishing")
