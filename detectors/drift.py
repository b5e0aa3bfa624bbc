"""FG701/FG702: the model differs from the expected architecture or from last round's model.

Every planted-parameter attack that inserts layers (Robbing the Fed's imprint
block, an oversized FC, LOKI's per-client convolutions) changes the model's
keys or shapes. Checked against ``--arch`` (the architecture the client
agreed to train) and ``--reference`` (the global model of the previous round).

Between two rounds honest training moves each layer a little: its weights
stay strongly aligned with last round's. A layer whose weights were *replaced*
(cosine to the previous round's weights below 0.2 while it moved by more than
half its norm) is reported too, at high severity when the rest of the model
trained as usual (median cosine of the other weight layers at least 0.6): on
the benign zoo, a round of local training (tests/zoo.py) keeps every layer's
cosine above 0.6. When every layer moved far, the round was aggressive
training or a wholesale swap, which cosines cannot tell apart, so it is low:
one epoch of SGD at lr 0.05 with momentum 0.9 from the ConvNet's
initialisation leaves its convolutions at cosine 0.41-0.54 and its small-init
head at 0.09 (its norm grows tenfold). Planted structure in such a model is
still what the pattern checks look for. A model with a single weight layer has
no rest to compare with, so it is low too: one epoch of logistic regression on
digits (SGD, lr 0.1, momentum 0.9, batches of 32) leaves it at cosine 0.17.

A layer *rescaled* along its own weights (cosine to last round's at least
0.9, norm grown at least threefold) is reported the same way: training that
keeps a layer's direction barely changes its size. Measured over 32 rounds
(MLP, LeNet, ConvNet, ResNet-18 on digits; SGD, SGD with momentum, Adam and
AdamW, 1-3 epochs from initialisation), the layers that kept cosine 0.9
changed norm by at most 15 %; a magnified layer (gradient magnification,
Wen et al., ICML 2022) keeps cosine 1.

References: Fowl et al., "Robbing the Fed", ICLR 2022 (imprint blocks); Zhao et al., "LOKI", IEEE S&P 2024
(per-client convolutions); Boenisch et al., "When the Curious Abandon Honesty", EuroS&P 2023 (trap weights).
"""

from __future__ import annotations

from typing import Mapping

import torch

from fedguard.detectors.base import NEEDS_MODULE, NEEDS_REFERENCE, Detector, InspectContext, register_detector, rounded
from fedguard.loading import is_running_stat
from fedguard.modelview import effective_tensors
from fedguard.rowstats import FLOAT32_SAFE, finite
from fedguard.types import Confidence, Rule, Severity

REPLACED_COSINE = 0.2
REPLACED_CHANGE = 0.5
TRAINED_COSINE = 0.6
RESCALED_COSINE = 0.9
RESCALED_GROWTH = 3.0
SHOWN = 6


def folded_shapes(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Size]:
    """Name -> shape, with pruned and weight-normalised layouts under the names of the weights they fold into."""
    return {name: t.shape for name, (t, _) in effective_tensors(tensors).items()}


def compare_shapes(received: Mapping[str, torch.Size], expected: Mapping[str, torch.Size]) -> dict:
    """Keys missing, unexpected and of a different shape, each as a sorted list. Normalisation layers' running
    statistics may be missing (:data:`~fedguard.loading.RUNNING_STATS`): FL code often sends parameters only."""
    missing = [k for k in expected if k not in received and not is_running_stat(k)]
    unexpected = [k for k in received if k not in expected]
    reshaped = [f"{k}: {tuple(received[k])} vs {tuple(expected[k])}" for k in reshaped_names(received, expected)]
    return {"missing": missing, "unexpected": unexpected, "reshaped": reshaped}


def reshaped_names(received: Mapping[str, torch.Size], expected: Mapping[str, torch.Size]) -> list[str]:
    """The names in both whose shapes differ, in ``expected``'s order."""
    return [k for k in expected if k in received and tuple(received[k]) != tuple(expected[k])]


def wrapping_prefix(received: Mapping[str, torch.Size], expected: Mapping[str, torch.Size]) -> str | None:
    """The prefix under which ``received`` holds every key of ``expected`` in its shape (running statistics may be
    missing), or None: a crafted model that wraps the client's architecture (``model.``) beside an added block
    (``imprint.``) shares no name with it, and FG701 had said to fix ``--arch``."""
    first = next((k for k in expected if not is_running_stat(k)), None)
    if first is None:
        return None
    for name in received:
        prefix = name[: -len(first)]
        if not name.endswith(first) or not prefix.endswith("."):
            continue
        if all(prefix + k in received and tuple(received[prefix + k]) == tuple(shape)
               for k, shape in expected.items() if not is_running_stat(k)):  # fmt: skip
            return prefix
    return None


