"""FG301: imprint layer — many identical units with a ladder of biases (Robbing the Fed).

Fowl et al. ("Robbing the Fed: Directly Obtaining Private Data in Federated
Learning with Modified Models", ICLR 2022) insert ``Linear(C·H·W → K)`` whose
K rows are one and the same measurement vector (e.g. average brightness) and
whose biases are a monotone ladder of the measurement's quantiles, followed by
``Linear(K → C·H·W)`` of constant weights. Each sample then falls into one
bin, and the difference of two neighbouring rows' gradients divided by the
difference of their bias gradients *is* that sample.

A group is rows with |cosine| ≥ 0.999 among dense (≥ 50 % non-zero), non-zero
rows of at least 16 inputs, or four or more such rows of at least eight
non-zero weights each (a sparse measurement bins as well as a dense one).
Between dense rows the benign zoo (tests/zoo.py) reaches |cosine| 0.81 (MobileNetV3;
``benchmarks/detector_calibration.py``; the rows a zero-initialised head never trained are equal, biases too);
imprint rows have cosine 1.0.

Noise on the rows does not stop the binning: with 5 % noise (cosine
0.998) the server still rebuilt 7 of 32 digits above 30 dB, with 10 %
(0.99) 5 of 32, and FG301 had called such a layer clean. So a group of
at least ``MALICIOUS_GROUP`` rows with |cosine| ≥ ``NEAR_COS`` and as many
distinct biases (the bins' ladder) is reported too. Over the zoo, the
held-out set (``benchmarks/heldout_detection.py``) and 103 further honest
models (LayerNorm, GRU/LSTM, Fixup, transformers, 2-100 classes, pruned,
fp16/bf16), the largest dense group at |cosine| ≥ 0.95 is two rows; the one
larger group, the unseen classes of a zero-initialised head fine-tuned on
half the classes (5 rows at 0.99), has a single bias.

Rows of the logits layer (stored last, its outputs read by no other layer)
bin nothing: no ReLU follows them, so every row's gradient is
``Σ_i (p_ik − y_ik) x_i`` and rows alike have gradients that are multiples
of one another. Honest heads have them: the classes that no training
example showed all get the gradient ``E[p_k x]`` and, under weight decay,
lose their random start (a 100-class MLP head trained with SGD and weight
decay 5e-3 on the ten digits: 90 rows at cosine 0.9999997 with their 90
initial biases). Such a group is reported as low when the model, run on
the client's data (``--arch`` and ``--data``), returns that layer's output,
and as medium otherwise: an imprint layer registered last and read by no
weight layer (its ReLU output added to the logits) looks the same in the
file. A block stored last that still feeds a decoder is checked as any
other layer.

Rows that only come near each other (the near tier) are also where training with sign-like steps leads: a
server's Adam with a tiny epsilon (Flower's FedAdam, τ = 1e-9) moves each unit a step of one size on every weight,
and on non-negative pixels a unit whose error keeps its sign moves along minus the all-ones vector until it dies (an
MLP by federated rounds 10-50: groups of 5-83 first-layer rows at |cosine| 0.951-0.962, 95 % accurate). Dead rows
bin nothing: with the client's data (``--arch`` and ``--data``) a near group that no example reaches, whose rows stay
below switching on by at least :data:`SILENT_MARGIN` standard deviations of their responses over the examples (the
eight such models of an independent sweep of federated runs, three seeds and IID or Dirichlet clients: 6.3-7.1), is
reported as low; an imprint that bins the client's data has thresholds among its examples. Without the data the
group stays high: the same rows on inputs a client standardises (negative pixels) would bin. So it does where the
layer reads other inputs in training than in the check's eval pass (a BatchNorm, dropout).

*Known false positives* (docs/detectors.md): hidden layers of small MLPs
after long, heavily regularised training (SGD, weight decay 5e-3 on every
weight, 200 epochs on five classes: 5 rows at |cosine| ≥ 0.977 in a
32-unit layer) or Adam from ``nn.init.sparse_`` (5 rows at ≥ 0.967),
above the near-duplicate threshold.
"""

