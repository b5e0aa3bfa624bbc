"""Row-level helpers shared by the weight-pattern detectors.

A "row" is one output unit: a row of a linear weight, or one whole filter
(all input channels and taps) of a convolution. Bulk statistics come from
:attr:`fedguard.modelview.Layer.stats` (computed once per layer); the helpers
here look closer at the few rows those statistics single out, so every
detector stays linear in the model's size.
"""

from __future__ import annotations

import math

import torch

from fedguard.modelview import LINEAR, Layer, ModelView
from fedguard.rowstats import weight_rows

#: Relative tolerance for "equal" values: fp16 round-trips move values by up
#: to 2**-11 ≈ 4.9e-4 relative, so equality is tested at 2e-3.
REL_TOL = 2e-3
#: Biases closer than this, relative to the largest, count as one: float rounding in training and averaging leaves
#: identical rows' biases 3e-7 apart (a 100-class zero-initialised head fine-tuned on 10 classes), while a ladder's
#: bins stand range / bins apart (1e-4 of the largest or more up to 10,000 bins).
SAME_BIAS = 1e-5
#: Columns sampled to sketch rows when searching for duplicates.
SKETCH_COLUMNS = 256
#: Rows whose sketches' |cosine| falls this far below the one sought are not read whole (the sketch's error on 256
#: columns is about 0.06 for unrelated rows, less for near-parallel ones).
SKETCH_MARGIN = 0.25


def live_rows(layer: Layer, rel: float = 1e-6) -> torch.Tensor:
    """Mask of rows that are not (numerically) all zero, relative to the layer's largest entry."""
    return _live(layer.stats.peak, rel)


def _live(peak: torch.Tensor, rel: float = 1e-6) -> torch.Tensor:
    """Mask of the rows whose largest |entry| ``peak`` is above ``rel`` times the largest of all."""
    top = float(peak.max()) if peak.numel() else 0.0
    return peak > rel * top if top > 0 else torch.zeros_like(peak, dtype=torch.bool)


def pruned_beside(rows: torch.Tensor, members: torch.Tensor, min_density: float = 0.5) -> bool:
    """True when a layer's live rows other than ``members`` are sparse: ``members`` are pruning's leftovers.

    Magnitude pruning can leave a unit with a single weight (a pass-through
    unit by its looks), but then the layer's other units are sparse too
    (under ``min_density`` non-zero). MKOR's pass-through units sit beside
    dense units, or fill the whole layer (nothing beside them: False).
    ``rows`` is the layer's weight as (units, fan_in) rows.
    """
    others = _live(rows.abs().amax(dim=1))
    others[members] = False
    if not bool(others.any()):
        return False
    return float((rows[others] != 0).float().mean()) < min_density


