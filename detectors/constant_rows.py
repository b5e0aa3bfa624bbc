"""FG101: averaging rows — every weight of a unit equal (MKOR's first FC layer).

MKOR (Wang et al., "Maximum Knowledge Orthogonality Reconstruction with
Gradients in Federated Learning", WACV 2024) sets every weight of the first
fully connected layer to ``1/d_in`` so each unit outputs the mean of its input;
with identity layers behind it the server reads class-mean inputs straight out
of the update. Robbing the Fed's imprint layer (Fowl et al., ICLR 2022) uses
the same constant rows as its brightness measurement.

A row is *constant* when all its entries agree within 0.2 % (fp16-safe) and
are not zero. Measured on the benign zoo (tests/zoo.py: default, xavier,
kaiming, orthogonal, trunc-normal inits; trained, 50–90 % pruned, fp16, zero
heads and adapters): no constant non-zero row with 4+ entries ever occurs, so
a single such row is reported and two or more make the model malicious (so
does the one row of a one-row layer: the whole layer averages).

A binarised layer (every row ±α of its own α, both signs: XNOR-Net,
Rastegari et al. 2016) has rows of one sign honestly: a trained XNOR-Net's
3x3 single-channel filters had 2 of 16 all +α, reported as malicious. In
such a layer of at most 16 inputs per row (one sign by chance: 2^(1-fan_in)
a row) constant rows are reported only when they are half the rows or more;
every crafted averaging layer (MKOR, imprint, LOKI, trap blocks) is constant
in all its rows.
"""

from __future__ import annotations

from fedguard.detectors.base import Detector, InspectContext, register_detector, rounded
from fedguard.detectors.rows import REL_TOL, live_rows
from fedguard.types import Confidence, Rule, Severity

MIN_FAN_IN = 4
#: Rows of one sign whose magnitudes vary by at most this coefficient of variation (std / mean) average their input
#: with noise on the weights: MKOR's rows times (1 + 0.1 N(0, 1)) pass the class means into the update as exactly
#: (a row's gradient does not depend on its weights) and had come out clean. Benign: no row of 16 or more inputs in
#: the zoo is of one sign; in the held-out set three trained first convolutions (27 inputs) have such filters, the
#: most even at 0.37, and ConvNets trained on two digit classes (grayscale copied to three channels) had one at 0.096
#: and 0.168 (FG101 suspicious): few inputs are smoothed alike honestly, so the tier reads rows of 32 inputs or more
#: (MKOR's and imprint's averaging rows are a fully connected layer's, of hundreds).
NEAR_CV = 0.2
NEAR_FAN_IN = 32
#: In a binarised layer (every weight ±α) of at most BINARISED_FAN_IN inputs, rows of one sign are rows, not planted
#: averages, below this share: 9 signs agree by chance one time in 256, 64 never.
BINARISED_SHARE = 0.5
BINARISED_FAN_IN = 16


@register_detector("constant_rows")
class ConstantRows(Detector):
    name = "constant_rows"
    rules = (
        Rule(
            "FG101",
            "averaging-rows",
            "Units whose weights are all equal: they output the mean of their input.",
            "A unit with all-equal weights (e.g. 1/d_in) averages its input. MKOR plants such "
            "rows in the first FC layer so the update reveals class-mean inputs; Robbing the Fed "
            "uses them as the imprint measurement. Trained or randomly initialised units never "
            "have exactly equal weights. Do not train on this model.",
            "Wang et al., Maximum Knowledge Orthogonality Reconstruction, WACV 2024; "
            "Fowl et al., Robbing the Fed, ICLR 2022",
            url="https://arxiv.org/abs/2310.19222",
        ),
    )

    def run(self, context: InspectContext):
        for layer in context.view.scored_layers(MIN_FAN_IN):
            stats = layer.stats
            mean = stats.mean
            constant = live_rows(layer) & (stats.maximum - stats.minimum <= REL_TOL * mean.abs())
            count = int(constant.sum())
            chance = count < BINARISED_SHARE * stats.rows and layer.fan_in <= BINARISED_FAN_IN and _binarised(layer)
            if not count and layer.fan_in >= NEAR_FAN_IN:
                yield from self._near(layer)
            if not count or chance:
                continue
            value = float(mean[constant].abs().median())
            n_rows = stats.rows
            severity = Severity.HIGH if count >= 2 or n_rows == 1 else Severity.MEDIUM
            yield self.finding(
                "FG101", "Averaging (constant-weight) rows", severity, Confidence.HIGH, layer.name,
                f"{count} of {n_rows} units of {layer.name} have all-equal weights "
                f"(|w| = {value:.4g}, {value * layer.fan_in:.3g}/d_in): they pass the input's mean "
                "into the update (MKOR / imprint measurement). Do not train on this model.",
                constant_rows=count, rows=n_rows, fraction=rounded(count / n_rows),
                weight_value=rounded(value), weight_times_fan_in=rounded(value * layer.fan_in), fan_in=layer.fan_in,
            )

    def _near(self, layer):
        """Rows of one sign whose magnitudes vary by at most NEAR_CV: averaging rows with noise on them."""
        stats = layer.stats
        mean = stats.l1 / stats.fan_in  # of the magnitudes; one sign: the row's mean up to its sign
        spread = (stats.l2sq / stats.fan_in - mean.square()).clamp_min(0).sqrt()
        near = live_rows(layer) & ((stats.minimum > 0) | (stats.maximum < 0)) & (spread <= NEAR_CV * mean)
        count = int(near.sum())
        if not count:
            return
        cv = float((spread[near] / mean[near]).max())
        yield self.finding(
            "FG101", "Near-averaging rows (one sign, nearly equal weights)",
            Severity.HIGH if count >= 2 or stats.rows == 1 else Severity.MEDIUM, Confidence.MEDIUM, layer.name,
            f"{count} of {stats.rows} units of {layer.name} have weights of one sign within {cv:.0%} of their mean "
            f"(coefficient of variation at most {NEAR_CV:g}; honest units mix signs): they pass a near-mean of the "
            "input into the update, as MKOR's averaging rows do with noise added to hide them. Do not train on this "
            "model.",
            near_rows=count, rows=stats.rows, max_variation=rounded(cv), variation_limit=NEAR_CV, fan_in=layer.fan_in,
        )


def _binarised(layer) -> bool:
    """Whether every row of ``layer`` is ±α of its own α > 0, both signs in the layer (XNOR-Net scales each filter
    by its mean magnitude; BinaryConnect uses one α)."""
    rows = layer.rows()
    magnitude = rows.abs()
    peak = magnitude.amax(dim=1)
    return bool((peak > 0).all() and (magnitude.amin(dim=1) >= (1 - REL_TOL) * peak).all()
                and (rows > 0).any() and (rows < 0).any())  # fmt: skip
