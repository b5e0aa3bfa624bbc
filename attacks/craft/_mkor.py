"""MKOR's malicious parameters, naive and inconspicuous (Wang et al., WACV 2024)."""

from __future__ import annotations

import copy
import math
from typing import Literal, Sequence

import torch
from torch import nn

from fedguard.attacks.craft._base import CRAFTERS, Shape, dry_check, seeded_generator
from fedguard.attacks.craft._pass_through import following_bn, pass_through_filters
from fedguard.attacks.craft._sites import Site, need_linear, trace_sites


def _add_param_noise(layers: Sequence[nn.Module], noise: float, gen: torch.Generator) -> None:
    """MKOR's "inconspicuous" variant: add N(0, (noise / sqrt(fan_in))^2) to weights and biases."""
    for layer in layers:
        w = layer.weight
        std = noise / math.sqrt(max(1, w[0].numel()))
        w.add_(torch.randn(w.shape, generator=gen).to(w.dtype) * std)
        if layer.bias is not None:
            layer.bias.add_(torch.randn(layer.bias.shape, generator=gen).to(w.dtype) * std)


@CRAFTERS.register("mkor")
def mkor(
    model: nn.Module,
    *,
    input_shape: Shape,
    num_classes: int,
    data: torch.Tensor | None = None,
    seed: int = 0,
    conv_mode: Literal["paper", "copy", "shift"] = "paper",
    min_filters: bool = True,
    first_bias: float = 0.0,
    noise: float = 0.0,
    bn: Literal["identity", "keep"] = "identity",
) -> nn.Module:
    """Naive malicious parameters of MKOR.

    Sets, in execution order:

    * the first ``nn.Linear``: every weight ``1/d_in`` (all rows equal, each the
      average of its input) and bias ``first_bias`` (0 in the paper's code);
    * every later ``nn.Linear``: ``eye(out, in)`` (identity, zero-padded or
      cropped where the shapes differ; the last layer is one-hot rows), bias 0;
    * every ``nn.Conv2d``: all biases 0; the first ``active`` filters become
      pass-through filters: *copy* (single 1 at the centre tap of the matching
      input channel), *min* in the first convolution (centre -1, bias 1) and
      *shift* ("4_dir": centre, right, lower, lower-right taps) in a convolution
      followed by down-sampling when there are 4x the channels; the remaining
      filters keep their weights, as in the paper's code (``conv_mode="copy"``
      uses copy filters only, ``"shift"`` shifts wherever possible);
    * BatchNorm layers after a convolution (not in the paper, whose models have
      none): identity (weight 1, bias 0, running mean 0, variance 1) unless
      ``bn="keep"``.

    ``noise`` > 0 gives the paper's "inconspicuous" variant: Gaussian noise of
    std ``noise/sqrt(fan_in)`` on every convolution and linear layer.

    With these parameters the row gradient of class ``c`` in the first linear
    layer divided by its bias gradient is the mean input feature of class ``c``.

    References
    ----------
    F. Wang, S. Velipasalar, M. C. Gursoy, "Maximum Knowledge Orthogonality
    Reconstruction with Gradients in Federated Learning", WACV 2024
    (code: github.com/wfwf10/MKOR, ``manipulate_param_conv/dense``).
    """
    model = copy.deepcopy(model)
    sites = trace_sites(model, input_shape)
    lins = need_linear(sites, "mkor")
    with torch.no_grad():
        pass_through_filters(sites, input_shape[0], conv_mode=conv_mode, min_filters=min_filters, bn=bn)
        for k, site in enumerate(lins):
            lin: nn.Linear = site.module
            if k == 0:
                lin.weight.fill_(1.0 / lin.in_features)
                if lin.bias is not None:
                    lin.bias.fill_(first_bias)
            else:
                lin.weight.copy_(torch.eye(lin.out_features, lin.in_features, dtype=lin.weight.dtype))
                if lin.bias is not None:
                    lin.bias.zero_()
        if noise:
            layers = [s.module for s in sites if isinstance(s.module, (nn.Linear, nn.Conv2d))]
            _add_param_noise(layers, noise, seeded_generator(seed))
    return dry_check(model, input_shape, "mkor")


def _noisy_entries(weight: torch.Tensor, mask: torch.Tensor, noise: float, gen: torch.Generator) -> None:
    """Add N(0, (noise / sqrt(fan_in))^2) to the entries of ``weight`` selected by ``mask``."""
    if noise and mask.any():
        std = noise / math.sqrt(max(1, weight[0].numel()))
        weight.add_(torch.randn(weight.shape, generator=gen).to(weight.dtype) * std * mask)


def _channel_state(sites: list[Site], index: int) -> list[torch.Tensor]:
    """Per-channel tensors of convolution ``sites[index]``: its bias and its following BatchNorm's."""
    conv = sites[index].module
    out = [conv.bias] if conv.bias is not None else []
    bn = following_bn(sites, index)
    if bn is not None:
        out += [t for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var) if t is not None]
    return out


