"""The capacity attack: a fully connected layer far wider than the architecture needs, so that more of the batch's
inputs pass through it separably (Phong et al., IEEE TIFS 2018, whose single-layer inversion it feeds; Fowl et al.,
ICLR 2022; Zhao et al., CVPR 2023)."""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
from torch import nn

from fedguard.attacks.craft._base import CRAFTERS, Shape, check_added, dry_check, seeded_generator, seeded_linear
from fedguard.attacks.craft._sites import need_linear, set_module, trace_sites


@CRAFTERS.register("oversized_fc")
def oversized_fc(
    model: nn.Module,
    *,
    input_shape: Shape,
    num_classes: int,
    data: torch.Tensor | None = None,
    seed: int = 0,
    width: int | None = None,
    factor: int = 8,
    batch_size: int | None = None,
    position: Literal["auto", "first", "classifier"] = "auto",
    std: float | None = None,
) -> nn.Module:
    """Capacity attack: a fully connected layer far wider than the architecture needs.

    ``position="first"`` widens the model's first ``nn.Linear`` (``d_in ->
    width``) and re-creates the next one to take ``width`` inputs (default
    init); ``"classifier"`` replaces the last ``nn.Linear`` by
    ``Sequential(Linear(d, width), ReLU, Linear(width, classes))`` (new keys
    ``<name>.0``/``<name>.2``); ``"auto"`` picks ``first`` when the model has
    two or more linear layers. ``width`` defaults to ``max(factor * d_in,
    4 * batch_size)``: 8x the layer's input size, or enough units (4 per
    example) to memorise a whole batch of ``batch_size``. The wide layer is
    drawn from ``N(0, std^2)`` (``std = 1/sqrt(d_in)`` by default), bias too.

    With many more ReLU units than examples, most units are active for one
    example only and ``dW_i / db_i`` returns it (the linear-layer leakage that
    Robbing the Fed, LOKI and trap weights all build on).

    References
    ----------
    L. Fowl et al., "Robbing the Fed", ICLR 2022 (Sec. 3, a linear layer with
    enough units leaks its inputs); J. C. Zhao et al., "The Resource Problem of
    Using Linear Layer Leakage Attack in Federated Learning", CVPR 2023.
    """
    model = copy.deepcopy(model)
    sites = trace_sites(model, input_shape)
    lins = need_linear(sites, "oversized_fc")
    if position == "auto":
        position = "first" if len(lins) >= 2 else "classifier"
    target = lins[0] if position == "first" else lins[-1]
    d_in = target.module.in_features
    w = int(width) if width is not None else max(factor * d_in, 4 * int(batch_size or 0))
    replaced = target.module.out_features if position == "first" else d_in  # what the wide layer must outgrow
    if w <= replaced:
        what = "the layer it replaces" if position == "first" else "its input"
        raise ValueError(f"width {w} is not wider than {what} ({replaced} units): nothing oversized; use a larger width or factor")
    fed = lins[1] if position == "first" and len(lins) > 1 else target  # the layer that takes the wide one's output
    check_added((d_in + 1) * w + (w + 1) * fed.module.out_features, "oversized_fc", "width (or factor, batch_size)")
    s = float(std) if std is not None else 1.0 / math.sqrt(d_in)
    gen = seeded_generator(seed)
    wide = seeded_linear(d_in, w, seed)
    with torch.no_grad():
        wide.weight.copy_(torch.randn(w, d_in, generator=gen) * s)
        wide.bias.copy_(torch.randn(w, generator=gen) * s)
    if position == "first":
        if len(lins) < 2:
            raise ValueError("position='first' needs a model with two or more linear layers")
        nxt = lins[1]
        set_module(model, target.name, wide)
        set_module(model, nxt.name, seeded_linear(w, nxt.module.out_features, seed + 1, bias=nxt.module.bias is not None))
    elif position == "classifier":
        head = nn.Sequential(wide, nn.ReLU(), seeded_linear(w, target.module.out_features, seed + 1))
        set_module(model, target.name, head)
    else:
        raise ValueError(f"unknown position {position!r}; use 'auto', 'first' or 'classifier'")
    return dry_check(model, input_shape, "oversized_fc")