from __future__ import annotations

import copy

import torch

from fedguard.detectors.base import Detector, InspectContext, register_detector, rounded
from fedguard.detectors.linear_passes import CHUNK, MAX_UNITS, layers_seen
from fedguard.detectors.rows import (
    REL_TOL,
    SAME_BIAS,
    dense_rows,
    duplicate_row_groups,
    is_opposite_pair,
    stored_as_logits,
)
from fedguard.layers import layer_input
from fedguard.rowstats import finite
from fedguard.torch_state import evaluating
from fedguard.types import Confidence, Rule, Severity

MIN_FAN_IN = 16
MIN_DENSITY = 0.5
#: Non-zero entries each row of a sparse group needs: 256 identical rows of 30 non-zero weights out of 64 with a ladder
#: of biases rebuilt 33-44 of 64 digits exactly and had passed the density rule as clean.
MIN_SUPPORT = 8
MALICIOUS_GROUP = 4
#: Nearly identical rows: |cosine| at least this, in a group of MALICIOUS_GROUP rows or more with as many biases.
NEAR_COS = 0.95
#: A near group is silent on the client's data when no example reaches its rows and each stays below switching on by
#: at least this many standard deviations of its response over the examples: an example of the client's that a
#: sample of 64 did not show would have to lie that far beyond them to reach a bin.
SILENT_MARGIN = 3.0


