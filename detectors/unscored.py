"""FG003: weight-like tensors that no check could score.

Every weight check reads a layer's ``weight`` (and ``bias``); pruned and
weight-normalised layouts are folded back first
(:func:`fedguard.modelview.effective_tensors`), and a module holding one
kernel under another name, with at most a bias beside it (``imp.kernel``,
``imp.W``/``imp.B``, stored transposed or not), is read as a layer
(:func:`fedguard.modelview._read_renamed_layers`; an info finding names them,
since their rows may be the stored columns). A tensor of two or more
dimensions that is still no layer (several kernels in one module, a
recurrent layer's ``weight_hh_l0``, a positional embedding, a second layout
beside a layer's own ``weight``) was not checked, so a server could hide an
imprint or fishing layer that way. With no layer recognised at all, nothing
was checked and the model must not pass as clean (medium); unrecognised
tensors beside recognised layers are reported at low severity (honest
models have them too: recurrent ``weight_hh_l0``, positional embeddings,
stacked experts; a medium tier for those called several honest families
suspicious, docs/detectors.md). ``--arch`` compares every
key with the architecture you expect (FG701); an architecture that itself
keeps its weights as bare parameters is told so, since ``--arch`` cannot help.
"""

from __future__ import annotations

from fedguard.detectors.base import Detector, InspectContext, register_detector
from fedguard.modelview import CONV, EMBEDDING, LINEAR, NORM
from fedguard.types import Confidence, Rule, Severity

#: Layer kinds whose tensors the checks read.
SCORED_KINDS = (LINEAR, CONV, EMBEDDING, NORM)
#: Names listed in the evidence.
SHOWN = 8


@register_detector("unscored")
class Unscored(Detector):
    name = "unscored"
    rules = (
        Rule(
            "FG003", "unscored-tensors",
            "Weight-like tensors under names no check recognises, so they were not checked.",
            "The checks read layers saved as torch names them (...weight, ...bias). Ask the server for a plain "
            "state_dict of the model, or inspect with --arch to compare every key with the architecture you expect.",
            "PyTorch state_dict conventions; Fowl et al., Robbing the Fed, ICLR 2022 (a layer hidden from a check leaks as well)",
            url="https://arxiv.org/abs/2110.13057",
        ),
    )

    def run(self, context: InspectContext):
        view = context.view
        renamed = [layer for layer in view.layers if layer.renamed]
        if renamed:
            read = {layer.name: ", ".join(layer.key(leaf) for leaf in ("weight", "bias") if leaf in layer.tensors)
                    + (" (stored input-major: rows are the stored columns)" if layer.renamed == "transposed" else "")
                    for layer in renamed}  # fmt: skip
            yield self.finding(
                "FG003", "Layers under other names, read as layers", Severity.INFO, Confidence.MEDIUM, None,
                f"{len(read)} layer(s) saved under names other than torch's were read as layers and checked: "
                + "; ".join(f"{name} from {keys}" for name, keys in list(read.items())[:SHOWN])
                + (f"; and {len(read) - SHOWN} more" if len(read) > SHOWN else "") + ".",
                read_as_layers=read,
            )  # fmt: skip
        unscored = [
            layer.key(leaf)
            for layer in view.layers
            for leaf, tensor in layer.tensors.items()
            if tensor.is_floating_point() and tensor.ndim >= 2 and not _read_by_checks(layer.kind, leaf)
        ]
        if not unscored:
            return
        shown = ", ".join(unscored[:SHOWN]) + (f" and {len(unscored) - SHOWN} more" if len(unscored) > SHOWN else "")
        if not view.weight_layers():
            own = view.module is not None and set(unscored) <= set(view.module.state_dict())
            fix = ("The architecture itself holds them as bare parameters, outside the torch layers (nn.Linear, "
                   "nn.Conv2d, ...) whose weights the checks read: build it from those layers to have it checked."
                   if own else "Ask for a plain state_dict or use --arch.")  # fmt: skip
            yield self.finding(
                "FG003", "No layer the checks recognise", Severity.MEDIUM, Confidence.MEDIUM, None,
                f"None of the {len(unscored)} weight-like tensors ({shown}) is saved as a layer's weight, so no "
                f"weight check ran on this model; do not treat it as clean. {fix}",
                tensors=unscored,
            )
        else:
            fix = ("they are keys of the architecture given with --arch, which FG701 compared"
                   if view.module is not None else "use --arch to compare every key with the architecture you expect")  # fmt: skip
            yield self.finding(
                "FG003", "Unrecognised weight-like tensors", Severity.LOW, Confidence.LOW, None,
                f"{len(unscored)} weight-like tensor(s) ({shown}) are not saved as a layer's weight and were not "
                f"checked; {fix}.",
                tensors=unscored,
            )


def _read_by_checks(kind: str, leaf: str) -> bool:
    """Whether the checks read a layer's tensor ``leaf``: every scored layer's weight, and a normalisation layer's
    element-wise bias (a LayerNorm over several dimensions keeps a bias the shape of its weight)."""
    return kind in SCORED_KINDS and leaf == "weight" or kind == NORM and leaf == "bias"
