"""FG401: trap weights — every unit's positive mass a fixed fraction of its negative mass.

Boenisch et al. ("When the Curious Abandon Honesty: Federated Learning Is Not
Private", IEEE EuroS&P 2023) initialise the first layer so that, per row, half
the weights are negative and the positive ones are scaled to a fixed factor
(0.95) of the negatives' magnitude. Most units then stay inactive, and the few
that fire for one sample only leak it exactly through ∇W_i / ∇b_i.

Two readings of the construction are checked. Per row with both signs,
r = Σw⁺ / Σ|w⁻|: honest rows scatter r around 1 (relative spread across rows
≥ 5 % in every benign zoo layer with 8+ inputs, see docs/detectors.md), trap
rows share one r < 1 to within 0.2 %. And *mirrored* rows, whose sorted
positive magnitudes are one constant times their sorted negative magnitudes:
honest rows' order statistics never match like that. And a server that
draws a different factor per row (e.g. U(0.85, 0.99)) still puts *every*
row below 1 in a narrow band: with 32+ rows, all ratios in [0.5, 1) and a
spread ≤ 25 % of the median is reported. Honest layers never have all rows
below 1 (held-out set: at most 94.5 %, a first layer trained with Adam at
1e-2, whose ratios span 0.007–1.49).

Trap rows can also sit among honest ones (every other row of the crafted
layer replaced by its honest initialisation: 13 of 128 rows then fired for
exactly one of 32 examples, and the layer had passed as clean). So a group
of at least ``PART_ROWS`` rows, and ``PART_SHARE`` of the layer's, sharing
one ratio below 1 to within 0.2 % is reported too. Over the zoo, the
held-out set and 103 further honest models, the largest such group is 4.7 %
of a layer's rows (24 of 512 in an fp16 VGG-11 at init; 108 of 4,096 in a
784-4096-4096 MLP).

Rows that balance exactly (ratio 1 to within :data:`BALANCED`) are not
traps: a unit whose positive and negative weights cancel is as often active
as not. Zero-mean rows are what Weight Standardization (Qiao et al., 2019)
exports, and they share one ratio (1, to within float rounding: spread
5e-8 to 8e-8 on the MLP, LeNet-5, the ConvNet and ResNet-18), so without
this bound every such honest layer read as a trap. The paper's factor is
0.95; a trap factor within 0.5 % of 1 silences almost nothing.

Rows that are copies of one another (|cosine| 0.999) share whatever ratio they have and count once in such a
group: a head trained from zeros keeps the classes that no example showed as one row (an honest sweep of text
models: 4,328 of an LSTM language model's 5,000 rows at one ratio, 90 of a transformer's 100 classes), which had
read as trap rows among honest ones. A trap's rows differ.
"""

from __future__ import annotations

import torch

from fedguard.detectors.base import Detector, InspectContext, register_detector, rounded
from fedguard.detectors.rows import REL_TOL, SAME_BIAS, duplicate_row_groups, largest_equal_group, stored_as_logits
from fedguard.types import Confidence, Rule, Severity

MIN_FAN_IN = 8
MIN_ROWS = 4
#: Per-row factors (an adaptive trap): at least this many rows, all in [BAND_LOW, 1), spread ≤ BAND_WIDTH.
BAND_ROWS = 32
BAND_LOW = 0.5
BAND_WIDTH = 0.25
#: Rows looked at one by one for the mirrored reading.
MIRROR_SAMPLE = 64
#: A shared ratio this close to 1 is balance (zero-mean rows), not a trap.
BALANCED = 0.005
#: Trap rows among honest ones: at least this many rows, and this share of the layer's, sharing one ratio below 1.
PART_ROWS = 16
PART_SHARE = 0.1