def _under(name: str, prefix: str, expected: Mapping[str, torch.Size]) -> bool:
    """Whether ``name`` is one of ``expected``'s names behind ``prefix``."""
    return name.startswith(prefix) and name[len(prefix):] in expected


def shape_summary(diff: dict) -> str:
    """``compare_shapes``' lists in one phrase, the first few of each named."""
    parts = []
    for what, items in diff.items():
        if items:
            shown = ", ".join(items[:SHOWN]) + (f" (+{len(items) - SHOWN} more)" if len(items) > SHOWN else "")
            parts.append(f"{len(items)} {what}: {shown}")
    return "; ".join(parts)


#: Names kept per list in a finding's evidence (a file can hold thousands of keys).
EVIDENCE_NAMES = 50


def shape_evidence(diff: dict) -> dict:
    """``compare_shapes``' lists as a finding's evidence: the first :data:`EVIDENCE_NAMES` of each, and each list's
    full count where it holds more (61 missing had read as the 50 listed)."""
    evidence = {k: v[:EVIDENCE_NAMES] for k, v in diff.items()}
    evidence.update({f"{k}_count": len(v) for k, v in diff.items() if len(v) > EVIDENCE_NAMES})
    return evidence


@register_detector("architecture_drift")
class ArchitectureDrift(Detector):
    name = "architecture_drift"
    rules = (
        Rule(
            "FG701", "architecture-drift",
            "Keys or shapes differ from the architecture the client expects.",
            "Inserted layers (imprint blocks, oversized FC layers) and resized layers change the "
            "state_dict's keys or shapes. Train only on the architecture you agreed to: ask the server "
            "why the model changed.",
            "Fowl et al., Robbing the Fed, ICLR 2022; Boenisch et al., EuroS&P 2023",
            url="https://arxiv.org/abs/2110.13057",
        ),
    )

    needs = frozenset({NEEDS_MODULE})

    def run(self, context: InspectContext):
        module = context.view.module
        received, expected_shapes = folded_shapes(context.view.tensors), folded_shapes(module.state_dict())
        diff = compare_shapes(received, expected_shapes)
        if any(diff.values()):
            expected = [k for k in module.state_dict() if not is_running_stat(k)]
            disjoint = bool(expected) and len(diff["missing"]) == len(expected)  # not one layer name in common
            prefix = wrapping_prefix(received, expected_shapes) if disjoint else None
            # (a file holding nothing else is read under --arch's names before any detector runs: unwrapped)
            added = {} if prefix is None else {k: v for k, v in received.items() if not _under(k, prefix, expected_shapes)}
            again = wrapping_prefix(added, expected_shapes)
            wrapped = {"wrapped_under": prefix} if added else {}
            if added and again is not None and all(_under(k, again, expected_shapes) for k in added):
                check = (f" Every layer of --arch is in the file twice, under '{prefix}' and under '{again}' (as a "
                         "training checkpoint keeps an averaged copy): inspect the weights you will train, saved alone.")  # fmt: skip
            elif added:
                shown = ", ".join(list(added)[:SHOWN]) + (f" (+{len(added) - SHOWN} more)" if len(added) > SHOWN else "")
                check = (f" Every layer of --arch is in the file under '{prefix}' in its shape, beside {len(added)} "
                         f"tensor{'s' if len(added) != 1 else ''} of layers it does not have ({shown}): the model wraps "
                         "your architecture and adds layers to it.")  # fmt: skip
            else:
                check = (" Not one layer of the model is named as in --arch: if --arch is not the architecture you "
                         "train (or build it wrapped differently), fix --arch first." if disjoint else "")  # fmt: skip
            yield self.finding(
                "FG701", "Model does not match the expected architecture", Severity.HIGH, Confidence.HIGH, None,
                f"Compared with --arch: {shape_summary(diff)}.{check} Do not train on a model whose structure "
                "changed; ask the server why.",
                **shape_evidence(diff), **wrapped,
            )


