"""Dropout as the client's training applies it, in a pass that otherwise runs in eval mode.

Eval mode turns dropout off, so a check that runs a model in eval mode sees
inputs that its training never does: a layer whose units sit just above
every eval-mode response fires in training wherever the dropout's noise
lifts it. :class:`TrainingDropout` is a mode to run a forward pass in: it
notes every dropout call that goes through Python (``F.dropout``, which
``nn.Dropout`` calls, as may the model's own code; ``torch.dropout`` and
its in-place form; channel-wise and alpha dropout) and, given a generator,
applies it as training does, whatever the call's ``training`` flag says,
masks drawn by torch's own functions from that generator. What the layers
after a dropout read in that pass is what one training step gives them,
whatever lies between (a flatten, a pooling, a sum). Not seen: dropout
that the model's code calls only when it is training, and dropout inside
torch's compiled code (between the layers of ``nn.LSTM``/``nn.GRU``, in
fused attention, in TorchScript).
"""

from __future__ import annotations

import hashlib
import math
import warnings

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["TrainingDropout", "draw_generator"]

#: Dropout functions, each with the function that draws its mask the same way (which elements, or channels, it drops
#: together, whatever the input's rank), whether it is alpha dropout (SELU's) and whether it works in place.
_DROPOUTS = {
    F.dropout: (torch.dropout, False, False), torch.dropout: (torch.dropout, False, False),
    torch.dropout_: (torch.dropout, False, True),
    F.dropout1d: (F.dropout1d, False, False), F.dropout2d: (F.dropout2d, False, False),
    F.dropout3d: (F.dropout3d, False, False),
    torch.feature_dropout: (torch.feature_dropout, False, False),
    torch.feature_dropout_: (torch.feature_dropout, False, True),
    F.alpha_dropout: (torch.dropout, True, False), torch.alpha_dropout: (torch.dropout, True, False),
    torch.alpha_dropout_: (torch.dropout, True, True),
    F.feature_alpha_dropout: (torch.feature_dropout, True, False),
    torch.feature_alpha_dropout: (torch.feature_dropout, True, False),
    torch.feature_alpha_dropout_: (torch.feature_dropout, True, True),
}  # fmt: skip
#: SELU's negative saturation, ``-scale * alpha``, where alpha dropout sets the dropped units.
_SELU_FLOOR = 1.7580993408473766


def _kept(masker, shape: torch.Size, p: float, generator: torch.Generator) -> torch.Tensor:
    """Which elements ``masker`` keeps of an input of ``shape`` in training, drawn by torch's own function (so that
    channel-wise dropout of an input of another rank drops what torch drops there) from a global generator seeded
    by ``generator``, the caller's global generator left as it was."""
    seed = int(torch.randint(2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's warning on a channel-wise input's rank: the model's pass gives it
        torch.manual_seed(seed)
        return masker(torch.ones(shape, dtype=torch.float64), p, True) != 0


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
        if self.generator is None:
            return func(*args, **kwargs)
        masker, alpha, in_place = _DROPOUTS[func]
        with torch.no_grad():
            kept = _kept(masker, x.shape, p, self.generator).to(x.device, x.dtype)
            if alpha:  # as torch's: the mean and variance of SELU's output kept
                a = 1 / math.sqrt((_SELU_FLOOR**2 * p + 1) * (1 - p))
                dropped = x * kept * a + (kept - 1) * _SELU_FLOOR * a + _SELU_FLOOR * a * p
            else:
                dropped = x * kept / (1 - p)
        if in_place or bool(args[3] if len(args) > 3 else kwargs.get("inplace", False)):  # its result may go unused
            x.data.copy_(dropped)
            return x
        return _StraightThrough.apply(x, dropped)


def draw_generator(examples: torch.Tensor) -> torch.Generator:
    """A generator seeded by the content of ``examples``: the same draw for the same data, and one that a server which
    does not know the client's data cannot foresee (a fixed seed had let a red team choose units that its one draw
    never switched on, while training's draws did for one example in 64)."""
    digest = hashlib.sha256(examples.detach().float().cpu().contiguous().numpy().tobytes()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
