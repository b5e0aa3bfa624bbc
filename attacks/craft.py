"""Crafters: the global models a malicious FL server sends to make updates leak data.

This is fedguard's red-team side. Each crafter takes an ordinary model and
returns a *new* module (a deep copy, modified) whose ``state_dict()`` is what a
dishonest server would broadcast, following one published attack. The tests
and benchmarks use them to measure ``fedguard inspect``'s detectors; they are
never used on a user's model.

Every crafter has the signature::

    craft(model, *, input_shape, num_classes, data=None, seed=0, **options) -> nn.Module

``data`` (optional, ``[N, C, H, W]`` in the client's input range) plays the
server's public/auxiliary data: crafters that calibrate thresholds or bins use
it, otherwise they fall back to the paper's distribution assumptions. Layers
are found generically, in *execution* order, by one traced forward pass with
hooks (first ``nn.Linear``, last ``nn.Linear``, every ``nn.Conv2d``), so every
built-in architecture and most user ones work. Crafters that insert a block in
front of the model return a :class:`FrontEndModel`, whose state_dict keys are
``imprint.<i>.*`` (the inserted ``nn.Sequential``) followed by ``model.*`` (the
original model's keys, unchanged).

Registered crafters (``CRAFTERS.names()``):

========================  ===============================================================
``mkor``                  Wang et al., WACV 2024 (naive MKOR parameters)
``mkor_inconspicuous``    Wang et al., WACV 2024 (MKOR's inconspicuous form)
``class_fishing``         Wen et al., ICML 2022 (class fishing)
``feature_fishing``       Wen et al., ICML 2022 (feature fishing)
``imprint``               Fowl et al., ICLR 2022 ("Robbing the Fed" imprint block)
``trap_weights``          Boenisch et al., EuroS&P 2023 ("curious abandon honesty")
``loki``                  Zhao et al., IEEE S&P 2024 (LOKI scaled-identity conv + imprint)
``oversized_fc``          capacity attack: a far too wide fully connected layer
========================  ===============================================================
"""

from __future__ import annotations

import collections.abc
import copy
import inspect
import math
import types
import typing
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from fedguard import checks
from fedguard.architectures import (
    build_model,
    check_float32,
    check_input_shape,
    check_num_classes,
    classifier_logits,
    resolve_input_shape,
)
from fedguard.checks import is_number, is_whole
from fedguard.errors import InputError, did_you_mean, first_line, keyword_names, kind_of
from fedguard.layers import forward_hooks, layer_input
from fedguard.modelview import first_non_finite
from fedguard.registry import Registry
from fedguard.torch_state import evaluating, own_torch_state


__all__ = [
    "CRAFTERS",
    "FrontEndModel",
    "NothingToPlant",
    "check_options",
    "craft",
    "crafter_options",
    "craft_model",
    "mkor",
    "mkor_inconspicuous",
    "class_fishing",
    "feature_fishing",
    "imprint",
    "trap_weights",
    "loki",
    "oversized_fc",
]

Shape = tuple[int, int, int]
Crafter = Callable[..., nn.Module]

#: Name -> crafter function. ``CRAFTERS.get(name)`` raises KeyError listing the valid names.
CRAFTERS: Registry[Crafter] = Registry("crafter")
#: Arguments every crafter takes; the rest of its signature are its options.
_COMMON = frozenset({"model", "input_shape", "num_classes", "data", "seed"})


# --------------------------------------------------------------------------- the wrapper


class FrontEndModel(nn.Module):
    """A malicious block in front of an unchanged model.

    ``forward(x)`` runs ``imprint`` on ``x`` (flattened to ``[B, C*H*W]`` unless
    ``image_input``), reshapes the result to ``[B, *input_shape]`` and feeds it
    to ``model``. state_dict layout: ``imprint.<i>.weight/bias`` for the layers
    of the inserted ``nn.Sequential`` (numbered as in the Sequential, so
    activations leave gaps), then the original model's keys under ``model.``.
    """

    def __init__(self, imprint: nn.Sequential, model: nn.Module, input_shape: Sequence[int], image_input: bool = False):
        super().__init__()
        self.imprint = imprint
        self.model = model
        self.input_shape = tuple(int(s) for s in input_shape)
        self.image_input = bool(image_input)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.imprint(x if self.image_input else x.flatten(1))
        return self.model(z.reshape(x.shape[0], *self.input_shape))


# --------------------------------------------------------------------------- helpers


@dataclass
class _Site:
    """One weight/norm layer as met during a forward pass."""

    name: str
    module: nn.Module
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


_TRACED = (nn.Linear, nn.Conv2d, nn.modules.batchnorm._BatchNorm)


