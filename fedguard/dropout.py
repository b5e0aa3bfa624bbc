"""Which tensors of a forward pass training would thin by dropout, and at what rate.

Eval mode turns dropout off, so a check that runs a model in eval mode sees
inputs that its training never does: a layer whose units sit just above
every eval-mode response fires in training wherever the dropout's noise
lifts it. :class:`DropoutTrail` follows a forward pass and tells, for any
tensor, the share of its elements that training's dropout would zero (each
kept one scaled by ``1 / keep``): the output of ``F.dropout`` (which
``nn.Dropout`` calls, as may the model's own code), carried through what
commutes with the dropout's mask and scale element by element: a view or
reshape (a flatten), and the positively homogeneous activations ReLU and
LeakyReLU. Dropouts in a row multiply their keep rates. Channel-wise dropout
(``Dropout1d/2d/3d``), ``AlphaDropout`` and dropout that the model's code
calls only when it is training are not followed.
"""

from __future__ import annotations

import hashlib

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["DropoutTrail", "draw_generator"]

#: Element-by-element maps that keep a dropout's mask and scale where they were (``f(m x / k) = m f(x) / k`` for a
#: mask ``m`` of 0 and 1 and a keep rate ``k > 0``).
_CARRIED = frozenset({
    torch.flatten, torch.Tensor.flatten, torch.reshape, torch.Tensor.reshape, torch.Tensor.view,
    torch.Tensor.view_as, torch.Tensor.contiguous, torch.Tensor.clone,
    F.relu, torch.relu, torch.Tensor.relu, torch.relu_, torch.Tensor.relu_, F.leaky_relu,
})  # fmt: skip


class DropoutTrail(TorchFunctionMode):
    """A mode to run a forward pass in: afterwards :meth:`rate` gives the dropout rate training applies to a tensor
    of it (0 where none). In eval mode ``F.dropout`` returns its input itself; under the trail it returns a copy, so
    that the tensor a layer reads tells whether it came through the dropout or around it."""

    def __init__(self) -> None:
        super().__init__()
        self._kept: dict[int, tuple[torch.Tensor, float]] = {}

    def rate(self, tensor: torch.Tensor) -> float:
        """The share of ``tensor``'s elements that training's dropout zeroes."""
        return 1.0 - self._keep(tensor)

    def _keep(self, tensor: object) -> float:
        held = self._kept.get(id(tensor))
        return held[1] if held is not None and held[0] is tensor else 1.0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        source = args[0] if args else kwargs.get("input")
        if func is F.dropout:
            p = float(kwargs.get("p", args[1] if len(args) > 1 else 0.5))
            if 0 < p < 1 and isinstance(out, torch.Tensor):
                out = out.clone() if out is source else out
                self._kept[id(out)] = (out, self._keep(source) * (1 - p))
        elif func in _CARRIED and isinstance(out, torch.Tensor) and self._keep(source) < 1:
            self._kept[id(out)] = (out, self._keep(source))
        return out


def draw_generator(examples: torch.Tensor) -> torch.Generator:
    """A generator seeded by the content of ``examples``: the same draw for the same data, and one that a server which
    does not know the client's data cannot foresee (a fixed seed had let a red team choose units that its one draw
    never switched on, while training's draws did for one example in 64)."""
    digest = hashlib.sha256(examples.detach().float().cpu().contiguous().numpy().tobytes()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
