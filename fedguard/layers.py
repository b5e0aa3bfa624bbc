"""Finding layers by execution order (the classification head, the first layer) and what a layer sees."""

from __future__ import annotations

from dataclasses import dataclass

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


def execution_order(model: nn.Module, input_shape, device: torch.device, types: tuple[type, ...], limit: int | None = None) -> list[nn.Module]:
    """Modules of ``types`` in the order one forward pass runs them (forward hooks, eval mode).

    With ``limit``, the pass stops once that many have run.
    """
    order: list[nn.Module] = []

    def record(mod, args, out):
        order.append(mod)
        if limit is not None and len(order) >= limit:
            raise _Stop

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, types)]
    try:
        with evaluating(model), torch.no_grad():
            model(torch.zeros(2, *input_shape, device=device))
    except _Stop:
        pass
    finally:
        for h in hooks:
            h.remove()
    return order


def forward_flops(model: nn.Module, inputs: torch.Tensor) -> int:
    """Floating-point operations of one forward pass of ``inputs``, counted as twice the multiply-adds of the
    model's Linear and convolution layers and of ``nn.MultiheadAttention``'s projections (forward hooks).

    On the built-in architectures that is what ``torch.utils.flop_counter.FlopCounterMode`` counts (the same
    number for each), without what that mode costs on first use: it imports ``torch._dynamo`` (1-2 s, an
    environment variable, warning filters and loggers left in the caller's process). Attention's own products
    (queries by keys) are left out: a two-layer transformer encoder of 16 tokens counts 94 % of the mode's figure.
    Runs in the model's current mode, without gradients.
    """
    total = 0

    def count(module: nn.Module, args: tuple, out) -> None:
        nonlocal total
        out = out[0] if isinstance(out, tuple) else out
        if not isinstance(out, torch.Tensor) or out.numel() == 0:
            return
        if isinstance(module, nn.MultiheadAttention):
            weights = (module.in_proj_weight if module.in_proj_weight is not None else
                       torch.cat([module.q_proj_weight.flatten(), module.k_proj_weight.flatten(),
                                  module.v_proj_weight.flatten()]))  # fmt: skip
            total += 2 * (weights.numel() + module.out_proj.weight.numel()) * (out.numel() // module.embed_dim)
        else:  # a Linear's outputs run along the last dimension, a convolution's channels along the second
            units = out.shape[-1] if isinstance(module, nn.Linear) else out.shape[1]
            total += 2 * module.weight.numel() * (out.numel() // units)

    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MultiheadAttention)
    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for h in hooks:
            h.remove()
    return total


def _describe(model: nn.Module, layer: nn.Module) -> Head:
    names = {id(m): n for n, m in model.named_modules()}
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


def head_not_updated(model: nn.Module, head: Head, tensors) -> str | None:
    """Why the update ``tensors`` hold nothing of ``head``'s weight to read labels from; None when they do."""
    if head.weight in tensors:
        return None
    parameter = dict(model.named_parameters()).get(head.weight)
    if parameter is None:
        return (f"the head's weight {head.weight} is computed from other tensors (a parametrisation such as spectral "
                "norm), so the update holds no gradient of it to read labels from")
    if not parameter.requires_grad:
        return f"the head {head.weight} is frozen (requires_grad=False): the update holds nothing of it to read labels from"
    return f"the update has no tensor for the head {head.weight}"


def linear_layers(model: nn.Module, input_shape, device: torch.device) -> list[Head]:
    """Every Linear layer in the order a forward pass runs it."""
    return [_describe(model, m) for m in execution_order(model, input_shape, device, (nn.Linear,))]


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