def _trace(model: nn.Module, input_shape: Shape) -> list[_Site]:
    """Linear, Conv2d and BatchNorm layers in the order a forward pass runs them (first call only)."""
    sites: list[_Site] = []
    seen: set[int] = set()
    names = {id(m): n for n, m in model.named_modules()}

    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        if id(module) in seen or not args or not isinstance(args[0], torch.Tensor):
            return
        seen.add(id(module))
        out_shape = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
        sites.append(_Site(names.get(id(module), ""), module, tuple(args[0].shape), out_shape))

    try:
        with forward_hooks(model, _TRACED, hook), evaluating(model), torch.no_grad():
            model(torch.zeros(2, *input_shape))
    except Exception:
        # Fall back to registration order (no shapes) for models a zero batch cannot run.
        sites = [_Site(n, m, (), ()) for n, m in model.named_modules() if isinstance(m, _TRACED)]
    return sites


def _linears(sites: list[_Site]) -> list[_Site]:
    return [s for s in sites if isinstance(s.module, nn.Linear)]


def _convs(sites: list[_Site]) -> list[_Site]:
    return [s for s in sites if isinstance(s.module, nn.Conv2d)]


def _need_linear(sites: list[_Site], crafter: str) -> list[_Site]:
    lins = _linears(sites)
    if not lins:
        raise ValueError(f"crafter {crafter!r} needs a model with at least one nn.Linear layer")
    return lins


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the sub-module called ``name`` (dotted path) by ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


#: Parameters a crafter may add (4 GiB in float32): above it a size option (``num_bins``, ``width``, ...) is refused
#: before anything is allocated, instead of swapping or being killed for memory.
MAX_ADDED_PARAMETERS = 2**30


def _check_added(parameters: int, crafter: str, options: str) -> None:
    """ValueError when the layers ``crafter`` is about to add hold more than :data:`MAX_ADDED_PARAMETERS`."""
    if parameters > MAX_ADDED_PARAMETERS:
        raise ValueError(f"{crafter} would add {parameters:,} parameters ({parameters * 4 / 2**30:,.1f} GiB), "
                         f"above the limit of {MAX_ADDED_PARAMETERS:,}; lower {options}")  # fmt: skip


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _seeded_linear(n_in: int, n_out: int, seed: int, bias: bool = True) -> nn.Linear:
    """A ``nn.Linear`` with PyTorch's default initialisation drawn from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return nn.Linear(n_in, n_out, bias=bias)


def _check_data(data: torch.Tensor | np.ndarray | None, input_shape: Shape) -> torch.Tensor | None:
    """``data`` as float32 inputs ``[N, *input_shape]`` (uint8 read as 0-255 pixels), or InputError naming the fix."""
    if data is None:
        return None
    data = torch.as_tensor(data).detach().cpu()  # the crafters work on the CPU
    if data.dtype == torch.uint8:  # 0-255 pixels, read as fedguard.data reads them
        data = data / 255.0
    data = data.to(torch.float32)
    shape = tuple(input_shape)
    if data.dim() == 4 and tuple(data.shape[1:]) == (*shape[1:], shape[0]) != shape:
        raise InputError(f"data of shape {tuple(data.shape)} have their channels last; pass images as N, C, H, W "
                         "(data.permute(0, 3, 1, 2))")
    if data.dim() != 1 + len(shape) or tuple(data.shape[1:]) != shape or len(data) == 0:
        raise InputError(f"data of shape {tuple(data.shape)} are not inputs of input_shape {shape}; pass a tensor "
                         f"[N, {', '.join(map(str, shape))}] with N of at least 1")
    if not torch.isfinite(data).all():
        raise InputError("data holds NaN or infinite values; pass finite inputs")
    return data


def _inputs_of(model: nn.Module, layer: nn.Module, data: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """The inputs ``layer`` sees when ``model`` runs (eval mode) on ``data``, flattened per example."""
    with evaluating(model), torch.no_grad():
        return torch.cat([layer_input(model, layer, data[i : i + batch]) for i in range(0, len(data), batch)])


def _dry_check(model: nn.Module, input_shape: Shape, crafter: str) -> nn.Module:
    try:
        with evaluating(model), torch.no_grad():
            model(torch.zeros(1, *input_shape))
    except Exception as exc:  # pragma: no cover - a crafter bug, not user input
        raise RuntimeError(f"crafter {crafter!r} produced a model that does not run: {exc}") from exc
    return model


def _add_param_noise(layers: Sequence[nn.Module], noise: float, gen: torch.Generator) -> None:
    """MKOR's "inconspicuous" variant: add N(0, (noise / sqrt(fan_in))^2) to weights and biases."""
    for layer in layers:
        w = layer.weight
        std = noise / math.sqrt(max(1, w[0].numel()))
        w.add_(torch.randn(w.shape, generator=gen).to(w.dtype) * std)
        if layer.bias is not None:
            layer.bias.add_(torch.randn(layer.bias.shape, generator=gen).to(w.dtype) * std)


