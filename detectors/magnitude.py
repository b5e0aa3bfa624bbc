"""FG502: weights or biases far beyond anything initialisation or training produces.

Most planted parameters are large by construction: LOKI's identity kernels
(~500) and its ``1000·ones`` FC, class fishing's non-target biases (~1000),
Robbing the Fed's ``1/gain`` back-projection (1000). Honest weights scale with
``1/sqrt(fan_in)``; training moves them by a small factor.

Statistics per layer: ``z = max|w| · sqrt(fan_in)`` (the largest weight in
units of the default init scale) and ``max|b|``. On the benign zoo
(tests/zoo.py, see docs/detectors.md) z reaches 16.6 and |b| 0.71
(``benchmarks/detector_calibration.py``); the thresholds, z ≥ 200 with |w| ≥ 5 and |b| ≥ 50, leave a wide
margin. Normalisation layers and embeddings are not scored (their scales are
free parameters); neither is a bias-free matrix filled like ``nn.Embedding``'s
N(0, 1) initialisation whose name says nothing of it (a language model's
``encoder``: 2000x2048 draws reach 5.1, z = 229), when its largest weight lies
within the tail of its own unit spread: a planted value stands far outside it.

References: Zhao et al., "LOKI: Large-scale Data Reconstruction Attack against Federated Learning through Model
Manipulation", IEEE S&P 2024; Wen et al., "Fishing for User Data in Large-Batch Federated Learning via Gradient
Magnification", ICML 2022; Fowl et al., "Robbing the Fed: Directly Obtaining Private Data in Federated Learning with
Modified Models", ICLR 2022.
"""

from __future__ import annotations

import math

from fedguard.detectors.base import Detector, InspectContext, register_detector, rounded
from fedguard.types import Confidence, Rule, Severity

Z_LIMIT = 200.0
ABS_WEIGHT_LIMIT = 5.0
BIAS_LIMIT = 50.0


@register_detector("magnitude")
class ExtremeMagnitude(Detector):
    name = "magnitude"
    rules = (
        Rule(
            "FG502", "extreme-magnitudes",
            "Weights or biases far larger than initialisation or training produce.",
            "Planted parameters (LOKI's scaled identities, class fishing's huge biases, imprint "
            "back-projections) are orders of magnitude larger than honest weights, which scale with "
            "1/sqrt(fan_in). Such values amplify one sample's gradient or pin activations. "
            "Do not train on this model.",
            "Zhao et al., LOKI, IEEE S&P 2024; Wen et al., ICML 2022; Fowl et al., ICLR 2022",
            url="https://arxiv.org/abs/2303.12233",
        ),
    )

    def run(self, context: InspectContext):
        for layer in context.view.scored_layers():
            peak = float(layer.stats.peak.max())
            z = peak * math.sqrt(layer.fan_in)
            bias = layer.bias
            bias_peak = float(bias.detach().abs().max()) if bias is not None and bias.numel() else 0.0  # own dtype
            spoilt = bias is not None and layer.key("bias") in context.view.non_finite  # read as 0 here, FG002's
            weight_hit = z >= Z_LIMIT and peak >= ABS_WEIGHT_LIMIT and not _unit_gaussian_fill(layer)
            bias_hit = bias_peak >= BIAS_LIMIT
            if not (weight_hit or bias_hit):
                continue
            parts = []
            if weight_hit:
                parts.append(f"a weight of {peak:.4g} ({z:.4g}× the 1/sqrt(fan_in) init scale)")
            if bias_hit:
                parts.append(f"a bias of {bias_peak:.4g}")
            yield self.finding(
                "FG502", "Extreme weight/bias magnitudes", Severity.HIGH, Confidence.MEDIUM, layer.name,
                f"{layer.name} has {' and '.join(parts)}: far beyond honest training; such values isolate or "
                "amplify single samples in the update. Do not train on this model.",
                max_abs_weight=rounded(peak), z=rounded(z), z_limit=Z_LIMIT, bias_limit=BIAS_LIMIT,
                max_abs_bias=rounded(bias_peak), **({"bias_non_finite": "NaN or inf, read as 0 (FG002)"} if spoilt else {}),
            )


def _unit_gaussian_fill(layer) -> bool:
    """Whether ``layer`` has no bias, a spread of about 1 (0.5-2) and a largest weight within that spread's Gaussian
    tail for this many draws (``sqrt(2 ln n) + 1`` spreads): an embedding at its N(0, 1) initialisation or after
    training, whatever its name."""
    stats = layer.stats
    n = stats.rows * stats.fan_in
    peak = float(stats.peak.max())
    spreads = math.sqrt(2 * math.log(max(n, 2))) + 1.0
    if not peak <= 2.0 * spreads:  # beyond the widest spread's tail (and before a server's 1e300 weights overflow)
        return False
    mean = float(stats.total.sum()) / n
    spread = math.sqrt(max(float(stats.l2sq.sum()) / n - mean**2, 0.0))
    return layer.bias is None and 0.5 <= spread <= 2.0 and peak <= spread * spreads
