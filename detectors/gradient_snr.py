"""FG801/FG802: behavioural checks on the client's own batch.

Static rules catch known weight patterns; a server can also tune a model so
that no fixed pattern shows. Garov et al. ("Hiding in Plain Sight:
Disguising Data Stealing Attacks in Federated Learning", ICLR 2024, SEER)
argue that *any* attack that reconstructs one sample out of a batch must make
that sample dominate the update, and measure it with the disaggregation
signal-to-noise ratio

    D-SNR = max_i ‖g_i‖ / Σ_{j≠i} ‖g_j‖

of the per-example gradients ``g_i`` of a layer. fedguard computes it per
layer on a batch of the client's own data (``--data``, needs ``--arch``).
A well-trained honest model already lets a misclassified sample dominate,
simply because its loss is the only large one; so each ``‖g_i‖`` is first
divided by ``‖∂ loss_i / ∂ logits_i‖ = ‖softmax_i − onehot_i‖``, leaving the
dominance the *layers* create. On the benign zoo this normalised D-SNR stays
below 0.87 (16 digits; MobileNetV3 at xavier init is the highest, trained
models ≤ 0.82); fishing models reach ∞ and LOKI 5.5. The limit is 2: one
sample outweighing twice the rest of the batch together.

An attack that isolates a *class* rather than one sample (class fishing)
shows up differently: every sample outside the target class has a (near-)zero
gradient in *every* layer below the head, while the target's samples do not.
A sample is silent in a tensor when its normalised norm is below 10⁻³ of the
largest. Saturating activations silence samples in a few tensors of honest
networks too (MobileNetV3's hard-sigmoid gates at xavier init: 81 % of the
batch in one squeeze-excitation tensor), but never across the network: the
model is reported when at least half of its parameter tensors have at least
half the batch silent (benign zoo: at most 1.4 % of tensors; fishing: ≥ 67 %),
and at least half the batch is silent in all of those tensors together
(fishing: 13-15 of 16 samples; a Switch-style top-1 mixture of experts
silences 73 % of tensors for some samples each, but no sample in all of
them: 0 of 16, and it had been reported).

Transmit-SNR (FG802) asks the same of the first layer's forward pass: for
each unit, the energy of its single strongest input term (one pixel times one
weight) against the energy of everything else it mixes in. Copy, shift and
identity units transmit one pixel untouched (T-SNR → ∞); learned units mix
many inputs (T-SNR of a few at most). As FG102/FG103 (pass-through units)
it is medium severity: such units carry the input to a leaking layer, which
its own rule reports, and an identity-initialised first layer (``eye_``)
has them honestly. A layer whose units read one input each (a 1×1
convolution on a one-channel image, a ViT with one-pixel patches) mixes
nothing by construction: the layer after it is scored instead, on what it
reads (a one-channel 1×1 stem of weight 1 in front of an identity layer had
hidden the identity). Units left with a single weight by pruning are not
reported when the layer's other units are sparse too (a 3×3 convolution
pruned to 90 % is one tap per filter), as in FG102/FG103. Thresholds and
the benign measurements behind them are in docs/detectors.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedguard.detectors.base import NEEDS_DATA, Detector, InspectContext, fresh_module, register_detector, rounded
from fedguard.detectors.rows import pruned_beside
from fedguard.layers import layer_input
from fedguard.rowstats import weight_rows
from fedguard.torch_state import evaluating, evaluating_one_by_one
from fedguard.types import Confidence, Rule, Severity

BATCH = 16
DSNR_LIMIT = 2.0
#: A sample is silent in a tensor when its normalised gradient norm is below this share of the largest.
SILENT = 1e-3
SILENT_SHARE = 0.5
SILENT_TENSORS = 0.5
TSNR_LIMIT = 100.0
TSNR_FRACTION = 0.25
#: FG801 is low when the architecture does it too: a fresh initialisation of ``--arch`` (seed 0) crosses the same
#: limit on the same batch, and the received model's D-SNR stays under this multiple of the fresh one's. ConvNeXt-T
#: (torchvision, layer scale 1e-6), three honest initialisations on 16 of the built-in photographs: D-SNR 4.7, 5.5
#: and 4.4, in the depthwise convolutions' biases, each example 5 (had been FG801 high, malicious); fishing's is
#: infinite.
ARCH_FACTOR = 4.0
#: For class isolation, the received model may leave at most this much more of the batch silent everywhere than the
#: fresh initialisation does (2 examples of 16).
ISOLATION_MARGIN = 2 / BATCH


def per_example_gradient_norms(
    module: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, normalise: bool = True
) -> dict[str, torch.Tensor]:
    """‖∂ loss(x_i, y_i) / ∂θ‖ for every parameter tensor θ and sample i (one backward each).

    With ``normalise`` each sample's norms are divided by the norm of its
    loss gradient at the logits, ``‖softmax − onehot‖``, so a sample that
    merely has a larger loss does not count as dominant. The module is
    evaluated in ``eval`` mode so batch-norm layers use their running
    statistics (those that keep none, the batch's) and samples stay
    independent.
    """
    params = {name: p for name, p in module.named_parameters() if p.requires_grad}
    if not params:  # every parameter frozen: training sends no update, nothing to weigh
        return {}
    norms = {name: torch.zeros(len(inputs)) for name in params}
    loss_fn = nn.CrossEntropyLoss()
    with evaluating_one_by_one(module, inputs):
        for i in range(len(inputs)):
            output = module(inputs[i : i + 1])
            grads = torch.autograd.grad(loss_fn(output, labels[i : i + 1]), list(params.values()), allow_unused=True)
            scale = 1.0
            if normalise:
                residual = output.detach().softmax(-1) - nn.functional.one_hot(labels[i : i + 1], output.shape[-1])
                scale = float(residual.norm()) or 1.0
            for name, grad in zip(params, grads):
                if grad is not None:
                    norms[name][i] = torch.linalg.vector_norm(grad.detach()) / scale
    return norms


def dsnr(norms: torch.Tensor) -> float:
    """max_i n_i / (Σ n − max n); ``inf`` when one sample carries the whole gradient."""
    top = float(norms.max())
    rest = float(norms.sum()) - top
    if top == 0:
        return 0.0
    return top / rest if rest > 0 else float("inf")


@dataclass(frozen=True)
class Concentration:
    """How a model concentrates the update of a batch (FG801): one sample dominating (``kind`` ``"dominance"``) or
    most of the batch silent across the network (``"isolation"``)."""

    kind: str
    #: The tensor of the largest D-SNR, that D-SNR and its dominant example.
    worst: str
    dsnr: float
    sample: int
    #: The tensors at or above the limit: D-SNR ≥ :data:`DSNR_LIMIT`, or at least half the batch silent.
    flagged: list[str]
    tensors: int
    #: Share of the tensors with at least half the batch silent, the largest share silent in one tensor, and the
    #: share of the batch silent in all of those tensors together.
    muted_share: float
    max_silent: float
    isolated: float


def concentration(module: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> Concentration | None:
    """How ``module`` concentrates the update of the batch ``inputs``, when it crosses FG801's limits; else None."""
    norms = {name: n for name, n in per_example_gradient_norms(module, inputs, labels).items() if float(n.max()) > 0}
    if not norms:
        return None
    scores = {name: dsnr(n) for name, n in norms.items()}
    quiet = {name: n <= SILENT * n.max() for name, n in norms.items()}
    silent = {name: float(q.float().mean()) for name, q in quiet.items()}
    worst = max(scores, key=scores.get)
    muted = sorted(name for name, share in silent.items() if share >= SILENT_SHARE)
    muted_share = len(muted) / len(silent)
    # the same samples silent in all of them: a mixture of experts routes each sample around most experts, but every
    # sample through some
    isolated = float(torch.stack([quiet[name] for name in muted]).all(0).float().mean()) if muted else 0.0
    if scores[worst] >= DSNR_LIMIT:
        kind, flagged = "dominance", sorted(name for name, s in scores.items() if s >= DSNR_LIMIT)
    elif muted_share >= SILENT_TENSORS and isolated >= SILENT_SHARE:
        kind, flagged = "isolation", muted
    else:
        return None
    return Concentration(kind, worst, scores[worst], int(norms[worst].argmax()), flagged, len(norms), muted_share,
                         max(silent.values()), isolated)  # fmt: skip


def transmit_snr(layer: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Per output unit of the first layer: energy of its strongest input term over the rest."""
    if isinstance(layer, nn.Conv2d):
        patches = nn.functional.unfold(inputs, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
        patches = patches.transpose(1, 2).reshape(-1, patches.shape[1])  # (B·L, C_in·k·k)
        if layer.groups != 1:
            return torch.zeros(layer.out_channels)
    else:
        patches = inputs.reshape(len(inputs), -1)
    weight = layer.weight.detach().reshape(layer.weight.shape[0], -1).to(patches.dtype)
    if weight.shape[1] != patches.shape[1]:
        return torch.zeros(weight.shape[0])
    second = patches.square().mean(dim=0)  # E[x_t²]
    term_energy = weight.square() * second  # E[(w_t x_t)²] per unit and term
    strongest = term_energy.argmax(dim=1)
    out = patches @ weight.T
    signal_part = patches[:, strongest] * weight.gather(1, strongest[:, None])[:, 0]
    signal = signal_part.square().mean(dim=0)
    noise = (out - signal_part).square().mean(dim=0)
    return signal / noise.clamp_min(signal.clamp_min(1e-30) * 1e-12)


@register_detector("gradient_snr")
class GradientSNR(Detector):
    name = "gradient_snr"
    needs = frozenset({NEEDS_DATA})
    rules = (
        Rule(
            "FG801", "d-snr",
            "On the client's own batch, one sample dominates the update (D-SNR ≥ 2) or most samples are silent.",
            "Any attack that rebuilds one sample from a batch update must make that sample dominate the "
            "update. A D-SNR of 2 or more in a layer means one of your samples outweighs twice all the "
            "others together there; a model in which most of your samples contribute nothing to most "
            "layers isolates the rest (class fishing). Both hold whatever the weights look like. "
            "Do not train on this model.",
            "Garov et al., Hiding in Plain Sight: Disguising Data Stealing Attacks in Federated "
            "Learning (SEER), ICLR 2024",
            url="https://arxiv.org/abs/2306.03013",
        ),
        Rule(
            "FG802", "transmit-snr",
            "First-layer units transmit single input values untouched (high transmit-SNR).",
            "Units whose output is one input pixel times a weight, with nothing else mixed in, carry the "
            "raw private input into the network and the update, where a leaking layer can read it. Learned "
            "first-layer units mix many inputs; identity-initialised ones pass inputs through honestly.",
            "Garov et al., ICLR 2024; Wang et al., MKOR, WACV 2024",
            url="https://arxiv.org/abs/2306.03013",
        ),
    )

    def run(self, context: InspectContext):
        module = context.view.module
        inputs, labels = context.data
        inputs, labels = inputs[:BATCH], labels[:BATCH]
        if len(inputs) < 2:  # one example is the whole batch: nothing for it to dominate
            return []
        found = concentration(module, inputs, labels)
        if found is not None:
            yield self._concentrated(found, self._fresh_baseline(context, inputs, labels, found), len(inputs))
        yield from self._transmit(module, inputs)

    @staticmethod
    def _fresh_baseline(context: InspectContext, inputs: torch.Tensor, labels: torch.Tensor,
                        found: Concentration) -> Concentration | None:
        """The same measurement on a fresh initialisation of ``--arch`` (seed 0), when it concentrates the batch's
        update the same way and the received model goes no further (a D-SNR under :data:`ARCH_FACTOR` times the
        fresh one's; for isolation, at most :data:`ISOLATION_MARGIN` more of the batch silent everywhere): then the
        architecture does it, not the weights received. None otherwise, without ``--arch``, or when the architecture
        cannot be built or run again."""
        if context.fresh is None:
            return None
        try:
            base = concentration(fresh_module(context, inputs.device), inputs, labels)
        except Exception:  # the architecture's code cannot give a baseline here: the received model is judged alone
            return None
        if base is None or base.kind != found.kind:
            return None
        if found.kind == "dominance" and not found.dsnr < ARCH_FACTOR * base.dsnr:
            return None
        if found.kind == "isolation" and found.isolated > base.isolated + ISOLATION_MARGIN:
            return None
        return base

    def _concentrated(self, found: Concentration, base: Concentration | None, batch: int):
        """The FG801 finding for ``found``: high, or low when ``base`` (the fresh architecture) does the same."""
        severity, confidence = (Severity.HIGH, Confidence.MEDIUM) if base is None else (Severity.LOW, Confidence.LOW)
        fresh, said_fresh = {}, ""
        if base is not None and found.kind == "isolation":
            fresh = {"fresh_init_silent_everywhere": rounded(base.isolated), "fresh_init_flagged": len(base.flagged)}
            said_fresh = f"{base.isolated:.0%} of the batch silent in {len(base.flagged)} tensors"
        elif base is not None:
            fresh = {"fresh_init_dsnr": rounded(base.dsnr), "fresh_init_flagged": len(base.flagged)}
            said_fresh = f"D-SNR {base.dsnr:.3g}, {len(base.flagged)} tensors"
        if found.kind == "isolation":
            said = (f"On a batch of {batch} of your examples, at least half contributes no gradient to "
                    f"{len(found.flagged)} of {found.tensors} parameter tensors")  # fmt: skip
            title, layer = "Most of the batch is silent across the network (class isolation)", None
            evidence = dict(silent_tensor_share=rounded(found.muted_share), max_silent_samples=rounded(found.max_silent),
                            silent_everywhere=rounded(found.isolated), limit=SILENT_TENSORS)  # fmt: skip
            harm = "the model routes the update through a few samples (e.g. one class) so they can be separated and reconstructed"
        else:
            tensors = f"{len(found.flagged)} parameter tensor{'s' if len(found.flagged) != 1 else ''}"
            said = (f"On a batch of {batch} of your examples, example {found.sample}'s gradient in {found.worst} is "
                    f"{found.dsnr:.3g}× the sum of all others' (D-SNR ≥ {DSNR_LIMIT:g} in {tensors})")  # fmt: skip
            title, layer = "One sample dominates the update (D-SNR)", found.worst.rpartition(".")[0] or found.worst
            evidence = dict(sample=found.sample, limit=DSNR_LIMIT)
            harm = "the update would isolate it for reconstruction"
        if base is None:
            message = f"{said}: {harm}. Do not train on this model."
        else:
            title += ", as in a fresh initialisation of the architecture"
            message = (f"{said}, and a fresh initialisation of --arch does the same on this batch ({said_fresh}): the "
                       "architecture concentrates the update on some inputs by itself, not these weights. Low by this "
                       "check; the other rules still apply.")  # fmt: skip
        return self.finding("FG801", title, severity, confidence, layer, message, dsnr=rounded(found.dsnr), batch=batch,
                            tensors_flagged=found.flagged[:20], **evidence, **fresh)  # fmt: skip

    def _transmit(self, module: nn.Module, inputs: torch.Tensor):
        layers = [(n, m) for n, m in module.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        if not layers:
            return
        name, first = layers[0]
        if first.weight[0].numel() == 1:  # one input per unit (a 1x1 stem on one channel) mixes nothing by
            # construction: the layer after it is the first that could, scored on what it reads
            if len(layers) == 1:
                return
            name, first = layers[1]
            try:
                with evaluating(module), torch.no_grad():
                    inputs = layer_input(module, first, inputs, flatten=False)
            except Exception:  # the forward cannot run on these inputs, or never reaches the layer: nothing to score
                return
        with torch.no_grad():
            snr = transmit_snr(first, inputs)
        high = snr >= TSNR_LIMIT
        fraction = float(high.float().mean())
        rows = weight_rows(first.weight).float()
        single = high | ((rows != 0).sum(dim=1) == 1)  # a one-weight unit that reads a blank pixel transmits nothing
        if fraction >= TSNR_FRACTION and not pruned_beside(rows, single.nonzero()[:, 0]):
            yield self.finding(
                "FG802", "First layer transmits raw inputs (transmit-SNR)", Severity.MEDIUM, Confidence.MEDIUM, name,
                f"{int(high.sum())} of {snr.numel()} units of {name} pass a single input value through with "
                f"transmit-SNR ≥ {TSNR_LIMIT:g} on your data (median {float(snr.median()):.3g}): the private "
                "input reaches the update untouched.",
                units_flagged=int(high.sum()), units=snr.numel(), fraction=rounded(fraction),
                median_tsnr=rounded(snr.median()), limit=TSNR_LIMIT,
            )