# --------------------------------------------------------------------------- conv pass-through pieces


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


def _following_bn(sites: list[_Site], index: int) -> nn.modules.batchnorm._BatchNorm | None:
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


def _downsamples(sites: list[_Site], convs: list[_Site], j: int) -> bool:
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


def _pass_through_convs(
    sites: list[_Site],
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
    convs = _convs(sites)
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

        following = _following_bn(sites, index)
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


# --------------------------------------------------------------------------- crafters


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
    sites = _trace(model, input_shape)
    lins = _need_linear(sites, "mkor")
    with torch.no_grad():
        _pass_through_convs(sites, input_shape[0], conv_mode=conv_mode, min_filters=min_filters, bn=bn)
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
            _add_param_noise(layers, noise, _generator(seed))
    return _dry_check(model, input_shape, "mkor")


def _noisy_entries(weight: torch.Tensor, mask: torch.Tensor, noise: float, gen: torch.Generator) -> None:
    """Add N(0, (noise / sqrt(fan_in))^2) to the entries of ``weight`` selected by ``mask``."""
    if noise and mask.any():
        std = noise / math.sqrt(max(1, weight[0].numel()))
        weight.add_(torch.randn(weight.shape, generator=gen).to(weight.dtype) * std * mask)


def _channel_state(sites: list[_Site], index: int) -> list[torch.Tensor]:
    """Per-channel tensors of convolution ``sites[index]``: its bias and its following BatchNorm's."""
    conv = sites[index].module
    out = [conv.bias] if conv.bias is not None else []
    bn = _following_bn(sites, index)
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
    sites = _trace(model, input_shape)
    lins = [s.module for s in _need_linear(sites, "mkor_inconspicuous")]
    gen = _generator(seed)
    with torch.no_grad():
        # the pass-through filters need zero biases (and identity BatchNorm); the other channels keep theirs
        convs = [(i, site.module) for i, site in enumerate(sites) if isinstance(site.module, nn.Conv2d)]
        kept = {id(m): [t.clone() for t in _channel_state(sites, i)] for i, m in convs}
        for step in _pass_through_convs(sites, input_shape[0], conv_mode=conv_mode, bn=bn, shuffle=gen):
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
    return _dry_check(model, input_shape, "mkor_inconspicuous")


def _targets(target: int | Sequence[int], num_classes: int) -> list[int]:
    targets = [int(target)] if is_whole(target) else [int(t) for t in target]
    if not targets:
        raise ValueError("no target class given; name at least one, e.g. target=0")
    for t in targets:
        if not 0 <= t < num_classes:
            raise ValueError(f"target class {t} is outside 0..{num_classes - 1}")
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
    lins = _need_linear(_trace(model, input_shape), "class_fishing")
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
    return _dry_check(model, input_shape, "class_fishing")


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
    lins = _need_linear(_trace(model, input_shape), "feature_fishing")
    last: nn.Linear = lins[-1].module
    (t,) = _targets(target, last.out_features)
    if last.bias is None:
        raise ValueError("it needs a last linear layer with a bias")
    if data is not None and len(data) > max_examples:
        data = data[torch.randperm(len(data), generator=_generator(seed))[:max_examples]]
    feats = _inputs_of(model, last, data) if data is not None else None
    if feature is None:
        if feats is not None and len(feats) > 1:
            feature = int(feats.std(dim=0).argmax())
        else:
            feature = int(torch.randint(last.in_features, (1,), generator=_generator(seed)))
    if not 0 <= feature < last.in_features:
        raise ValueError(f"feature {feature} is outside 0..{last.in_features - 1}")
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
    return _dry_check(model, input_shape, "feature_fishing")


def _measurement(linfunc: str, n: int, mode: int, gen: torch.Generator) -> torch.Tensor:
    """The imprint block's linear query (one row), as in the paper's code."""
    if linfunc == "avg":
        return torch.full((n,), 1.0 / n)
    if linfunc == "fourier":
        return torch.cos(math.pi / n * (torch.arange(n) + 0.5) * mode) / n * max(mode, 0.33) * 4
    if linfunc == "randn":
        if n == 1:  # one input value: the only direction there is
            return torch.ones(1)
        w = torch.randn(n, generator=gen)
        return (w - w.mean()) / w.std() / math.sqrt(n)
    raise ValueError(f"unknown linfunc {linfunc!r}; use 'avg', 'fourier' or 'randn'")


def _ladder(
    num_bins: int,
    linfunc: str,
    values: torch.Tensor | None,
    fit: str,
    loc: float | None,
    scale: float | None,
) -> np.ndarray:
    """Bin edges (float64): bins[0] far below (the paper's -10 sigma), then the i/K quantiles."""
    if values is not None and fit == "quantile":
        v = values.double().numpy()
        mu, sd = float(v.mean()), float(v.std()) or 1.0
        edges = np.quantile(v, np.arange(1, num_bins) / num_bins)
    else:
        dist = fit if fit in ("normal", "laplace") else ("laplace" if linfunc == "fourier" else "normal")
        if values is not None:
            mu, sd = float(values.double().mean()), float(values.double().std()) or 1.0
        else:
            mu, sd = 0.0, 1.0  # the paper assumes standardised inputs
        mu = mu if loc is None else float(loc)
        sd = sd if scale is None else float(scale)
        q = np.arange(1, num_bins) / num_bins
        if dist == "laplace":
            b = sd / math.sqrt(2.0)  # Laplace with standard deviation sd
            edges = np.where(q < 0.5, mu + b * np.log(2 * q), mu - b * np.log(2 - 2 * q))
        else:
            nd = NormalDist(mu, sd)
            edges = np.array([nd.inv_cdf(float(p)) for p in q])
    return np.concatenate([[mu - 10.0 * sd], edges])


def _strictly_decreasing(values: np.ndarray) -> torch.Tensor:
    """float32 copy of a non-increasing sequence with ties (e.g. tied quantiles) split by one ulp."""
    out = values.astype(np.float32)
    for i in range(1, len(out)):
        if out[i] >= out[i - 1]:
            out[i] = np.nextafter(out[i - 1], np.float32(-np.inf))
    return torch.from_numpy(out)


@CRAFTERS.register("imprint")
def imprint(
    model: nn.Module,
    *,
    input_shape: Shape,
    num_classes: int,
    data: torch.Tensor | None = None,
    seed: int = 0,
    num_bins: int = 128,
    linfunc: Literal["avg", "fourier", "randn"] = "avg",
    mode: int = 0,
    gain: float = 1.0,
    fit: Literal["quantile", "normal", "laplace"] = "quantile",
    loc: float | None = None,
    scale: float | None = None,
) -> FrontEndModel:
    """Robbing the Fed: an imprint block in front of the model.

    Returns a :class:`FrontEndModel` whose ``imprint`` is
    ``Sequential(Linear(C*H*W, K), ReLU, Linear(K, C*H*W))``; keys
    ``imprint.0.weight/bias``, ``imprint.2.weight/bias``, then ``model.*``.

    * ``imprint.0.weight``: K identical rows, the measurement ``h`` times
      ``gain`` (``linfunc="avg"``: all ``1/(CHW)``, the average brightness;
      ``"fourier"``: a DCT-II mode ``mode``; ``"randn"``: a fixed random
      direction with unit output variance);
    * ``imprint.0.bias``: ``-gain * bins``, a monotone ladder: ``bins[0]`` far
      below the distribution (the paper's -10 sigma), then the ``i/K``
      quantiles of the measurement: empirical ones on ``data``
      (``fit="quantile"``), else a normal fit (Laplace for ``fourier``), with
      the paper's standard-normal assumption when there is no data;
    * ``imprint.2``: weights ``1/gain`` everywhere, bias the default draw minus
      the mean bin (as in the paper's code).

    For one example, bin ``i`` is active iff ``h(x) > bins[i]``; with
    ``dW_i`` and ``db_i`` its gradients, ``(dW_i - dW_{i+1}) / (db_i -
    db_{i+1})`` is exactly the one example whose measurement falls between
    the two edges.

    References
    ----------
    L. Fowl, J. Geiping, W. Czaja, M. Goldblum, T. Goldstein, "Robbing the
    Fed: Directly Obtaining Private Data in Federated Learning with Modified
    Models", ICLR 2022 (code: breaching ``ImprintBlock``).
    """
    base = copy.deepcopy(model)
    n = math.prod(input_shape)
    _check_added(2 * n * num_bins + num_bins + n, "imprint", "num_bins")
    if linfunc == "fourier" and mode >= n:  # a higher mode aliases a lower one, scaled up (mode=100000: weights of 130)
        raise InputError(f"imprint mode={mode} is beyond the {n} DCT modes of a {'x'.join(map(str, input_shape))} input; "
                         f"give a mode from 0 to {n - 1}")
    gen = _generator(seed)
    h = _measurement(linfunc, n, mode, gen)
    values = data.flatten(1) @ h if data is not None else None
    bins = _ladder(num_bins, linfunc, values, fit, loc, scale)
    first = _seeded_linear(n, num_bins, seed)
    second = _seeded_linear(num_bins, n, seed + 1)
    with torch.no_grad():
        first.weight.copy_(h.repeat(num_bins, 1) * gain)
        first.bias.copy_(_strictly_decreasing(-bins * gain))
        second.weight.fill_(1.0 / gain)
        second.bias.sub_(float(bins.mean()))
    out = FrontEndModel(nn.Sequential(first, nn.ReLU(), second), base, input_shape)
    return _dry_check(out, input_shape, "imprint")


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
    back-projection all ones, bias 0), see :class:`FrontEndModel`.

    References
    ----------
    F. Boenisch, A. Dziedzic, R. Schuster, A. S. Shamsabadi, I. Shumailov,
    N. Papernot, "When the Curious Abandon Honesty: Federated Learning Is Not
    Private", IEEE EuroS&P 2023 (code: breaching ``malicious-model-cah.yaml``:
    mu 0, sigma 0.5, scale_factor 0.95).
    """
    gen = _generator(seed)
    if mode == "block":
        base = copy.deepcopy(model)
        n = math.prod(input_shape)
        _check_added(2 * n * num_neurons + num_neurons + n, "trap_weights", "num_neurons")
        first = _seeded_linear(n, num_neurons, seed)
        second = _seeded_linear(num_neurons, n, seed + 1)
        with torch.no_grad():
            first.weight.copy_(_trap_rows(num_neurons, n, sigma, scale_factor, gen))
            first.bias.fill_(mu)
            second.weight.fill_(1.0)
            second.bias.zero_()
        out = FrontEndModel(nn.Sequential(first, nn.ReLU(), second), base, input_shape)
        return _dry_check(out, input_shape, "trap_weights")
    if mode != "first_fc":
        raise ValueError(f"unknown mode {mode!r}; use 'first_fc' or 'block'")
    model = copy.deepcopy(model)
    sites = _trace(model, input_shape)
    lin_site = _need_linear(sites, "trap_weights")[0]
    lin: nn.Linear = lin_site.module
    with torch.no_grad():
        if pass_through_convs:
            _pass_through_convs(sites, input_shape[0], conv_mode="copy", zero_rest=True, upto=sites.index(lin_site))
        lin.weight.copy_(_trap_rows(lin.out_features, lin.in_features, sigma, scale_factor, gen).to(lin.weight.dtype))
        if lin.bias is not None:
            lin.bias.fill_(mu)
    return _dry_check(model, input_shape, "trap_weights")


def _loki_bins(num_bins: int, mu: float, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """LOKI's ``get_bins``: K+1 normal quantiles at equal mass 1/(K+2); the first K and their widths."""
    nd = NormalDist(mu, sigma)
    edges = torch.tensor([nd.inv_cdf((p + 1) / (num_bins + 2)) for p in range(num_bins + 1)], dtype=torch.float64)
    return edges[:-1].float(), (edges[1:] - edges[:-1]).float()


