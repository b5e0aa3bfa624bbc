"""Per-unit statistics of a layer, computed once in a few fused passes.

Every weight-pattern detector reads these instead of the raw weights, so a
model is scanned a fixed handful of times whatever the number of detectors,
and the float32 temporaries never exceed one chunk of rows (fp16/bf16 weights
are converted chunk by chunk). This is what keeps ``fedguard inspect`` close to
the cost of loading the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch

#: Elements per chunk of rows: 4 Mi float32 values = 16 MiB of temporaries.
CHUNK = 1 << 22
#: A chunk with a weight this large (or one a float64 weight overflows float32 with) is read in float64: squares of
#: weights below it, summed over up to 10^8 inputs, stay under float32's 3.4e38 (a server's 1e37 weights had made
#: every row's norm infinite).
FLOAT32_SAFE = 1e15


@dataclass(frozen=True)
class RowStats:
    """Statistics of each row (output unit / filter) of a weight, as float64 vectors.

    ``finite`` is False when any entry is NaN or Inf; the other fields are then
    meaningless and detectors skip the layer.
    """

    rows: int
    fan_in: int
    minimum: torch.Tensor
    maximum: torch.Tensor
    total: torch.Tensor
    l1: torch.Tensor
    l2sq: torch.Tensor
    finite: bool

    @property
    def peak(self) -> torch.Tensor:
        """Largest |w| of each row."""
        return torch.maximum(self.maximum, -self.minimum)

    @property
    def mean(self) -> torch.Tensor:
        return self.total / self.fan_in

    @property
    def positive(self) -> torch.Tensor:
        """Sum of the positive entries of each row."""
        return (self.l1 + self.total) / 2

    @property
    def negative(self) -> torch.Tensor:
        """Sum of the magnitudes of the negative entries of each row."""
        return (self.l1 - self.total) / 2

    @property
    def peak_to_rest(self) -> torch.Tensor:
        """Largest |w| over the RMS of the row's other entries (∞ for one-hot rows, 0 for zero rows).

        Zeros count as entries here, so pruned rows score *higher* than with
        their non-zero entries only: use it to pick candidate rows, then
        confirm on the rows themselves.
        """
        peak = self.peak
        rest = (self.l2sq - peak.square()).clamp_min(0) / max(self.fan_in - 1, 1)
        ratio = peak / rest.sqrt()
        return torch.where(peak > 0, ratio, torch.zeros_like(peak))


def finite(tensor: torch.Tensor) -> bool:
    """True when ``tensor`` holds no NaN or infinite value, read in chunks: ``torch.isfinite`` on a whole layer
    allocates more than the layer itself (a VGG16's 411 MB ``fc6``: 1.4 GB at peak for a 528 MB file)."""
    return not tensor.is_floating_point() or all(_finite_chunk(c) for c in _chunks(tensor))


def _finite_chunk(chunk: torch.Tensor) -> bool:
    """A finite sum proves every value finite (one reduction, a third of ``isfinite``'s time); a sum that is not
    finite may have overflowed, so then each value is tested."""
    return math.isfinite(float(chunk.sum())) or bool(torch.isfinite(chunk).all())


def nan_inf_counts(tensor: torch.Tensor) -> tuple[int, int]:
    """How many NaN and how many infinite values ``tensor`` holds, read in chunks as :func:`finite` does."""
    if not tensor.is_floating_point():
        return 0, 0
    chunks = list(_chunks(tensor))
    return sum(int(torch.isnan(c).sum()) for c in chunks), sum(int(torch.isinf(c).sum()) for c in chunks)


def _chunks(tensor: torch.Tensor) -> Iterator[torch.Tensor]:
    """``tensor``'s values, flattened, as views of ``CHUNK`` values."""
    flat = tensor.reshape(-1)
    return (flat[i : i + CHUNK] for i in range(0, flat.numel(), CHUNK))


def weight_rows(weight: torch.Tensor) -> torch.Tensor:
    """The weight as a (rows, fan_in) view: one row per output unit."""
    return weight.detach().reshape(weight.shape[0], -1)


def compute_row_stats(weight: torch.Tensor) -> RowStats:
    """Five passes (min, max, sum, L1, L2) over chunks of rows converted to float32 (float64 for huge weights)."""
    rows = weight_rows(weight)
    n, d = rows.shape
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("minimum", "maximum", "total", "l1", "l2sq")}
    step = max(1, CHUNK // max(d, 1))
    for start in range(0, n, step):
        chunk = rows[start : start + step].to(torch.float32)
        lo, hi = chunk.amin(dim=1), chunk.amax(dim=1)  # torch.aminmax along a dimension is 6-25x slower than both
        if max(-float(lo.min()), float(hi.max())) >= FLOAT32_SAFE:  # (NaN compares False: FG002 reports it)
            chunk = rows[start : start + step].to(torch.float64)
            lo, hi = chunk.amin(dim=1), chunk.amax(dim=1)
        parts["minimum"].append(lo)
        parts["maximum"].append(hi)
        parts["total"].append(chunk.sum(dim=1))
        parts["l1"].append(torch.linalg.vector_norm(chunk, ord=1, dim=1))
        parts["l2sq"].append(torch.linalg.vector_norm(chunk, dim=1).square())
    stats = {k: torch.cat(v).to(torch.float64) for k, v in parts.items()}
    finite = bool(torch.isfinite(stats["l1"]).all()) and bool(torch.isfinite(stats["minimum"]).all())
    return RowStats(rows=n, fan_in=d, finite=finite, **stats)
