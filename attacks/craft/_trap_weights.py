"""Trap weights: ReLU rows that fire for very few inputs (Boenisch et al., EuroS&P 2023)."""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn

from fedguard.attacks.craft._base import CRAFTERS, Shape, dry_check, front_block, seeded_generator
from fedguard.attacks.craft._pass_through import pass_through_filters
from fedguard.attacks.craft._sites import conv_sites, need_linear, trace_sites


def _trap_rows(rows: int, cols: int, sigma: float, scale_factor: float, gen: torch.Generator) -> torch.Tensor:
    """Per row: ``cols // 2`` entries ``-|N(0, sigma)|`` and as many ``scale_factor`` times their magnitudes.

    The positions are shuffled per row; with an odd ``cols`` one entry stays 0.
    """
    half = cols // 2
    magnitudes = torch.randn(rows, half, generator=gen).abs() * sigma
    out = torch.zeros(rows, cols)
    for r in range(rows):
        perm = torch.randperm(cols, generator=gen)
        out[r, perm[:half]] = -magnitudes[r]
        out[r, perm[half : 2 * half]] = scale_factor * magnitudes[r]
    return out


@CRAFTERS.register("trap_weights")
def trap_weights(
    model: nn.Module,
    *,
    input_shape: Shape,
    num_classes: int,
    data: torch.Tensor | None = None,
    seed: int = 0,
    scale_factor: float = 0.95,
    sigma: float = 0.5,
    mu: float = 0.0,
    mode: Literal["first_fc", "block"] = "first_fc",
    num_neurons: int = 64,
    pass_through_convs: bool = False,
) -> nn.Module:
    """Trap weights: a ReLU layer whose neurons each fire for very few inputs.

    Each row of the trap layer: ``d//2`` entries ``-|N(0, sigma)|`` and the
    same magnitudes times ``scale_factor`` (0.95) as positive entries, at
    shuffled positions (with an odd ``d`` one entry is 0); biases ``mu`` (0).
    On non-negative inputs the positive half nearly cancels the negative half,
    so a neuron activates only for inputs that happen to weigh its positive
    positions, often a single one in the batch, and its weight gradient over
    its bias gradient is that input.

    ``mode="first_fc"`` (default) rewrites the model's first ``nn.Linear`` in
    place; ``pass_through_convs=True`` also turns the convolutions before it
    into copy filters (the other filters zero), so that layer sees the raw
    image (our reading of the paper's extension to CNNs). ``mode="block"``
    inserts ``Sequential(Linear(C*H*W, num_neurons), ReLU, Linear(num_neurons,
    C*H*W))`` in front (the released code's ``CuriousAbandonHonesty`` block,
    back-projection all ones, bias 0), see :class:`~fedguard.attacks.craft.FrontEndModel`.

    References
    ----------
    F. Boenisch, A. Dziedzic, R. Schuster, A. S. Shamsabadi, I. Shumailov,
    N. Papernot, "When the Curious Abandon Honesty: Federated Learning Is Not
    Private", IEEE EuroS&P 2023 (code: breaching ``malicious-model-cah.yaml``:
    mu 0, sigma 0.5, scale_factor 0.95).
    """
    gen = seeded_generator(seed)
    if mode == "block":
        out = front_block(model, input_shape, num_neurons, seed, "trap_weights", "num_neurons")
        first, second = out.imprint[0], out.imprint[2]
        with torch.no_grad():
            first.weight.copy_(_trap_rows(num_neurons, first.in_features, sigma, scale_factor, gen))
            first.bias.fill_(mu)
            second.weight.fill_(1.0)
            second.bias.zero_()
        return dry_check(out, input_shape, "trap_weights")
    if mode != "first_fc":
        raise ValueError(f"unknown mode {mode!r}; use 'first_fc' or 'block'")
    model = copy.deepcopy(model)
    sites = trace_sites(model, input_shape)
    lin_site = need_linear(sites, "trap_weights")[0]
    lin: nn.Linear = lin_site.module
    if pass_through_convs and not any(sites.index(c) < sites.index(lin_site) for c in conv_sites(sites)):
        raise ValueError(f"pass_through_convs=True turns the convolutions before the first Linear layer "
                         f"({lin_site.name}) into copy filters, and there are none; drop --set pass_through_convs=True")
    with torch.no_grad():
        if pass_through_convs:
            pass_through_filters(sites, input_shape[0], conv_mode="copy", zero_rest=True, upto=sites.index(lin_site))
        lin.weight.copy_(_trap_rows(lin.out_features, lin.in_features, sigma, scale_factor, gen).to(lin.weight.dtype))
        if lin.bias is not None:
            lin.bias.fill_(mu)
    return dry_check(model, input_shape, "trap_weights")