@register_detector("reference_drift")
class ReferenceDrift(Detector):
    name = "reference_drift"
    needs = frozenset({NEEDS_REFERENCE})
    rules = (
        Rule(
            "FG702", "round-to-round-drift",
            "The model's structure or a layer's weights changed between rounds in a way training does not.",
            "Between two rounds the architecture stays fixed and each layer moves a little along its "
            "previous weights. New or resized layers, or a layer whose weights were replaced wholesale "
            "or magnified along their own direction, mean the server planted parameters. Compare the two "
            "models and ask the server why.",
            "Fowl et al., ICLR 2022; Wang et al., WACV 2024; Garov et al., ICLR 2024",
            url="https://arxiv.org/abs/2110.13057",
        ),
    )

    def run(self, context: InspectContext):
        diff = compare_shapes(folded_shapes(context.view.tensors), folded_shapes(context.reference.tensors))
        if any(diff.values()):
            yield self.finding(
                "FG702", "Structure changed since the previous round", Severity.HIGH, Confidence.HIGH, None,
                f"Compared with --reference: {shape_summary(diff)}. The architecture of a federation does not change "
                "between rounds; ask the server why.",
                **shape_evidence(diff),
            )
        moves = []  # (layer, cosine to last round, change relative to last round's norm)
        previous = {layer.name: layer for layer in context.reference.weight_layers()}
        for layer in context.view.weight_layers():
            last = previous.get(layer.name)
            if last is None or last.weight.shape != layer.weight.shape:
                continue
            now, then = layer.weight_f32().flatten(), last.weight_f32().flatten()
            if not (finite(now) and finite(then)):
                continue
            scale = max(float(layer.stats.peak.max()), float(last.stats.peak.max()))  # largest |w|, from the row stats
            if scale >= FLOAT32_SAFE:  # squares of a server's 1e37 weights overflow; every figure below is scale-free
                now, then = now / scale, then / scale
            if float(then.norm()) == 0:
                continue
            cosine = float(torch.nn.functional.cosine_similarity(now, then, dim=0))
            moves.append((layer, cosine, float((now - then).norm() / then.norm()), float(now.norm() / then.norm())))
        for layer, cosine, change, growth in moves:
            rescaled = cosine >= RESCALED_COSINE and growth >= RESCALED_GROWTH
            if not rescaled and (cosine >= REPLACED_COSINE or change <= REPLACED_CHANGE):
                continue
            others = [c for other, c, _, _ in moves if other is not layer]
            rest = float(torch.tensor(others).median()) if others else None  # one weight layer: nothing to compare
            evidence = {"cosine_to_previous": rounded(cosine), "relative_change": rounded(change), "norm_growth": rounded(growth)}
            if rest is not None:
                evidence["others_median_cosine"] = rounded(rest)
            if rest is not None and rest >= TRAINED_COSINE and rescaled:
                yield self.finding(
                    "FG702", "Layer rescaled since the previous round", Severity.HIGH, Confidence.MEDIUM, layer.name,
                    f"{layer.name}'s weights kept their direction (cosine {cosine:.2f} to last round's) but grew "
                    f"{growth:.1f}-fold while the other layers trained as usual (median cosine {rest:.2f}): training "
                    "does not do that; magnified weights magnify what the update says of single examples. "
                    "Ask the server why before training on it.",
                    **evidence,
                )
            elif rest is not None and rest >= TRAINED_COSINE:
                yield self.finding(
                    "FG702", "Layer replaced since the previous round", Severity.HIGH, Confidence.MEDIUM, layer.name,
                    f"{layer.name}'s weights have cosine {cosine:.2f} to last round's and moved by {change:.0%} of their "
                    f"norm while the other layers kept cosine {rest:.2f}: they were replaced, not trained. "
                    "Ask the server why before training on it.",
                    **evidence,
                )
            else:
                title, context, swapped = (
                    ("Layer moved far with the rest of the model",
                     f"the other layers moved far too (median cosine {rest:.2f})", "every layer swapped")
                    if rest is not None else
                    ("Layer moved far, nothing to compare it with",
                     "the model has no other weight layer to show whether the round trained as usual", "a swapped layer")
                )  # fmt: skip
                yield self.finding(
                    "FG702", title, Severity.LOW, Confidence.LOW, layer.name,
                    f"{layer.name}'s weights have cosine {cosine:.2f} to last round's and moved by {change:.0%} of their "
                    f"norm, and {context}: an aggressive round of training or {swapped}; the other checks look for "
                    "planted structure.",
                    **evidence,
                )
