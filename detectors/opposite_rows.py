"""FG104: opposite row pairs — units ``w`` and ``-w`` side by side (MKOR's inconspicuous first FC layer).

MKOR's inconspicuous form (Wang et al., "Maximum Knowledge Orthogonality
Reconstruction with Gradients in Federated Learning", WACV 2024) hides its
class-wise averaging path among honest weights: one honest-looking row
``w`` and its opposite ``-w`` (with opposite bias) feed one merged unit.
Every example switches on exactly one of the two ReLUs, so the pair's summed
gradients take in every example as MKOR's averaging row does, and the
server reads class-mean inputs out of the update
(:mod:`fedguard.attacks.mkor`).

A pair is two dense rows (≥ 50 % non-zero, ≥ 16 inputs) with cosine ≤ −0.99,
or ≤ −0.75 when the next layer merges them: both rows' output columns there
are dominated (largest entry ≥ 3× the RMS of the column's others, in a layer
of ≥ 8 units) by the same unit with the same sign. Measured on the benign zoo
and the held-out set (``benchmarks/heldout_detection.py``): the most negative
cosine between dense rows is −0.87 (trained LayerNorm and coordinate MLPs),
and between rows that a following layer of ≥ 8 units merges that way −0.58
(at dominance ≥ 2). The crafter's default noise 0.01 leaves its pairs at
−0.9999; noise 0.1 at −0.988 on LeNet-5 and −0.93 on VGG-11 (whose
N(0, 0.01) init is smaller than the noise's ``1/sqrt(fan_in)`` scale), 0.3 at
−0.90 and 0.5 at −0.79 on LeNet-5, with a merge dominance of about
``1/noise``: the merged test catches 7-10 of the 10 pairs up to noise 0.2 and
2-3 at 0.3 (docs/detectors.md). One pair is reported as suspicious, two or
more (one per class) as malicious.

One honest layer has exact opposite rows: a softmax head trained from zero
weights. Every update of its rows sums to zero over the classes
(``Σ_k (p_k − y_k) = 0``, and Adam's per-coordinate steps keep it so for
two classes), so a two-class head's rows are ``w`` and ``−w`` (cosine
−1.000000) and a head of several two-class tasks is made of such pairs.
The model's last weight layer is not checked when its rows sum to zero
(within ``ZERO_SUM`` of its largest row norm): no ReLU follows the logits,
so its pairs carry nothing, and MKOR's pairs feed a merging layer. Nor is a
last layer of two rows that is the logits as far as the file tells (no
layer takes two inputs: :func:`~fedguard.detectors.rows.stored_as_logits`;
a pair stored last but run before a merging layer is read): every update of a two-class head moves its rows
apart by the same vector, so from a random start training makes them
opposite too (a ConvNet trained with SGD on two digit classes: FG104, 1
pair, fan-in 2048).
"""

from __future__ import annotations

import torch

from fedguard.detectors.base import Detector, InspectContext, register_detector
from fedguard.detectors.rows import SKETCH_MARGIN, dense_rows, opposite_pairs, row_directions, stored_as_logits
from fedguard.modelview import LINEAR, Layer
from fedguard.rowstats import weight_rows
from fedguard.types import Confidence, Rule, Severity

MIN_FAN_IN = 16
MAX_COSINE = -0.99
#: Pairs the next layer merges into one unit pass with a looser cosine (benign merged pairs: -0.58 at most).
MERGED_MAX_COSINE = -0.75
#: A column of the next layer goes mostly to one unit when that entry is this many times the others' RMS.
MERGE_DOMINANCE = 3.0
#: Dominance means nothing in a layer of a few units (a 2-unit head): the next layer needs at least this many.
MIN_MERGE_UNITS = 8
#: A nearly opposite pair counts only when no third row of the layer has cosine at most this to either of its rows.
#: MKOR's pairs are a row and its own opposite: the most negative third row is -0.08 to -0.17 (mkor_inconspicuous at
#: noise 0.1-0.5 on LeNet-5, its stride-2 form and the MLP, seeds 0-1). A layer that collapsed in honest training
#: (stride-2 LeNet-5, 3 epochs of SGD at lr 0.05 with momentum 0.9: 22-37 % accuracy on digits) holds groups of rows
#: along one direction and its opposite, so each nearly opposite pair has third rows at -0.78 to -0.86.
THIRD_MAX_COSINE = -0.5
#: Pairs tried per group of columns one unit dominates (a merge takes two; larger groups are chance).
MERGED_GROUP_PAIRS = 8
#: Columns of the next layer read at a time (bounds the extra memory to one block).
COLUMN_BLOCK = 512
MALICIOUS_PAIRS = 2
#: A last layer whose rows sum to at most this share of its largest row norm is a zero-initialised softmax head.
ZERO_SUM = 1e-3


