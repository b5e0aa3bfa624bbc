"""Finding the classification head (the last Linear layer a forward pass runs)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Head:
    """The last ``nn.Linear`` of the forward pass: its module name and parameter names."""

    name: str
    module: nn.Linear
    weight: str
    bias: str | None


def find_head(model: nn.Module, input_shape, device: torch.device, num_classes: int | None = None) -> Head | None:
    """The Linear layer that produces the logits, found with forward hooks (execution order).

    Returns None when the model's last Linear layer does not output
    ``num_classes`` values (the logits come from something else).
    """
    order: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda mod, args, out: order.append(mod))
        for m in model.modules()
        if isinstance(m, nn.Linear)
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, *input_shape, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if not order:
        return None
    last = order[-1]
    if num_classes is not None and last.out_features != num_classes:
        return None
    names = {id(m): n for n, m in model.named_modules()}
    name = names[id(last)]
    prefix = f"{name}." if name else ""
    return Head(name, last, f"{prefix}weight", f"{prefix}bias" if last.bias is not None else None)