@register_detector("trap_weights")
class TrapWeights(Detector):
    name = "trap_weights"
    rules = (
        Rule(
            "FG401", "trap-weights",
            "Every unit's positive weights sum to the same fraction of its negative weights.",
            "Trap weights keep most units silent so that a unit activated by a single sample leaks "
            "that sample exactly in its gradient. Honest rows have a positive/negative balance that "
            "varies from unit to unit; trap rows share one ratio (0.95 in the paper). "
            "Do not train on this model.",
            "Boenisch et al., When the Curious Abandon Honesty: Federated Learning Is Not Private, "
            "IEEE EuroS&P 2023",
            url="https://arxiv.org/abs/2112.02918",
        ),
    )

    def run(self, context: InspectContext):
        for layer in context.view.scored_layers(MIN_FAN_IN):
            stats = layer.stats
            positive, negative = stats.positive, stats.negative
            scale = stats.l1.max()
            both = (positive > 1e-6 * scale) & (negative > 1e-6 * scale)
            if int(both.sum()) < MIN_ROWS:
                continue
            ratio = positive[both] / negative[both]
            centre = float(ratio.median())
            spread = float((ratio - centre).abs().max()) / centre
            sample = layer.rows(both.nonzero()[:MIRROR_SAMPLE, 0])
            balanced = abs(centre - 1) <= BALANCED  # zero-mean rows (Weight Standardization): balanced, not silent
            whole = not balanced and ((spread <= REL_TOL and 0 < centre < 1) or _mirrored(sample) or _banded(ratio))
            rows = both.nonzero()[:, 0]
            if not whole:  # trap rows among honest ones: a group sharing one ratio below 1
                below = (ratio < 1 - BALANCED).nonzero()[:, 0]
                group = below[largest_equal_group(ratio[below], rel=REL_TOL)]
                logits = stored_as_logits(context.view, layer)
                if _distinct(layer, rows[group], logits) < max(PART_ROWS, PART_SHARE * ratio.numel()):
                    continue
                rows, centre = rows[group], float(ratio[group].median())
                spread = float((ratio[group] - centre).abs().max()) / centre
                sample = layer.rows(rows[:MIRROR_SAMPLE])
            signs = (sample < 0).float().mean(dim=1)
            who = f"All {int(both.sum())}" if whole else f"{rows.numel()} of the {int(both.sum())}"
            yield self.finding(
                "FG401", "Trap weights", Severity.HIGH, Confidence.HIGH, layer.name,
                f"{who} units of {layer.name} have positive weights summing to exactly "
                f"{centre:.4g}× their negative weights (spread {spread:.1e}): most units stay silent and one "
                "that fires for a single sample leaks it exactly. Do not train on this model.",
                rows=rows.numel(), units=int(both.sum()), ratio=rounded(centre), relative_spread=rounded(spread, 2),
                negative_share=rounded(float(signs.mean())),
            )


def _distinct(layer, rows: torch.Tensor, logits: bool) -> int:
    """How many of the units ``rows`` are not copies of one another: rows alike to |cosine| 0.999 share their ratio
    whatever it is, and count once where they switch together, with one bias (to :data:`SAME_BIAS`), or, in the
    ``logits`` (:func:`~fedguard.detectors.rows.stored_as_logits`), which no ReLU follows, where :data:`PART_ROWS` or
    more share one direction. A head trained from zeros gives the classes no example showed one update each, and
    they stay one row: 4,328 of a language model's 5,000 at one ratio below 1, 90 of a transformer's 100; with
    log-unigram biases, one direction scaled by each word's prior; FG301 reads rows alike. Fewer copies with a
    ladder of biases fire for different examples and count each, wherever the file stores them (a review's trap
    rows stored three times each, scaled by 0.99-1.01 with biases at three quantiles, had passed: 10-13 of 64
    digits rebuilt against 7-11; stored last beside a branch no layer reads as wide, they had looked like logits)."""
    chosen = torch.zeros(layer.stats.rows, dtype=torch.bool)
    chosen[rows] = True
    bias = layer.bias_f32()
    copies = 0
    for group in duplicate_row_groups(layer):
        group = group[chosen[group]]
        if bias is not None and bias.shape[0] == layer.stats.rows and group.numel() > 1:
            if logits and group.numel() >= PART_ROWS:  # one direction that many classes share: untrained classes
                copies += group.numel() - 1
                continue
            spread = float(bias[group].max() - bias[group].min())
            if spread > SAME_BIAS * max(float(bias.abs().max()), 1e-30):
                continue  # a ladder: each copy switches at its own threshold
        copies += max(group.numel() - 1, 0)
    return int(rows.numel()) - copies


def _mirrored(rows: torch.Tensor) -> bool:
    """True when every row's positive magnitudes are one fixed multiple of its negative ones."""
    for row in rows:
        pos = row[row > 0].sort().values
        neg = (-row[row < 0]).sort().values
        if pos.numel() != neg.numel() or pos.numel() < MIN_FAN_IN // 2:
            return False
        q = pos / neg
        if float(q.max() - q.min()) > REL_TOL * float(q.median()):
            return False
    return True


def _banded(ratio: torch.Tensor) -> bool:
    """True when every row sits in one narrow band below 1 (per-row trap factors)."""
    if ratio.numel() < BAND_ROWS:
        return False
    low, high, centre = float(ratio.min()), float(ratio.max()), float(ratio.median())
    return BAND_LOW <= low and high < 1 and (high - low) <= BAND_WIDTH * centre
