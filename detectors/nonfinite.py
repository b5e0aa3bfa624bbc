"""FG002: NaN or Inf values in the received parameters.

A model with non-finite weights cannot have come out of honest training; at
best it is corrupt, at worst the server probes how the client's software fails
(crashes, skipped layers, uploads of non-finite updates). The other detectors
read NaN and infinite values as 0, so one of them cannot hide the rest of a
layer (a class-fishing head with one NaN is still FG201); this one reports them.
"""

from __future__ import annotations

from fedguard.detectors.base import Detector, InspectContext, register_detector
from fedguard.rowstats import nan_inf_counts
from fedguard.types import Confidence, Rule, Severity


@register_detector("nonfinite")
class NonFinite(Detector):
    name = "nonfinite"
    rules = (
        Rule(
            "FG002",
            "non-finite-parameters",
            "Parameters contain NaN or Inf values.",
            "Training never produces NaN/Inf weights in a model the server means to use. "
            "Do not train on this model; ask the server for a fresh copy and compare hashes.",
            "IEEE 754; honest-but-curious vs malicious server model (Fowl et al., ICLR 2022)",
            url="https://arxiv.org/abs/2110.13057",
        ),
    )

    def run(self, context: InspectContext):
        for name in context.view.non_finite:  # as stored: the layers' copies read NaN/Inf as 0
            tensor = context.view.tensors[name]
            nan, inf = nan_inf_counts(tensor)
            yield self.finding(
                "FG002", "NaN/Inf parameters", Severity.MEDIUM, Confidence.HIGH, name,
                f"{nan + inf} of {tensor.numel()} values of {name} are NaN or Inf; do not train on this model.",
                nan=nan, inf=inf, numel=tensor.numel(),
            )
