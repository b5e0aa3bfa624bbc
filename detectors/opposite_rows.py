"""FG104: opposite row pairs — units ``w`` and ``-w`` side by side (MKOR's inconspicuous first FC layer).

MKOR's inconspicuous form (Wang et al., "Maximum Knowledge Orthogonality
Reconstruction with Gradients in Federated Learning", WACV 2024) hides its
class-wise averaging path among honest weights: one honest-looking row
``w`` and its opposite ``-w`` (with opposite bias) feed one merged unit.
Every example switches on exactly one of the two ReLUs, so the pair's summed
gradients take in every example as MKOR's averaging row does, and the
server reads class-mean inputs out of the update
(:mod:`fedguard.attacks.mkor`).

A pair is two dense rows (≥ 50 % non-zero, ≥ 16 inputs) with cosine ≤ −0.99.
Random and trained rows are never that close: the benign zoo's largest
|cosine| between dense rows is 0.97 (docs/detectors.md, FG301). The
crafter's noise (``noise=0.01`` relative to the init scale) keeps its pairs
at cosine −0.9999; a server would need noise of about half the init scale
to get past −0.99, which also blurs what it reconstructs. One pair is
reported as suspicious, two or more (one per class) as malicious.
"""

from __future__ import annotations

from fedguard.detectors.base import Detector, InspectContext, register_detector
from fedguard.detectors.rows import dense_rows, opposite_pairs
from fedguard.modelview import LINEAR
from fedguard.types import Confidence, Rule, Severity

MIN_FAN_IN = 16
MAX_COSINE = -0.99
MALICIOUS_PAIRS = 2


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
            "opposites. Do not train on this model.",
            "Wang et al., Maximum Knowledge Orthogonality Reconstruction, WACV 2024",
        ),
    )

    def run(self, context: InspectContext):
        for layer in context.view.scored_layers(MIN_FAN_IN, kinds=(LINEAR,)):
            pairs = [p for p in opposite_pairs(layer, -MAX_COSINE) if dense_rows(layer, p)]
            if not pairs:
                continue
            severity = Severity.HIGH if len(pairs) >= MALICIOUS_PAIRS else Severity.MEDIUM
            rows = sorted(int(i) for p in pairs for i in p.tolist())
            yield self.finding(
                "FG104", "Opposite row pairs (inconspicuous MKOR)", severity, Confidence.HIGH, layer.name,
                f"{len(pairs)} pairs of units of {layer.name} have opposite weights: each pair passes every "
                "example's input into the update, the class-wise path of MKOR's inconspicuous form. "
                "Do not train on this model.",
                pairs=len(pairs), units=layer.stats.rows, fan_in=layer.fan_in, rows=rows[:20],
            )
