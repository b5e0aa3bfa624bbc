"""Seeding torch without touching the caller's random state.

fedguard seeds torch's global generators where a layer's initialisation or
dropout needs them (a fresh ``--arch`` model, the client's local training).
A library must not re-seed its caller's generators, so those places run inside
:func:`own_random_state`, which restores them on the way out
(:func:`torch.random.fork_rng`). The generators are the process's: calls
from several threads at once still share them, and the one that finishes
last decides what the caller finds.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["own_random_state"]


@contextlib.contextmanager
def own_random_state(seed: int | None = None) -> Iterator[None]:
    """Run the block with torch's CPU generator (and those of CUDA devices already in use) restored afterwards;
    seeded with ``seed`` when given."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        yield