@CRAFTERS.register("mkor_inconspicuous")
def mkor_inconspicuous(
    model: nn.Module,
    *,
    input_shape: Shape,
    num_classes: int,
    data: torch.Tensor | None = None,
    seed: int = 0,
    noise: float = 0.01,
    gain: float = 1.0,
    conv_mode: Literal["paper", "copy", "shift"] = "paper",
    bn: Literal["identity", "keep"] = "identity",
) -> nn.Module:
    """MKOR's inconspicuous parameters: the same class-wise paths, hidden among honest weights.

    Only a small, randomly placed subset of parameters is changed, and small
    i.i.d. noise N(0, (noise/sqrt(fan_in))^2) is added to every changed entry:

    * convolutions: MKOR's pass-through filters (:func:`mkor`) at *shuffled*
      output channels; the other filters keep their weights and biases;
    * first ``nn.Linear``: for each class ``j`` a random row ``r_j`` keeps its
      honest weights and a second random row becomes its opposite
      (``-w``, ``-b``). Every example activates exactly one of the two ReLUs,
      so the pair's summed gradients ``Σ δ_n x_n`` / ``Σ δ_n`` take in every
      example, as MKOR's averaging row does, without equal weights;
    * the next layers merge each pair into one random unit (both columns
      carry the same weight ``gain/sqrt(fan_in)``, the unit's other inputs are
      cut) and pass that unit on to class ``j``'s logit only. A larger
      ``gain`` makes the class rows' gradients stand out against gradient
      noise, at the price of weights further from the honest init scale.

    A model with a single ``nn.Linear`` (the head) keeps it as is: its rows
    already carry class-mean features.

    References
    ----------
    F. Wang, S. Velipasalar, M. C. Gursoy, "Maximum Knowledge Orthogonality
    Reconstruction with Gradients in Federated Learning", WACV 2024 (the
    inconspicuous variant of the dense and convolutional parameters).
    """
    model = copy.deepcopy(model)
    sites = trace_sites(model, input_shape)
    lins = [s.module for s in need_linear(sites, "mkor_inconspicuous")]
    gen = seeded_generator(seed)
    with torch.no_grad():
        # the pass-through filters need zero biases (and identity BatchNorm); the other channels keep theirs
        convs = [(i, site.module) for i, site in enumerate(sites) if isinstance(site.module, nn.Conv2d)]
        kept = {id(m): [t.clone() for t in _channel_state(sites, i)] for i, m in convs}
        for step in pass_through_filters(sites, input_shape[0], conv_mode=conv_mode, bn=bn, shuffle=gen):
            index, conv = next((i, m) for i, m in convs if m is model.get_submodule(step["layer"]))
            others = torch.ones(conv.out_channels, dtype=torch.bool)
            others[step["channels"]] = False
            for now, before in zip(_channel_state(sites, index), kept[id(conv)]):
                now[others] = before[others]
            mask = torch.zeros_like(conv.weight)
            mask[step["channels"]] = 1.0
            _noisy_entries(conv.weight, mask, noise, gen)
        if len(lins) > 1:
            first = lins[0]
            classes = min(num_classes, first.out_features // 2, *(lin.out_features for lin in lins[1:-1]))
            if classes < 1:  # a pair of rows per class, and a unit per class in every hidden layer
                raise ValueError(f"its first linear layer has {first.out_features} units and its narrowest hidden layer "
                                 f"{min(lin.out_features for lin in lins[:-1])}: MKOR needs 2 and 1 per class")  # fmt: skip
            rows = torch.randperm(first.out_features, generator=gen)[: 2 * classes].view(2, classes)
            first.weight[rows[1]] = -first.weight[rows[0]]
            if first.bias is not None:
                first.bias[rows[1]] = -first.bias[rows[0]]
            mask = torch.zeros_like(first.weight)
            mask[rows[1]] = 1.0
            _noisy_entries(first.weight, mask, noise, gen)
            sources = [rows[0], rows[1]]  # units of the previous layer that feed class j
            for k, lin in enumerate(lins[1:], start=1):
                last = k == len(lins) - 1
                units = torch.arange(classes) if last else torch.randperm(lin.out_features, generator=gen)[:classes]
                mask = torch.zeros_like(lin.weight)
                if not last:
                    lin.weight[units] = 0.0
                    mask[units] = 1.0
                    if lin.bias is not None:
                        lin.bias[units] = 0.0
                for src in sources:
                    lin.weight[:, src] = 0.0
                    lin.weight[units, src] = gain / math.sqrt(lin.in_features)
                    mask[:, src] = 1.0
                _noisy_entries(lin.weight, mask, noise, gen)
                sources = [units]
    return dry_check(model, input_shape, "mkor_inconspicuous")
