"""FG201/FG202: class fishing and feature fishing in linear layers.

Wen et al. ("Fishing for User Data in Large-Batch Federated Learning via
Gradient Magnification", ICML 2022) make one sample dominate a large batch's
update. *Class fishing*: zero the weights of every non-target class and give
those classes huge biases, so only samples of the target class produce a
gradient. *Feature fishing*: scale one feature weight of the target class so
the batch splits on that feature and one sample ends up alone.

Thresholds, from the benign zoo (tests/zoo.py) and a held-out benign set
(log-prior heads, structured-pruned heads, 100-class heads trained on 10
classes; see docs/detectors.md): a muted row is one whose norm is below 25 %
of the layer's largest row (fishing shrinks or zeroes rows, it need not zero
them: rows at 6 % with biases of 20 still isolated the target class's
samples 18×, and a 5 % cut had passed them), and honest rows that weak
carry biases of at most 0.77 (0.57 below 5 %), so a muted unit inside the
network with ``|bias| ≥ 5`` is planted (LOKI's, imprint blocks' bins). In
a head, what isolates the target is the gap between the muted classes'
constant logits and the target's: a crafter can keep the biases small
(non-target biases 2-4, or 0 with a target bias of -20) and still mute
every other class. Over the 19 layers with muted
rows in the benign zoo and the held-out set (and 103 further honest models,
at the 25 % cut), the muted rows' lowest bias never exceeds the weighted
rows' highest (largest gap -0.003), so in a head, muted rows whose biases
stand ``≥ 2`` above every weighted row's are class fishing when they are at
least half the rows: fishing mutes every class but its targets, while a K+1
head with one constant "reject" logit (zero weights, bias 3, above every
class's) isolates nothing and had been reported. A head's biases count only
by their differences (the softmax reads nothing else), and a muted class
below the weighted ones is never predicted and mutes nothing: a language
model's head trained from zeros with log-unigram biases keeps small rows
(an honest sweep: 297 of 5,000 rows under a quarter of the largest, biases
-1.3 to -20, against the weighted rows' -6.6 to -12.6), which the absolute
``|bias| ≥ 5`` that inside layers keep had read as class fishing. A head
whose rows are *all* zero isolates nothing and is skipped.
Honest dense rows never have one weight more than 20× the RMS of the rest;
feature fishing's is ≥ 50×.
"""

from __future__ import annotations

import torch

from fedguard.detectors.base import Detector, InspectContext, register_detector, rounded
from fedguard.detectors.rows import duplicate_row_groups
from fedguard.modelview import LINEAR
from fedguard.rowstats import finite
from fedguard.types import Confidence, Rule, Severity

#: A row is muted when its L2 norm is below this share of the layer's largest row norm.
MUTED = 0.25
HUGE_BIAS = 5.0
#: Gap between the muted rows' biases and the highest bias of a weighted row beyond which the muted classes swamp it.
BIAS_MARGIN = 2.0
OUTLIER_RATIO = 50.0
MIN_OTHERS = 8

_RULES = (
    Rule(
        "FG201", "class-fishing",
        "Muted output rows with huge biases: only one class can produce a gradient.",
        "Rows with (near-)zero weights and very large biases fix those classes' logits so that "
        "only samples of the remaining target class contribute to the update, isolating them from "
        "the rest of the batch for reconstruction. Do not train on this model.",
        "Wen et al., Fishing for User Data in Large-Batch Federated Learning via Gradient "
        "Magnification, ICML 2022",
        url="https://arxiv.org/abs/2202.00580",
    ),
    Rule(
        "FG202", "feature-fishing",
        "One weight of a unit scaled far beyond the others.",
        "Scaling one feature weight of a class by hundreds makes the gradient split the batch on that "
        "feature, so a single sample's contribution can be isolated and inverted. Honest rows never "
        "carry one weight dozens of times their RMS. Do not train on this model.",
        "Wen et al., Fishing for User Data in Large-Batch Federated Learning via Gradient "
        "Magnification, ICML 2022",
        url="https://arxiv.org/abs/2202.00580",
    ),
)