def zero_sum_rows(layer: Layer) -> bool:
    """True when the layer's rows sum to (nearly) the zero vector, as a softmax head trained from zero does."""
    rows = layer.rows()
    return float(rows.sum(dim=0).norm()) <= ZERO_SUM * float(torch.linalg.vector_norm(rows, dim=1).max())


def merged_pairs(layer: Layer, follower: Layer) -> list[torch.Tensor]:
    """Pairs of ``layer``'s rows with cosine ≤ MERGED_MAX_COSINE that ``follower`` merges into one unit.

    ``follower`` merges rows ``a`` and ``b`` when its columns ``a`` and ``b``
    are each dominated by the same unit (largest entry ≥ MERGE_DOMINANCE ×
    the RMS of the column's other entries) with the same sign. Cost: one pass
    over ``follower``, a sketch of the candidate rows, and whole rows only for
    the pairs the sketch finds nearly opposite.
    """
    if follower.kind != LINEAR or follower.fan_in != layer.stats.rows or follower.stats.rows < MIN_MERGE_UNITS:
        return []
    weight = follower.rows()  # [units, columns]
    top, unit, energy = [], [], []
    for start in range(0, weight.shape[1], COLUMN_BLOCK):  # transposed blocks: row reductions are 2x faster
        block = weight[:, start : start + COLUMN_BLOCK].T.contiguous()
        peak, index = block.abs().max(dim=1)
        top.append(peak * torch.where(block.gather(1, index[:, None]).squeeze(1) < 0, -1.0, 1.0))
        unit.append(index)
        energy.append((block * block).sum(dim=1))
    top, unit, energy = torch.cat(top), torch.cat(unit), torch.cat(energy)
    others = (energy - top.pow(2)).clamp_min(0) / (weight.shape[0] - 1)
    candidates = ((top.pow(2) >= MERGE_DOMINANCE**2 * others) & (top != 0)).nonzero()[:, 0]
    key = unit[candidates] * 2 + (top[candidates] > 0)
    order = key.argsort(stable=True)
    candidates, key = candidates[order], key[order]
    slots = torch.arange(len(candidates))
    firsts, seconds = [], []  # pairs as positions in the sorted candidates
    for offset in range(1, MERGED_GROUP_PAIRS + 1):  # columns sharing a key sit side by side once sorted
        same = key[offset:] == key[:-offset]
        if not bool(same.any()):
            break
        firsts.append(slots[:-offset][same])
        seconds.append(slots[offset:][same])
    if not firsts:
        return []
    i, j = torch.cat(firsts), torch.cat(seconds)
    # most pairs are chance: a sketch on a few hundred columns rules them out before whole rows are read
    index, unit, _ = row_directions(layer)
    place = torch.full((layer.stats.rows,), -1, dtype=torch.long)
    place[index] = torch.arange(len(index))
    sample = torch.zeros(len(candidates), unit.shape[1])  # a row without a sketch (all zero there) is read whole
    sketched = place[candidates] >= 0
    sample[sketched] = unit[place[candidates[sketched]]]
    near = (sample[i] * sample[j]).sum(dim=1) <= MERGED_MAX_COSINE + SKETCH_MARGIN
    a, b = candidates[i[near]], candidates[j[near]]
    rows_a, rows_b = layer.rows(a), layer.rows(b)
    cosine = (rows_a * rows_b).sum(dim=1) / (
        torch.linalg.vector_norm(rows_a, dim=1) * torch.linalg.vector_norm(rows_b, dim=1)
    ).clamp_min(1e-30)
    keep = cosine <= MERGED_MAX_COSINE
    a, b = a[keep], b[keep]
    if not len(a):
        return []
    alone = _no_third_opposite(layer, a, b)
    return list(torch.stack([a[alone], b[alone]], dim=1))


