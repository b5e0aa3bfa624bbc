"""The clock of the timed loops: CUDA runs asynchronously, so its queued work is waited for at each reading."""

from __future__ import annotations

import time

import torch


def now(device) -> float:
    """``time.perf_counter()`` once the work queued on ``device`` has finished."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