@register_detector("fishing")
class Fishing(Detector):
    name = "fishing"
    rules = _RULES

    def run(self, context: InspectContext):
        for layer in context.view.scored_layers(kinds=(LINEAR,)):
            stats = layer.stats
            bias = layer.bias_f32()
            if bias is not None and finite(bias) and bias.shape[0] == stats.rows:
                yield from self._class_fishing(context, layer, stats, bias)
            yield from self._feature_fishing(layer, stats)

    def _class_fishing(self, context, layer, stats, bias):
        norm = stats.l2sq.sqrt()  # float64: a server's 3e38 weights overflow float32's norms
        top = float(norm.max())
        if top == 0:
            return  # a zero head: every logit is its bias, nothing is isolated
        muted = norm <= MUTED * top
        inside = context.view.next_weight_layer(layer) is not None
        common = None if inside else _common_row(layer, bias)
        if common is not None:  # a head reads only differences: rows and biases taken relative to its common row
            norm, bias = _norms_from(layer, common[0]), bias - common[1]
            top = float(norm.max())
            if top == 0:
                return
            muted = norm <= MUTED * top
        if inside:  # muted units with huge biases: constants, as planted blocks' bins are
            fished = muted & (bias.abs() >= HUGE_BIAS)
        else:  # a head: most classes' constant logits above every weighted class's (softmax reads only differences)
            fished = muted & (bias >= bias[~muted].max() + BIAS_MARGIN)
            if 2 * int(fished.sum()) < stats.rows:
                fished = torch.zeros_like(muted)
        count = int(fished.sum())
        if not count:
            return
        quiet = int(muted.sum()) - count  # muted too, with ordinary biases
        active = int((~muted).sum())
        constants = (f"{count} of {stats.rows} units of {layer.name} have (near-)zero weights and biases up to "
                     f"{float(bias[fished].abs().max()):.4g}: their outputs are constants"
                     if common is None else
                     f"{count} of {stats.rows} units of {layer.name} are copies of one row (|cosine| 0.999) with "
                     f"biases {float(bias[fished].min()):.4g} or more above every other unit's relative to them: the "
                     "softmax reads only the logits' differences, so theirs are constants")  # fmt: skip
        constants += f" (as are {quiet} more muted unit(s) with small biases)" if quiet else ""
        one_input = (stats.peak_to_rest[~muted] >= OUTLIER_RATIO).all()
        if inside:  # inside the network: no class is fished there
            kind, title = "planted", "Muted units with huge biases"
            why = (", as planted blocks' bins are (imprint, LOKI); honest units that weak carry biases of at most "
                   "0.77. Do not train on this model.")
        elif one_input:
            kind, title = "feature", "Feature fishing: muted rows, the active unit reads one input"
            why = (f", so only the {active} unit(s) with weights carry a gradient, and each reads one input far above "
                   "its others: the batch is split on that feature to isolate one sample. Do not train on this model.")
        else:
            kind, title = "class", "Class fishing: muted rows with huge biases"
            why = f", so only the {active} unit(s) with weights carry a gradient and isolate their samples. Do not train on this model."
        yield self.finding(
            "FG201", title, Severity.HIGH, Confidence.HIGH, layer.name, constants + why,
            fishing=kind, muted_rows=count, rows=stats.rows, active_rows=active,
            max_abs_bias=rounded(bias[fished].abs().max()), bias_threshold=HUGE_BIAS,
            bias_margin=rounded(bias[fished].min() - bias[~muted].max()), margin_threshold=BIAS_MARGIN,
        )

    def _feature_fishing(self, layer, stats):
        if stats.fan_in <= MIN_OTHERS:
            return
        candidates = (stats.peak_to_rest >= OUTLIER_RATIO).nonzero()[:, 0]
        if not candidates.numel():
            return
        rows = layer.rows(candidates)
        top = rows.abs().max(dim=1)
        others = (rows != 0).sum(dim=1) - 1
        rms = ((rows.square().sum(dim=1) - top.values.square()).clamp_min(0) / others.clamp_min(1)).sqrt()
        ratio = torch.where((others >= MIN_OTHERS) & (rms > 0), top.values / rms.clamp_min(1e-30), torch.zeros_like(rms))
        hit = ratio >= OUTLIER_RATIO
        if not bool(hit.any()):
            return
        hits, top_index = candidates[hit], top.indices[hit]
        ratio = ratio[hit]
        best = int(ratio.argmax())
        worst = int(hits[best])
        yield self.finding(
            "FG202", "Feature fishing: one weight hugely out of scale", Severity.HIGH, Confidence.MEDIUM, layer.name,
            f"{hits.numel()} unit(s) of {layer.name} carry one weight {float(ratio[best]):.0f}× the RMS of "
            f"their other weights (unit {worst}, input {int(top_index[best])}): the batch is split on that "
            "feature to isolate one sample. Do not train on this model.",
            rows_flagged=int(hits.numel()), worst_row=worst, worst_input=int(top_index[best]),
            ratio_to_row_rms=rounded(ratio[best]), threshold=OUTLIER_RATIO,
        )


def _common_row(layer, bias: torch.Tensor) -> tuple[torch.Tensor, float] | None:
    """``(row, bias)``: the mean of the rows alike to |cosine| 0.999
    (:func:`~fedguard.detectors.rows.duplicate_row_groups`) that at least half a head's rows are, and of their
    biases; None when no group is that large. Adding one row and bias to every class changes no probability, so a
    server can fish with every non-target row a copy of an honest-looking one instead of zero (a red team's head:
    the target's examples 96-97 % of the gradient below it, clean; with 1 % noise on each copy, 98 %); the rows a
    zero-initialised head never trained are such copies too, below the trained classes."""
    groups = duplicate_row_groups(layer)
    if not groups or 2 * len(groups[0]) < layer.stats.rows:
        return None
    return layer.rows(groups[0]).double().mean(dim=0), float(bias[groups[0]].double().mean())


def _norms_from(layer, row: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Each row's distance from ``row`` (float64), ``chunk`` rows at a time."""
    units = torch.arange(layer.stats.rows)
    return torch.cat([(layer.rows(part).double() - row).norm(dim=1) for part in units.split(chunk)])