@register_detector("imprint")
class Imprint(Detector):
    name = "imprint"
    rules = (
        Rule(
            "FG301", "imprint-identical-rows",
            "Many units with the same weight vector (an imprint / binning layer).",
            "Identical rows with different biases sort the batch into bins by one measurement; "
            "each bin's gradient is then a single private input, recovered exactly (Robbing the Fed). "
            "Trained or randomly initialised rows never coincide. Do not train on this model.",
            "Fowl et al., Robbing the Fed: Directly Obtaining Private Data in Federated Learning "
            "with Modified Models, ICLR 2022",
            url="https://arxiv.org/abs/2110.13057",
        ),
    )

    def run(self, context: InspectContext):
        view = context.view
        for layer in view.scored_layers(MIN_FAN_IN):
            groups, near = _groups(layer), False
            if not groups:  # noise on an imprint's rows: a big enough group with a ladder of biases
                groups = [g for g in _groups(layer, NEAR_COS) if g.numel() >= MALICIOUS_GROUP]
                near = True
            if not groups:
                continue
            group = groups[0]
            n_rows = layer.stats.rows
            size = int(group.numel())
            evidence = dict(identical_rows=size, rows=n_rows, groups=len(groups), fan_in=layer.fan_in)
            evidence.update(self._bias_ladder(layer, group))
            if near:
                if evidence.get("distinct_biases", 0) < MALICIOUS_GROUP:
                    continue
                evidence["min_abs_cosine"] = rounded(_least_cosine(layer, group))
            if evidence.get("distinct_biases") == 1 and _constant(layer, group):
                continue  # equal averaging rows with one bias: MKOR's layer, reported by FG101, no bins
            follower = view.next_weight_layer(layer)
            logits = stored_as_logits(view, layer)
            shown = logits and _gives_the_output(context, layer.name)  # run on the client's data: certainly logits
            if logits and evidence.get("distinct_biases") == 1:
                continue  # head rows alike, biases too: no bins. A zero-initialised head's classes that no example
                # of the client's showed get identical updates and stay alike (LeNet-5, digits 0-4 only: 5 rows)
            if follower is not None and follower.stats.finite:
                s = follower.stats
                spread = float(s.maximum.max() - s.minimum.min())
                evidence["next_layer"] = follower.name
                evidence["next_layer_constant"] = spread <= REL_TOL * float(s.peak.max())
            if logits:
                yield self.finding(
                    "FG301", "Classifier rows alike", Severity.LOW if shown else Severity.MEDIUM, Confidence.MEDIUM,
                    layer.name,
                    f"{size} of {n_rows} rows of {layer.name}, the last layer stored and one no other layer reads, "
                    "share one weight vector with different biases. If they are the logits, no ReLU follows them and "
                    "they sort nothing into bins: an honest head's classes that no training example showed converge "
                    "to one row like this under weight decay. "
                    + ("On your data the model's output is this layer's, so they are." if shown else
                       f"Whether the model's forward uses {layer.name} as its output is unknown here (an imprint layer "
                       "stored last would look the same): run with --arch and --data to settle it."),
                    **evidence, logits_shown=shown,
                )  # fmt: skip
                continue
            margin = _silent_margin(context, layer.name, group) if near else None
            rows_alike = (
                f"{size} of {n_rows} units of {layer.name} share one weight vector"
                + (f" up to noise (|cosine| ≥ {evidence['min_abs_cosine']:.3g})" if near else "")
                + (f" with {evidence['distinct_biases']} distinct biases" if "distinct_biases" in evidence else "")
            )
            if margin is not None and margin >= SILENT_MARGIN:
                yield self.finding(
                    "FG301", "Alike rows that none of your examples reaches", Severity.LOW, Confidence.MEDIUM,
                    layer.name,
                    f"{rows_alike}, but no example of yours reaches them: each stays at least {margin:.1f} standard "
                    "deviations of its response below switching on, so they bin nothing of your data. Training "
                    "with sign-like steps (a server's Adam with a tiny epsilon) moves dead units' rows alike.",
                    **evidence, silent_margin=rounded(margin),
                )  # fmt: skip
                continue
            severity = Severity.HIGH if size >= MALICIOUS_GROUP else Severity.MEDIUM
            yield self.finding(
                "FG301", "Imprint layer: identical rows", severity, Confidence.HIGH, layer.name,
                f"{rows_alike}: they bin the batch by one measurement so each bin's gradient reveals one input "
                "exactly (Robbing the Fed). Do not train on this model.",
                **evidence,
            )

    @staticmethod
    def _bias_ladder(layer, group: torch.Tensor) -> dict:
        bias = layer.bias_f32()
        if bias is None or bias.shape[0] != layer.out_features or not finite(bias):
            return {}
        ladder = bias[group.sort().values]
        steps = ladder[1:] - ladder[:-1]
        gaps = ladder.sort().values.diff().abs()
        return {
            "distinct_biases": 1 + int((gaps > SAME_BIAS * float(ladder.abs().max())).sum()),
            "bias_min": rounded(ladder.min()), "bias_max": rounded(ladder.max()),
            "bias_ladder_monotone": bool((steps > 0).all() or (steps < 0).all()),
        }


def _groups(layer, min_cos: float = 0.999) -> list[torch.Tensor]:
    """Groups of dense rows with |cosine| ≥ ``min_cos`` (FG104's opposite pairs left out), largest first; identical
    sparse rows (cosine 0.999) count too in a group of ``MALICIOUS_GROUP`` or more with ``MIN_SUPPORT`` non-zero
    entries each."""
    exact = min_cos >= 0.999
    return [g for g in duplicate_row_groups(layer, min_cos)
            if (dense_rows(layer, g, MIN_DENSITY) or (exact and _supported(layer, g)))
            and not is_opposite_pair(layer, g)]  # fmt: skip


def _supported(layer, group: torch.Tensor) -> bool:
    """A group of at least ``MALICIOUS_GROUP`` rows with ``MIN_SUPPORT`` non-zero entries each: pruning leaves rows
    of one or two weights that coincide, not rows of eight or more."""
    return group.numel() >= MALICIOUS_GROUP and bool(((layer.rows(group) != 0).sum(dim=1) >= MIN_SUPPORT).all())


