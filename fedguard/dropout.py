"""Dropout as the client's training applies it, in a pass that otherwise runs in eval mode.

Eval mode turns dropout off, so a check that runs a model in eval mode sees
inputs that its training never does: a layer whose units sit just above
every eval-mode response fires in training wherever the dropout's noise
lifts it. :class:`TrainingDropout` is a mode to run a forward pass in: it
notes every dropout call (``F.dropout``, which ``nn.Dropout`` calls, as may
the model's own code, or ``torch.dropout``; channel-wise dropout; alpha
dropout) and, given a generator, applies it as training does, masks drawn
from that generator, whatever the call's ``training`` flag says. What the layers after a dropout read in that pass is
what one training step gives them, whatever lies between (a flatten, a
pooling, a sum). Dropout that the model's code calls only when it is
training is not seen.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["TrainingDropout", "draw_generator"]

#: Dropout functions: the dimensions of the input their mask spans beyond the batch and channels (``None``: every
#: element has its own mask entry; ``k``: the input is ``[batch, channels, *spatial]`` with ``k`` spatial dimensions,
#: -1 for any, and one mask entry per channel), and whether they are alpha dropout (SELU's).
_DROPOUTS = {
    F.dropout: (None, False), torch.dropout: (None, False),
    F.dropout1d: (1, False), F.dropout2d: (2, False), F.dropout3d: (3, False), torch.feature_dropout: (-1, False),
    F.alpha_dropout: (None, True), torch.alpha_dropout: (None, True),
    F.feature_alpha_dropout: (-1, True), torch.feature_alpha_dropout: (-1, True),
}  # fmt: skip
#: SELU's negative saturation, ``-scale * alpha``, where alpha dropout sets the dropped units.
_SELU_FLOOR = 1.7580993408473766


class _StraightThrough(torch.autograd.Function):
    """``dropped`` forward; backward, the gradient as if nothing had been dropped."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
        return dropped

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class TrainingDropout(TorchFunctionMode):
    """Run a forward pass under this mode to note its dropout calls (:attr:`rates`, in the order the pass makes them)
    and, with ``generator``, to apply each as training does in the forward pass, its masks drawn from ``generator``.
    Backward, the gradient goes through as if nothing had been dropped: what a layer's units receive is then read
    with its input as training gives it, but not thinned by the dropout after it, which thins every layer's units
    alike, honest or planted."""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.generator = generator
        #: The rate of each dropout call that drops anything (strictly between 0 and 1), in order.
        self.rates: list[float] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _DROPOUTS:
            return func(*args, **kwargs)
        x = args[0] if args else kwargs["input"]
        p = float(args[1] if len(args) > 1 else kwargs.get("p", 0.5))
        if not 0 < p < 1:
            return func(*args, **kwargs)
        self.rates.append(p)
        spatial, alpha = _DROPOUTS[func]
        spatial = x.dim() - 2 if spatial == -1 else spatial
        shape = x.shape if spatial is None else (*x.shape[:2], *([1] * spatial))
        if self.generator is None or len(shape) != x.dim():  # unbatched channel-wise input: left as eval mode has it
            return func(*args, **kwargs)
        with torch.no_grad():
            kept = (torch.rand(shape, generator=self.generator, dtype=torch.float64) >= p).to(x.device, x.dtype)
            if alpha:  # as torch's: the mean and variance of SELU's output kept
                a = 1 / math.sqrt((_SELU_FLOOR**2 * p + 1) * (1 - p))
                dropped = x * kept * a + (kept - 1) * _SELU_FLOOR * a + _SELU_FLOOR * a * p
            else:
                dropped = x * kept / (1 - p)
        if bool(args[3] if len(args) > 3 else kwargs.get("inplace", False)):  # the model may not use the result
            x.data.copy_(dropped)
            return x
        return _StraightThrough.apply(x, dropped)


def draw_generator(examples: torch.Tensor) -> torch.Generator:
    """A generator seeded by the content of ``examples``: the same draw for the same data, and one that a server which
    does not know the client's data cannot foresee (a fixed seed had let a red team choose units that its one draw
    never switched on, while training's draws did for one example in 64)."""
    digest = hashlib.sha256(examples.detach().float().cpu().contiguous().numpy().tobytes()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
