"""Working inside torch's process-wide state without changing the caller's.

fedguard seeds torch's global generators where a layer's initialisation or
dropout needs them (a fresh ``--arch`` model, the client's local training),
trains (which needs gradients on) and builds tensors with torch's default
dtype. A library called from someone's notebook or Flower client must not
leave any of that changed, nor depend on how the caller set it: those
places run inside :func:`own_torch_state`, which sets what fedguard needs
and restores the caller's settings on the way out. The generators are the
process's: calls from several threads at once still share them, and the one
that finishes last decides what the caller finds.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["evaluating", "own_random_state", "own_torch_state"]


@contextlib.contextmanager
def evaluating(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run the block with ``module`` in eval mode (BatchNorm at its running statistics, dropout off), then give it
    back the mode its caller left it in."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


@contextlib.contextmanager
def own_random_state(seed: int | None = None) -> Iterator[None]:
    """Run the block with torch's CPU generator (and those of CUDA devices already in use) restored afterwards;
    seeded with ``seed`` when given (:func:`torch.random.fork_rng`)."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def own_torch_state(seed: int | None = None) -> Iterator[None]:
    """:func:`own_random_state`, with gradients on (also inside the caller's ``no_grad`` or ``inference_mode``)
    and float32 as the default dtype (a caller's ``torch.set_default_dtype(torch.float64)`` would build float64
    models and dummies that the float32 weights of a model file do not fit); all restored afterwards."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        with own_random_state(seed), torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        torch.set_default_dtype(dtype)