def _gives_the_output(context: InspectContext, name: str) -> bool:
    """Whether the module (``--arch``), run on the client's data (``--data``), returns layer ``name``'s output."""
    if context.data is None or context.view.module is None:
        return False
    module = context.view.module
    target = dict(module.named_modules()).get(name)
    if target is None:
        return False
    seen: list[torch.Tensor] = []
    handle = target.register_forward_hook(lambda _module, _args, out: seen.append(out))
    try:
        with evaluating(module), torch.no_grad():
            output = module(context.data[0][:2].float())
    except Exception:  # the module cannot run here: nothing shown
        return False
    finally:
        handle.remove()
    return len(seen) == 1 and isinstance(output, torch.Tensor) and torch.equal(seen[0], output)


def _silent_margin(context: InspectContext, name: str, group: torch.Tensor) -> float | None:
    """With the client's data (``--arch``, ``--data``): when no example's gradient reaches any row of ``group`` in
    layer ``name``, the fewest standard deviations of a row's response over the examples by which it stays below
    switching on (infinite for a response the examples do not move); else None, as when the layer is not a fully
    connected one that FG803 measures (:func:`~fedguard.detectors.linear_passes.linear_layers_seen`), reads other inputs
    in training or more than one per example, or the module cannot run here."""
    if context.data is None or context.view.module is None or int(group.max()) >= MAX_UNITS:
        return None
    try:
        seen = next((s for s in layers_seen(context) if s.name == name), None)
    except Exception:  # the module cannot run here: nothing shown
        return None
    if seen is None or bool((seen.grad[:, group] != 0).any()):
        return None
    if not _reads_the_same_in_training(context.view.module, name, context.data[0], seen.inputs):
        return None
    response, bias = seen.responses()
    output = response[:, group] + bias[group]
    peak = output.max(dim=0).values
    if bool((peak >= 0).any()):
        return None
    return float((-peak / output.std(dim=0)).min())


def _reads_the_same_in_training(module: torch.nn.Module, name: str, inputs: torch.Tensor, read: torch.Tensor) -> bool:
    """Whether a copy of ``module`` in training mode computes what the eval pass did on ``inputs``: layer ``name``
    reads ``read`` and the outputs agree (in chunks of :data:`CHUNK`, the copy's running statistics spent). A
    BatchNorm standardises the client's training batch by the batch's own statistics, where the check's eval pass
    uses the running ones: a red team's noisy imprint behind a BatchNorm left at its start (mean 0, variance 1) read
    raw pixels in eval mode, dead by 4.7 standard deviations, and binned the standardised batch in training (8-11 of
    16 digits rebuilt); one after the rows would move their thresholds in training alone. So does dropout, and any
    layer that asks whether it is training."""
    try:
        twin = copy.deepcopy(module)
        layer = dict(twin.named_modules())[name]
        with torch.no_grad():
            parts = inputs.float().split(CHUNK)
            training = torch.cat([layer_input(twin.train(), layer, part) for part in parts]).double()
            outputs = [(twin.train()(part), twin.eval()(part)) for part in parts]
    except Exception:  # the module cannot run here in training mode: nothing shown
        return False
    if training.shape != read.shape:
        return False
    same_read = torch.allclose(training, read, rtol=1e-5, atol=1e-6 * float(read.abs().max()))
    return same_read and all(torch.allclose(a, b, rtol=1e-5, atol=1e-6 * float(b.abs().max())) for a, b in outputs)


def _least_cosine(layer, group: torch.Tensor) -> float:
    """The smallest |cosine| between the group's first row and the others."""
    rows = layer.rows(group)
    unit = rows / torch.linalg.vector_norm(rows, dim=1, keepdim=True)
    return float((unit @ unit[0]).abs().min())


def _constant(layer, group: torch.Tensor) -> bool:
    """True when the group's rows are constant vectors (FG101's averaging rows)."""
    stats = layer.stats
    return bool((stats.maximum[group] - stats.minimum[group] <= REL_TOL * stats.peak[group]).all())