def _no_third_opposite(layer: Layer, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Which pairs ``(a[i], b[i])`` have no third row with cosine ≤ THIRD_MAX_COSINE to either of their rows.

    One pass over the layer in blocks of rows, against the pairs' rows only.
    """
    ends = torch.cat([a, b])
    partner = torch.cat([b, a])  # of each row in ends
    rows = layer.rows(ends)
    rows = rows / torch.linalg.vector_norm(rows, dim=1, keepdim=True).clamp_min(1e-30)
    norms = layer.stats.l2sq.sqrt().to(torch.float32).clamp_min(1e-30)
    weight = weight_rows(layer.weight)
    worst = torch.ones(len(ends))
    for start in range(0, weight.shape[0], COLUMN_BLOCK):
        block = weight[start : start + COLUMN_BLOCK].to(torch.float32)
        cosine = rows @ block.T / norms[start : start + COLUMN_BLOCK]
        index = torch.arange(start, start + len(block))
        cosine[(index[None] == ends[:, None]) | (index[None] == partner[:, None])] = 1.0
        worst = torch.minimum(worst, cosine.min(dim=1).values)
    worst = torch.minimum(worst[: len(a)], worst[len(a) :])
    return worst > THIRD_MAX_COSINE


@register_detector("opposite_rows")
class OppositeRows(Detector):
    name = "opposite_rows"
    rules = (
        Rule(
            "FG104", "opposite-row-pairs",
            "Pairs of fully connected units with opposite weights (w and -w).",
            "Two units with opposite weights and biases switch on for complementary sets of examples, so "
            "together they pass every example's input into the update, as an averaging row does: MKOR's "
            "inconspicuous construction of class-wise paths. Random or trained units are never near-exact "
            "opposites, nor nearly opposite pairs that the next layer merges into one unit. Do not train on "
            "this model.",
            "Wang et al., Maximum Knowledge Orthogonality Reconstruction, WACV 2024",
            url="https://arxiv.org/abs/2310.19222",
        ),
    )

    def run(self, context: InspectContext):
        view = context.view
        for layer in view.scored_layers(MIN_FAN_IN, kinds=(LINEAR,)):
            follower = view.next_weight_layer(layer)
            if follower is None and (zero_sum_rows(layer) or layer.stats.rows == 2 and stored_as_logits(view, layer)):
                continue  # a softmax head: its pairs feed no ReLU (a two-class head's rows move apart in training)
            exact = [p for p in opposite_pairs(layer, -MAX_COSINE) if dense_rows(layer, p)]
            merged = merged_pairs(layer, follower) if follower is not None and follower.stats.finite else []
            seen = {frozenset(p.tolist()) for p in exact}
            nearly = [p for p in merged if frozenset(p.tolist()) not in seen and dense_rows(layer, p)]
            pairs = exact + nearly
            if not pairs:
                continue
            severity = Severity.HIGH if len(pairs) >= MALICIOUS_PAIRS else Severity.MEDIUM
            rows = sorted(int(i) for p in pairs for i in p.tolist())
            loose = len(nearly)
            how = f" ({loose} of them nearly, each merged into one unit of {follower.name})" if loose else ""
            yield self.finding(
                "FG104", "Opposite row pairs (inconspicuous MKOR)", severity, Confidence.HIGH, layer.name,
                f"{len(pairs)} pairs of units of {layer.name} have opposite weights{how}: each pair passes every "
                "example's input into the update, the class-wise path of MKOR's inconspicuous form. "
                "Do not train on this model.",
                pairs=len(pairs), merged_by_next_layer=loose,
                units=layer.stats.rows, fan_in=layer.fan_in, rows=rows[:20],
            )