def dominance(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each row: index of its largest |entry|, that entry, and its ratio to the runner-up.

    The ratio is ``inf`` for a row with exactly one non-zero entry. A
    pass-through (copy/identity) row has a huge ratio.
    """
    k = min(2, rows.shape[1])
    top = rows.abs().topk(k, dim=1)
    index = top.indices[:, 0]
    value = rows.gather(1, index[:, None])[:, 0]
    first = top.values[:, 0]
    second = top.values[:, 1] if k > 1 else torch.zeros_like(first)
    ratio = torch.where(second > 0, first / second.clamp_min(torch.finfo(first.dtype).tiny), torch.full_like(first, math.inf))
    return index, value, ratio


def largest_equal_group(magnitudes: torch.Tensor, rel: float = REL_TOL) -> torch.Tensor:
    """Indices of the largest set of non-negative values within a factor ``1 + rel`` of each other.

    A sliding window over the sorted values: unlike chaining neighbours, a
    group can never drift across a wide range in small steps.
    """
    if magnitudes.numel() == 0:
        return magnitudes.new_zeros(0, dtype=torch.long)
    order = magnitudes.argsort()
    ordered = magnitudes[order]
    ends = torch.searchsorted(ordered, ordered * (1 + rel), right=True)
    sizes = ends - torch.arange(ordered.numel())
    best = int(sizes.argmax())
    return order[best : int(ends[best])]


def duplicate_row_groups(layer: Layer, min_cos: float = 0.999) -> list[torch.Tensor]:
    """Groups of rows pointing the same way (|cosine| ≥ ``min_cos``), largest first.

    Rows equal on all columns are equal on any subset, so rows are first
    sketched on ``SKETCH_COLUMNS`` random columns (cost: rows × 256; once per
    layer, :func:`row_directions`) and bucketed by the quantised direction of
    their sketch; each bucket is then checked exactly on whole rows against its
    first member. Opposite rows (cosine ≈ −1) are folded onto one direction.
    All-zero rows are ignored.
    """
    idx, sample, sketch = row_directions(layer)
    if idx.numel() < 2:
        return []
    tol = math.sqrt(2 * (1 - min_cos)) * 4
    keys = torch.round(sketch / tol).to(torch.int64)
    _, bucket, counts = torch.unique(keys, dim=0, return_inverse=True, return_counts=True)
    # each bucket's first row leads it; a row whose sketch is far from its leader's cannot join it (the sketch's
    # cosine errs by about 0.06 on 256 columns), so only buckets with candidates left are read on whole rows
    position = torch.arange(len(bucket))
    lead = torch.full((len(counts),), len(bucket), dtype=torch.long).scatter_reduce(0, bucket, position, "amin")[bucket]
    near = (sample * sample[lead]).sum(dim=1).abs() >= min_cos - SKETCH_MARGIN
    candidates = torch.bincount(bucket[near], minlength=len(counts))
    groups = []
    for label in (candidates >= 2).nonzero()[:, 0].tolist():
        members = ((bucket == label) & near).nonzero()[:, 0]
        rows = layer.rows(idx[members])
        unit = rows / torch.linalg.vector_norm(rows, dim=1, keepdim=True)
        same = (unit @ unit[0]).abs() >= min_cos
        if int(same.sum()) >= 2:
            groups.append(idx[members][same])
    return sorted(groups, key=len, reverse=True)


def is_opposite_pair(layer: Layer, group: torch.Tensor) -> bool:
    """True when ``group`` is two rows pointing in opposite directions."""
    if group.numel() != 2:
        return False
    a, b = layer.rows(group)
    return float(torch.dot(a, b)) < 0


def opposite_pairs(layer: Layer, min_cos: float = 0.99) -> list[torch.Tensor]:
    """Pairs of rows pointing in opposite directions (cosine ≤ ``-min_cos``), from :func:`duplicate_row_groups`."""
    return [g for g in duplicate_row_groups(layer, min_cos) if is_opposite_pair(layer, g)]


def dense_rows(layer: Layer, index: torch.Tensor, min_density: float = 0.5) -> bool:
    """True when every row at ``index`` has at least ``min_density`` non-zero entries."""
    return bool(((layer.rows(index) != 0).float().mean(dim=1) >= min_density).all())


def row_directions(layer: Layer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(index, unit, code)``: the live rows of ``layer`` whose sketch is not zero, their sketches as unit vectors,
    and those projected on 8 random directions, each folded to a positive first coordinate.

    A row's sketch is its entries on ``SKETCH_COLUMNS`` random columns, sorted (all of them in a narrower layer),
    as float32; columns and directions are drawn from seed 0. Computed once per layer in a run of the detectors and
    shared (the row checks ask at several thresholds: 150 calls on the 50 layers of a ViT-B, where gathering the
    columns each time took 2.3 of an inspection's 22 s).
    """
    if "row_directions" not in layer.shared:
        gen = torch.Generator().manual_seed(0)
        index = live_rows(layer).nonzero()[:, 0]
        rows = weight_rows(layer.weight)
        if layer.fan_in > SKETCH_COLUMNS:  # columns first: no full copy
            rows = rows[:, torch.randperm(layer.fan_in, generator=gen)[:SKETCH_COLUMNS].sort().values]
        sample = rows[index].to(torch.float32)
        norms = torch.linalg.vector_norm(sample, dim=1)
        keep = norms > 0
        index, unit = index[keep], sample[keep] / norms[keep, None]
        code = unit @ torch.randn(unit.shape[1], 8, generator=gen)
        layer.shared["row_directions"] = (index, unit, code * torch.where(code[:, :1] < 0, -1.0, 1.0))
    return layer.shared["row_directions"]


def stored_as_logits(view: ModelView, layer: Layer) -> bool:
    """Whether ``layer`` is the logits as far as the file tells: a plain ``nn.Linear`` (not a recurrent layer's input
    gates) stored last, whose outputs no other weight layer takes as its inputs (as wide; an imprint block stored
    last still feeds its decoder, ``Linear(K -> C·H·W)``). No ReLU follows logits, so their rows bin nothing; a
    layer stored last whose ReLU output reaches the loss without a weight layer looks the same (FG301 settles it
    with the client's data)."""
    return (view.next_weight_layer(layer) is None and layer.kind == LINEAR and not layer.is_recurrent_input
            and not any(other is not layer and other.weight.ndim >= 2 and other.weight.shape[1] == layer.out_features
                        for other in view.weight_layers()))  # fmt: skip