@CRAFTERS.register("loki")
def loki(
    model: nn.Module,
    *,
    input_shape: Shape,
    num_classes: int,
    data: torch.Tensor | None = None,
    seed: int = 0,
    num_clients: int = 10,
    client: int = 0,
    batch_size: int = 64,
    num_bins: int | None = None,
    conv_scale: float = 500.0,
    fc_scale: float = 1000.0,
    kernel_size: int = 3,
    mu: float | None = None,
    sigma: float | None = None,
) -> FrontEndModel:
    """LOKI: a customised scaled-identity convolution and an imprint layer in front.

    Returns a :class:`FrontEndModel` (image input) whose ``imprint`` is
    ``Sequential(Conv2d(C, M*C, k, padding same), ReLU, Flatten,
    Linear(M*C*H*W, K), Hardtanh(0, 1), Linear(K, C*H*W), ReLU)``; keys
    ``imprint.0`` (conv), ``imprint.3`` (FC1), ``imprint.5`` (FC2), then ``model.*``.

    * ``imprint.0``: for client slot ``client`` of ``M = num_clients``, kernel
      ``client*C + j`` is a dirac at the centre tap of input channel ``j``
      scaled by ``conv_scale`` (500); every other kernel and all biases are 0.
      Each client gets a different slot, so under secure aggregation its
      contribution lands in its own columns of FC1;
    * ``imprint.3`` (FC1, ``K = 4 * batch_size`` bins by default): row ``i``
      is the constant ``1 / (conv_scale * C*H*W * width_i)`` (an average-intensity
      measurement), bias ``-bin_i / width_i``; the bins are the LOKI
      ``get_bins`` quantiles of ``N(mu, sigma)`` at equal mass ``1/(K+2)``,
      with ``mu, sigma`` the mean and std of the average pixel intensity of
      ``data`` (else of CIFAR-10 in the paper's notebook, 0.473 and 0.125);
    * ``imprint.5`` (FC2): all weights ``fc_scale`` (1000), bias 0.

    Our reading of the paper (and of its released FedAvg notebook): the "scaling"
    convolution isolates clients, the Hardtanh makes each bin a sparse
    one-example window, and the 1000-valued back-projection keeps the signal
    large enough to survive many local steps.

    References
    ----------
    J. C. Zhao, A. Sharma, A. R. Elkordy, Y. H. Ezzeldin, S. Avestimehr,
    S. Bagchi, "LOKI: Large-scale Data Reconstruction Attack against Federated
    Learning through Model Manipulation", IEEE S&P 2024.
    """
    if not 0 <= client < num_clients:
        raise ValueError(f"client slot {client} is outside 0..{num_clients - 1}")
    c, hgt, wid = input_shape
    if kernel_size % 2 == 0 or kernel_size > min(hgt, wid):  # "same" padding keeps the image's size only then
        raise InputError(f"loki option kernel_size={kernel_size} must be odd and at most the image's side "
                         f"({min(hgt, wid)}), e.g. 3")  # fmt: skip
    base = copy.deepcopy(model)
    n = c * hgt * wid
    k = int(num_bins or 4 * batch_size)
    _check_added((num_clients * n + 1) * k + (k + 1) * n, "loki", "num_bins (or batch_size) and num_clients")
    if data is not None:
        avg = data.flatten(1).mean(dim=1)
        mu = float(avg.mean()) if mu is None else mu
        if sigma is None:
            sigma = float(avg.std()) if len(avg) > 1 else 0.0
            if not sigma > 0:  # one example, or all of one brightness: no spread to place bins by
                raise ValueError(f"the {len(avg)} example(s) of data have no spread in average brightness to place its "
                                 "bins by; pass more varied data, or set sigma (e.g. --set sigma=0.12)")  # fmt: skip
    mu = 0.4733630142373343 if mu is None else float(mu)
    sigma = 0.1252652199273531 if sigma is None else float(sigma)
    bins, widths = _loki_bins(k, mu, sigma)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        conv = nn.Conv2d(c, num_clients * c, kernel_size, padding=kernel_size // 2)
        fc1 = nn.Linear(num_clients * n, k)
        fc2 = nn.Linear(k, n)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        centre = kernel_size // 2
        for j in range(c):
            conv.weight[client * c + j, j, centre, centre] = conv_scale
        fc1.weight.copy_((1.0 / conv_scale / n / widths)[:, None].expand(k, num_clients * n))
        fc1.bias.copy_(-bins / widths)
        fc2.weight.fill_(fc_scale)
        fc2.bias.zero_()
    block = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), fc1, nn.Hardtanh(0.0, 1.0), fc2, nn.ReLU())
    out = FrontEndModel(block, base, input_shape, image_input=True)
    return _dry_check(out, input_shape, "loki")


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
    sites = _trace(model, input_shape)
    lins = _need_linear(sites, "oversized_fc")
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
    _check_added((d_in + 1) * w + (w + 1) * fed.module.out_features, "oversized_fc", "width (or factor, batch_size)")
    s = float(std) if std is not None else 1.0 / math.sqrt(d_in)
    gen = _generator(seed)
    wide = _seeded_linear(d_in, w, seed)
    with torch.no_grad():
        wide.weight.copy_(torch.randn(w, d_in, generator=gen) * s)
        wide.bias.copy_(torch.randn(w, generator=gen) * s)
    if position == "first":
        if len(lins) < 2:
            raise ValueError("position='first' needs a model with two or more linear layers")
        nxt = lins[1]
        _set_module(model, target.name, wide)
        _set_module(model, nxt.name, _seeded_linear(w, nxt.module.out_features, seed + 1, bias=nxt.module.bias is not None))
    elif position == "classifier":
        head = nn.Sequential(wide, nn.ReLU(), _seeded_linear(w, target.module.out_features, seed + 1))
        _set_module(model, target.name, head)
    else:
        raise ValueError(f"unknown position {position!r}; use 'auto', 'first' or 'classifier'")
    return _dry_check(model, input_shape, "oversized_fc")


