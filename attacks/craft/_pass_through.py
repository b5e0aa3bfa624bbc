"""MKOR's pass-through filters: convolutions turned into copies, complements and shifts of their input channels, so
that the first fully connected layer sees the image (Wang et al., WACV 2024). MKOR's crafters and trap weights'
extension to CNNs use them."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from fedguard.attacks.craft._sites import Site, conv_sites


def _centre(conv: nn.Conv2d) -> tuple[int, int]:
    kh, kw = conv.kernel_size
    return kh // 2, kw // 2


def _same_group(conv: nn.Conv2d, out_ch: int, in_ch: int) -> bool:
    opg, ipg = conv.out_channels // conv.groups, conv.in_channels // conv.groups
    return out_ch // opg == in_ch // ipg


def _place_tap(conv: nn.Conv2d, out_ch: int, in_ch: int, tap: tuple[int, int], value: float) -> bool:
    """Make filter ``out_ch`` a single ``value`` at ``tap`` of input channel ``in_ch``; False if impossible."""
    kh, kw = conv.kernel_size
    if out_ch >= conv.out_channels or not _same_group(conv, out_ch, in_ch) or tap[0] >= kh or tap[1] >= kw:
        return False
    w = conv.weight
    w[out_ch].zero_()
    w[out_ch, in_ch % (conv.in_channels // conv.groups), tap[0], tap[1]] = value
    return True


def following_bn(sites: list[Site], index: int) -> nn.modules.batchnorm._BatchNorm | None:
    nxt = sites[index + 1] if index + 1 < len(sites) else None
    conv = sites[index].module
    if nxt is not None and isinstance(nxt.module, nn.modules.batchnorm._BatchNorm) and nxt.module.num_features == conv.out_channels:
        return nxt.module
    return None


def _bn_identity(bn: nn.modules.batchnorm._BatchNorm) -> None:
    if bn.weight is not None:
        bn.weight.fill_(1.0)
        bn.bias.zero_()
    if bn.running_mean is not None:
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)


def _downsamples(sites: list[Site], convs: list[Site], j: int) -> bool:
    """True when conv ``j`` strides, or the next conv sees a smaller image than conv ``j`` makes."""
    conv = convs[j].module
    if max(conv.stride) > 1:
        return True
    out = convs[j].out_shape
    if j + 1 < len(convs) and len(out) == 4 and len(convs[j + 1].in_shape) == 4:
        return math.prod(convs[j + 1].in_shape[2:]) < math.prod(out[2:])
    if j + 1 == len(convs) and len(out) == 4:
        # the last convolution: does the first linear layer after it see fewer values (a pooling)?
        after = [s for s in sites[sites.index(convs[j]) + 1 :] if isinstance(s.module, nn.Linear) and s.in_shape]
        return bool(after) and math.prod(after[0].in_shape[1:]) < math.prod(out[1:])
    return False


def pass_through_filters(
    sites: list[Site],
    input_channels: int,
    conv_mode: str = "paper",
    min_filters: bool = True,
    zero_rest: bool = False,
    bn: str = "identity",
    upto: int | None = None,
    shuffle: torch.Generator | None = None,
) -> list[dict[str, Any]]:
    """Turn the convolutions into MKOR's pass-through filters; return what each one got.

    ``copy``: a single 1 at the centre tap of its matching input channel.
    ``min``: centre -1 with bias 1 (the complement 1 - x of a [0, 1] input),
    placed after the copies in a first convolution that does not down-sample
    (so a following max-pool keeps a lower bound). ``shift`` ("4_dir"): the
    centre plus the right, lower and lower-right taps, so a following 2x2
    down-sampling keeps all four positions in separate channels; ``paper``
    shifts in front of every down-sampling where the channels allow, as the
    authors' LeNet and VGG16 do. ``shuffle`` (a generator) puts the
    pass-through filters at random output channels instead of the first ones
    (MKOR's inconspicuous form).
    """
    plan: list[dict[str, Any]] = []
    convs = conv_sites(sites)
    if upto is not None:
        convs = [c for c in convs if sites.index(c) < upto]
    active = list(range(input_channels))
    for j, site in enumerate(convs):
        conv: nn.Conv2d = site.module
        index = sites.index(site)
        active = [c for c in active if c < conv.in_channels] or [0]
        n = len(active)
        cy, cx = _centre(conv)
        kh, kw = conv.kernel_size
        can_shift = conv.groups == 1 and cy + 1 < kh and cx + 1 < kw and conv.out_channels >= 4 * n
        first = j == 0
        if conv_mode == "copy":
            kind = "copy"
        elif conv_mode == "shift":
            kind = "shift" if can_shift else "copy"
        elif conv_mode == "paper":
            if can_shift and _downsamples(sites, convs, j):
                kind = "shift"
            elif first and min_filters and conv.groups == 1 and conv.out_channels >= 2 * n:
                kind = "copy+min"
            else:
                kind = "copy"
        else:
            raise ValueError(f"unknown conv_mode {conv_mode!r}; use 'paper', 'copy' or 'shift'")

        following = following_bn(sites, index)
        if zero_rest:
            conv.weight.zero_()
        if conv.bias is not None:
            conv.bias.zero_()
        if following is not None and bn == "identity":
            _bn_identity(following)
        if shuffle is not None and conv.groups == 1:
            slots = torch.randperm(conv.out_channels, generator=shuffle).tolist()
        else:
            slots = list(range(conv.out_channels))
        taps = [(cy, cx), (cy, cx + 1), (cy + 1, cx), (cy + 1, cx + 1)] if kind == "shift" else [(cy, cx)]
        placed: list[int] = []
        free = list(slots)
        for tap in taps:  # each channel's tap in the first free slot of its group (a grouped conv's had been left out)
            for ch in active:
                slot = next((s for s in free if _same_group(conv, s, ch)), None)
                if slot is not None and _place_tap(conv, slot, ch, tap, 1.0):
                    free.remove(slot)
                    placed.append(slot)
        if kind == "copy+min":
            for i, ch in enumerate(active):
                out = slots[n + i]
                if _place_tap(conv, out, ch, (cy, cx), -1.0):
                    placed.append(out)
                    # the bias of 1 goes on the conv, or on the BatchNorm of a bias-free conv
                    if conv.bias is not None:
                        conv.bias[out] = 1.0
                    elif following is not None and following.bias is not None:
                        following.bias[out] = 1.0
        plan.append({"layer": site.name, "kind": kind, "active_in": n, "placed": len(placed), "channels": placed})
        active = placed or [0]
    return plan
