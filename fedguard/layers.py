"""Finding layers by execution order (the classification head, the first layer) and what a layer sees."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from fedguard.torch_state import evaluating


@dataclass(frozen=True)
class Head:
    """A layer of the forward pass: its module name and parameter names."""

    name: str
    module: nn.Module
    weight: str
    bias: str | None


class _Stop(Exception):
    """Raised by a forward hook to end a forward pass at the layer it watches."""


@contextlib.contextmanager
def forward_hooks(model: nn.Module, kinds: tuple[type, ...], hook: Callable, with_kwargs: bool = False) -> Iterator[None]:
    """Run the block with ``hook`` as a forward hook on every module of ``model`` of one of ``kinds``, removed
    afterwards."""
    handles = [m.register_forward_hook(hook, with_kwargs=with_kwargs) for m in model.modules() if isinstance(m, kinds)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def execution_order(model: nn.Module, input_shape, device: torch.device, types: tuple[type, ...], limit: int | None = None) -> list[nn.Module]:
    """Modules of ``types`` in the order one forward pass runs them (forward hooks, eval mode).

    With ``limit``, the pass stops once that many have run.
    """
    order: list[nn.Module] = []

    def record(mod, args, out):
        order.append(mod)
        if limit is not None and len(order) >= limit:
            raise _Stop

    try:
        with forward_hooks(model, types, record), evaluating(model), torch.no_grad():
            model(torch.zeros(2, *input_shape, device=device))
    except _Stop:
        pass
    return order


def forward_flops(model: nn.Module, inputs: torch.Tensor) -> int:
    """Floating-point operations of one forward pass of ``inputs``, counted as twice the multiply-adds of the
    model's Linear and (transposed) convolution layers and of ``nn.MultiheadAttention``'s projections (forward
    hooks); a model no hook sees (TorchScript, weights used through ``F.linear``) as twice its parameters per
    example.

    On the built-in architectures that is what ``torch.utils.flop_counter.FlopCounterMode`` counts (the same
    number for each), without what that mode costs on first use: it imports ``torch._dynamo`` (1-2 s, an
    environment variable, warning filters and loggers left in the caller's process). Attention's own products
    (queries by keys) are left out: a two-layer ``nn.TransformerEncoder`` (d_model 64, 4 heads, feed-forward 128,
    16 tokens, train mode) counts 94 % of the mode's figure. Runs in the model's current mode, without gradients.
    """
    total = 0

    def tokens(t: torch.Tensor, width: int) -> int:
        return t.numel() // width

    def count(module: nn.Module, args: tuple, kwargs: dict, out) -> None:
        nonlocal total
        out = out[0] if isinstance(out, tuple) else out
        if not isinstance(out, torch.Tensor) or out.numel() == 0:
            return
        if isinstance(module, nn.MultiheadAttention):  # queries, keys and values each by their own projection
            query, key, value = (*args, *(kwargs.get(k) for k in ("query", "key", "value")[len(args):]))[:3]
            e = module.embed_dim
            total += 2 * e * (2 * e * tokens(query, e) + module.kdim * tokens(key, module.kdim)
                              + module.vdim * tokens(value, module.vdim))  # fmt: skip
        elif isinstance(module, nn.modules.conv._ConvTransposeNd):  # each input position spreads over the kernel
            total += 2 * module.weight.numel() * tokens(args[0], args[0].shape[1])
        else:  # a Linear's outputs run along the last dimension, a convolution's channels along the second
            units = out.shape[-1] if isinstance(module, nn.Linear) else out.shape[1]
            total += 2 * module.weight.numel() * tokens(out, units)

    kinds = (nn.Linear, nn.modules.conv._ConvNd, nn.MultiheadAttention)
    with forward_hooks(model, kinds, count, with_kwargs=True), torch.no_grad():
        model(inputs)
    return total or 2 * sum(p.numel() for p in model.parameters()) * len(inputs)


def _describe(model: nn.Module, layer: nn.Module, names: dict[int, str] | None = None) -> Head:
    names = {id(m): n for n, m in model.named_modules()} if names is None else names
    name = names[id(layer)]
    prefix = f"{name}." if name else ""
    return Head(name, layer, f"{prefix}weight", f"{prefix}bias" if getattr(layer, "bias", None) is not None else None)


def find_head(model: nn.Module, input_shape, device: torch.device, num_classes: int | None = None) -> Head | None:
    """The Linear layer that produces the logits, found with forward hooks (execution order).

    Returns None when the model's last Linear layer does not output
    ``num_classes`` values (the logits come from something else).
    """
    order = execution_order(model, input_shape, device, (nn.Linear,))
    if not order:
        return None
    last = order[-1]
    if num_classes is not None and last.out_features != num_classes:
        return None
    return _describe(model, last)


def head_not_updated(model: nn.Module, head: Head, tensors, part: str = "weight", purpose: str = "to read labels from") -> str | None:
    """Why the update ``tensors`` hold nothing of ``head``'s ``part`` (``"weight"`` or ``"bias"``) ``purpose``; None
    when they do."""
    name = getattr(head, part)
    if name in tensors:
        return None
    parameter = dict(model.named_parameters()).get(name)
    if parameter is None:
        return (f"the head's {part} {name} is computed from other tensors (a parametrisation such as spectral "
                f"norm), so the update holds no gradient of it {purpose}")
    if not parameter.requires_grad:
        return f"the head's {part} {name} is frozen (requires_grad=False): the update holds nothing of it {purpose}"
    return f"the update has no tensor for the head's {part} {name} {purpose}"


def _described(model: nn.Module, order: list[nn.Module]) -> list[Head]:
    """``order``'s layers described, the model's module names looked up once, not once a layer."""
    names = {id(m): n for n, m in model.named_modules()}
    return [_describe(model, m, names) for m in order]


def linear_layers(model: nn.Module, input_shape, device: torch.device) -> list[Head]:
    """Every Linear layer in the order a forward pass runs it."""
    return _described(model, execution_order(model, input_shape, device, (nn.Linear,)))


def first_and_linear_layers(model: nn.Module, input_shape, device: torch.device) -> tuple[Head | None, list[Head]]:
    """:func:`find_first_layer` and :func:`linear_layers` from one forward pass (the Linear layers of the order of
    Linear and convolution layers are the order of the Linear layers alone)."""
    heads = _described(model, execution_order(model, input_shape, device, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)))
    return (heads[0] if heads else None), [head for head in heads if isinstance(head.module, nn.Linear)]


def find_first_layer(model: nn.Module, input_shape, device: torch.device) -> Head | None:
    """The first Linear or convolution the input meets (None when there is none)."""
    order = execution_order(model, input_shape, device, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d), limit=1)
    return _describe(model, order[0]) if order else None


def layer_input(model: nn.Module, layer: nn.Module, x: torch.Tensor, flatten: bool = True) -> torch.Tensor:
    """The input ``layer`` sees when ``model`` runs on ``x`` (the forward stops there), flattened unless ``flatten``
    is False."""
    got: list[torch.Tensor] = []

    def hook(module, args):
        got.append(args[0])
        raise _Stop

    handle = layer.register_forward_pre_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    return got[0].flatten(1) if flatten else got[0]