# --------------------------------------------------------------------------- entry points


#: Bounds of numeric crafter options, by name (a name means the same quantity in every crafter): counts at
#: least 1, noise and a Fourier mode at least 0, scales and spreads above 0, a quantile and trap weights'
#: positive-to-negative ratio inside (0, 1) (at 1 or more the rows are balanced or positive, an honest layer's: the
#: trap is gone).
_AT_LEAST_ONE = frozenset({"num_bins", "width", "factor", "batch_size", "num_clients", "max_examples", "num_neurons", "kernel_size"})
_AT_LEAST_ZERO = frozenset({"noise", "mode"})
_ABOVE_ZERO = frozenset({"gain", "sigma", "std", "scale", "conv_scale", "fc_scale"})
_INSIDE_UNIT = frozenset({"quantile", "scale_factor"})


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of the annotated type ``hint`` (unions, ``Literal``, ``Sequence[int]`` and scalars)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is Literal:
        return value in args
    if origin in (collections.abc.Sequence, list, tuple):
        return isinstance(value, (list, tuple)) and all(_fits(v, args[0]) for v in value) if args else isinstance(value, (list, tuple))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return is_whole(value)
    if hint is float:
        return is_number(value)
    if hint is str:
        return isinstance(value, str)
    return True


def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if origin in (collections.abc.Sequence, list, tuple):
        return f"a list of {_type_name(args[0]) if args else 'values'}"
    return {type(None): "None", bool: "True or False", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


#: The crafters that read the server's public ``data`` (to calibrate bins, quantiles, a feature); the others craft
#: the same model with or without it.
READS_DATA = frozenset({"feature_fishing", "imprint", "loki"})


def crafter_options(name: str) -> dict[str, Any]:
    """The options of crafter ``name`` (beyond the arguments every crafter takes) with their defaults."""
    params = inspect.signature(_crafter(name)).parameters
    return {k: p.default for k, p in params.items() if k not in _COMMON}


def _crafter(name: Any) -> Crafter:
    if not isinstance(name, str) or name not in CRAFTERS:
        raise InputError(f"unknown crafter {name!r}{did_you_mean(name, CRAFTERS.names())}; valid: {', '.join(CRAFTERS.names())}")
    return CRAFTERS.get(name)


def check_options(name: str, options: Mapping[str, Any]) -> None:
    """Raise :class:`~fedguard.errors.InputError` naming the first of ``options`` that crafter ``name`` cannot
    take: not one of its options, wrong type, not one of its choices, not finite, or out of bounds (``_AT_LEAST_ONE``
    ...)."""
    hints = typing.get_type_hints(_crafter(name))
    valid = crafter_options(name)
    for key, value in options.items():
        if key not in valid:
            raise InputError(f"{name} has no option {key!r}; its options: {', '.join(valid) or 'none'}")
        hint = hints.get(key, Any)
        if not _fits(value, hint):
            raise InputError(f"{name} option {key}={value!r} is not {_type_name(hint)}; its default: "
                             f"{key}={valid[key]!r}")
        if not is_number(value):
            continue
        if isinstance(value, int) and abs(value) > 2**53:  # past float's exact integers (1e400 overflows math.isfinite)
            raise InputError(f"{name} option {key}={checks.shown(value)} is too large; use a value below 2**53")
        bounds = [
            (math.isfinite(value), "a finite number"),
            (key not in _AT_LEAST_ONE or value >= 1, "at least 1"),
            (key not in _AT_LEAST_ZERO or value >= 0, "at least 0"),
            (key not in _ABOVE_ZERO or value > 0, "above 0"),
            (key not in _INSIDE_UNIT or 0 < value < 1, "strictly between 0 and 1"),
        ]
        for ok, need in bounds:
            if not ok:
                raise InputError(f"{name} option {key}={value!r} must be {need}; its default: {key}={valid[key]!r}")


def _parametrised(model: nn.Module) -> str | None:
    """The first layer whose weight is computed from other tensors (``torch.nn.utils.parametrizations``, the older
    hook-based ``weight_norm`` / ``spectral_norm``, or ``prune`` before ``prune.remove``): writing its ``weight``
    changes nothing the model computes (a crafted LeNet with weight norm had come out unchanged, reported crafted)."""
    from torch.nn.utils import parametrize

    for layer_name, module in model.named_modules():
        if parametrize.is_parametrized(module) or hasattr(module, "weight_g") or hasattr(module, "weight_orig"):
            return layer_name or type(module).__name__
    return None


@keyword_names
def craft(
    name: str,
    model: nn.Module,
    *,
    input_shape: Shape,
    num_classes: int | None = None,
    data: torch.Tensor | None = None,
    seed: int = 0,
    **options: Any,
) -> nn.Module:
    """Run the crafter called ``name`` on ``model`` (left unchanged) and return the crafted module.

    ``num_classes`` None: the count of the logits ``model`` gives (any other count is refused). ``data``, the
    server's public inputs (a tensor, no labels), only for the crafters in :data:`READS_DATA`.

    Raises
    ------
    InputError
        One line naming the problem: an unknown crafter (listing the valid ones), a ``model`` that is not a
        float32 ``nn.Module``, a bad ``input_shape``, ``num_classes`` or ``seed``, an option the crafter does not have or a
        value it cannot take, public ``data`` that are not finite inputs of ``input_shape``, or a model the
        crafter cannot work on (e.g. no ``nn.Linear`` layer).
    """
    fn = _crafter(name)
    if not isinstance(model, nn.Module):
        raise InputError(f"model is {kind_of(model)}; pass an nn.Module (e.g. fedguard.architectures.build_model('lenet'))")
    check_float32(model, "model", "pass model.float()")
    shape = check_input_shape(input_shape)
    device = next((p.device for p in model.parameters()), None)  # a zero input where the model is
    probe = torch.zeros(1, *shape, dtype=torch.float32, device=device)
    counted = num_classes is None  # then the head's own count: nothing to check it against
    if counted:
        num_classes = classifier_logits(model, probe, "craft", probe=True).shape[1]
    num_classes = check_num_classes(num_classes)
    if data is not None and name not in READS_DATA:  # as the command line refuses --data
        raise InputError(f"{name} reads no public data (only {', '.join(sorted(READS_DATA))} do); pass data=None")
    if data is not None and not isinstance(data, (torch.Tensor, np.ndarray)):
        raise InputError(f"data is {kind_of(data)}; pass the server's public inputs as one tensor [N, C, H, W], "
                         "without labels (e.g. fedguard.data.load_data('digits', input_shape=...)[0])")
    data = _check_data(data, shape)  # once here: the crafters that read it take finite inputs of the shape
    seed = checks.seed(seed, "seed")
    check_options(name, options)
    given = ", ".join(f"{k}={v!r}" for k, v in options.items()) or "its default options"
    kind = getattr(model, "arch_name", type(model).__name__)  # "lenet" rather than FeatureNet
    parametrised = _parametrised(model)
    if parametrised is not None:
        raise InputError(f"{name} cannot craft this {kind}: layer {parametrised} computes its weight "
                         "from others (weight or spectral norm, or pruning not made permanent), which crafters do not "
                         "write; remove that first (torch.nn.utils.parametrize.remove_parametrizations, prune.remove)")  # fmt: skip
    if not counted and any(isinstance(m, nn.Linear) for m in model.modules()):  # (without one, the crafter says why)
        logits = classifier_logits(model, probe, "craft", probe=True).shape[1]
        if num_classes != logits:  # the crafters size their rows and targets by it: a model's head is what it is
            raise InputError(f"num_classes={num_classes} but the model gives {logits} logits; "
                             f"pass num_classes={logits} or None")
    # the crafters build their layers and noise on the CPU: a model on a GPU is crafted as a CPU copy and moved back
    source = model if device is None or device.type == "cpu" else copy.deepcopy(model).cpu()
    try:  # the caller's generators, grad mode and default dtype kept (a float64 default had broken every crafter)
        with np.errstate(all="ignore"), own_torch_state():  # an overflow is reported below, as one line
            crafted = fn(source, input_shape=shape, num_classes=num_classes, data=data, seed=seed, **options)
    except InputError:
        raise
    except (Exception, SystemExit) as exc:  # a size too large, or the model's own code (SystemExit: sys.exit() in it)
        overflow = "overflow" in str(exc)  # a value beyond float32 (about 3.4e38)
        why = str(exc).splitlines()[0] if type(exc) is ValueError and str(exc) else first_line(exc)  # a crafter's own words
        fix = (f"with {given} the weights go beyond float32's range (3.4e38): use smaller values" if overflow
               else "" if "; " in why else "change its options or the model")
        raise InputError(f"{name} cannot craft this {kind}: {why}" + (f"; {fix}" if fix else "")) from None
    spoilt = first_non_finite(crafted.state_dict())
    if spoilt is not None:  # a huge but finite option overflowed float32: such a model shows nothing a detector looks for
        raise InputError(f"{name} with {given} gives {spoilt} NaN or infinite values (beyond float32's 3.4e38); use values "
                         "nearer 1 (a huge one overflows, and so does a tiny one the crafter divides by)")  # fmt: skip
    if _unchanged(source, crafted):  # no layer it works on, or planted already: a file that is the model would mislead
        raise NothingToPlant(f"{name} found nothing to plant in this {kind} with {given} (no layer of "
                             "the kind it changes where it looks, or its parameters are there already); pick another "
                             "attack or architecture")  # fmt: skip
    return crafted if source is model else crafted.to(device)


class NothingToPlant(InputError):
    """The crafter left the model as it was: it has no layer of the kind the crafter changes, or carries the
    crafter's parameters already (the audit then attacks it as received)."""


def _unchanged(model: nn.Module, crafted: nn.Module) -> bool:
    """Whether ``crafted`` holds exactly ``model``'s tensors under the same names."""
    before, after = model.state_dict(), crafted.state_dict()
    return before.keys() == after.keys() and all(
        before[k].shape == after[k].shape and torch.equal(before[k], after[k]) for k in before
    )


def craft_model(
    name: str,
    arch: str,
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
    data: torch.Tensor | None = None,
    seed: int = 0,
    **options: Any,
) -> nn.Module:
    """Build ``arch`` (initialised from ``seed``; ``num_classes`` None: the architecture's own count, 10 for the
    built-ins) and craft it with ``name`` (errors as :func:`craft`)."""
    _crafter(name)  # fail on a bad name before building anything
    shape = resolve_input_shape(arch, input_shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(checks.seed(seed, "seed"))
        model = build_model(arch, num_classes=num_classes, input_shape=shape)
    return craft(name, model, input_shape=shape, num_classes=num_classes, data=data, seed=seed, **options)
