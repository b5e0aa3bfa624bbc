"""``fedguard inspect``: load a received model safely, run every detector, judge it.

The Python entry point is :func:`inspect_model`; the CLI is a thin layer on top.

Example
-------
>>> from fedguard.inspect import inspect_model                    # doctest: +SKIP
>>> report = inspect_model("global.pt", arch="lenet5")            # doctest: +SKIP
>>> report.verdict, [f.rule_id for f in report.findings]          # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

import fedguard
from fedguard import checks
from fedguard.architectures import (
    ARCHITECTURES, arch_name, build_model, builds_any_class_count, check_input_shape, classifier_logits, resolve_input_shape,
)
from fedguard.checks import is_whole
from fedguard.data import data_sha256, in_memory_batch, load_data, refuse_flat
from fedguard.detectors import DETECTORS, all_rules, detector_of, gradient_snr
from fedguard.detectors.base import NEED_FLAGS, NEEDS_DATA, NEEDS_MODULE, NEEDS_REFERENCE, InspectContext
from fedguard.detectors.drift import compare_shapes, folded_shapes, reshaped_names, shape_summary
from fedguard.errors import InputError, did_you_mean, first_line, keyword_names, kind_of
from fedguard.layers import find_head
from fedguard.loading import CODE_IMPORT_RULE, LoadedModel, is_running_stat, load_model_file, name_in_order
from fedguard.modelview import EMBEDDING, ModelView, effective_tensors, first_non_finite
from fedguard.suppressions import Ignore, parse_ignores, split_findings
from fedguard.torch_state import kept_modes, own_torch_state
from fedguard.types import Confidence, Finding, InspectionReport, Rule, Severity, Verdict

__all__ = ["inspect_model", "judge", "rules", "run_detectors"]


def judge(findings: Iterable[Finding]) -> Verdict:
    """Malicious: a high/critical finding of at least medium confidence. Suspicious: any medium+."""
    findings = list(findings)
    if any(f.severity >= Severity.HIGH and f.confidence >= Confidence.MEDIUM for f in findings):
        return Verdict.MALICIOUS
    if any(f.severity >= Severity.MEDIUM for f in findings):
        return Verdict.SUSPICIOUS
    return Verdict.CLEAN


def rules() -> dict[str, Rule]:
    """Every rule fedguard can report, by id."""
    return {CODE_IMPORT_RULE.rule_id: CODE_IMPORT_RULE, **all_rules()}


def build_expected_module(
    arch: str, tensors: Mapping[str, torch.Tensor], num_classes: int | None, input_shape=None, named: bool = True
) -> nn.Module:
    """The ``--arch`` module, with the class count read off the received head when not given.

    The head is the Linear layer whose output is the logits, found by running the module (the last Linear declared
    may be a hidden one: reading the class count off it had called an unchanged model drifted); without an input
    shape to run it on, the last Linear declared with the 10 outputs it was built for. When the tensors do not name
    that layer, the one name ending in it (behind a wrapper's prefix) is the head; in an unnamed (Flower) list, or
    where no one name ends in it, the last 2-D tensor. Of that count, the module's own 10 and the first sizes of the
    tensors a 10-class module misfits, the one whose module fits the received tensors best is built.
    """
    module = build_model(arch, num_classes=num_classes, input_shape=input_shape)
    if num_classes is None:
        received = None
        if named:
            try:
                head = find_head(module, resolve_input_shape(arch, input_shape), torch.device("cpu"), 10)
                weight = head.weight if head is not None else None
            except Exception:  # no input shape to run it on (or a forward that refuses two zero images): the last
                # Linear declared with the 10 outputs it was built for
                heads = [name for name, sub in module.named_modules() if isinstance(sub, nn.Linear) and sub.out_features == 10]
                weight = f"{heads[-1]}.weight".lstrip(".") if heads else None
            received = tensors.get(weight) if weight is not None else None
            if received is None and weight is not None:  # behind a wrapper's prefix (``model.fc.weight``); the last
                # 2-D tensor would be any layer the file lists after the head, an added block's
                under = [t for k, t in tensors.items() if k.endswith(f".{weight}")]
                received = under[0] if len(under) == 1 else None
        if received is None:
            received = next((t for t in reversed(list(tensors.values())) if t.ndim == 2), None)
        if received is not None and received.ndim == 2 and received.shape[0] != 10 and builds_any_class_count(arch):
            # a head that is no Linear (a cosine classifier's bare weight) leaves the last Linear, a hidden one, to be
            # read: its width is no class count. The first sizes of the tensors the 10-class module misfits are tried
            # too, and the count that fits the file best is kept (the one read off the head on a tie).
            shapes = {k: t.shape for k, t in tensors.items()}
            misfits = reshaped_names(shapes, {k: v.shape for k, v in module.state_dict().items()})
            counts = [int(received.shape[0])] + [int(shapes[k][0]) for k in misfits if len(shapes[k])]
            best, fewest, said = module, len(misfits), []
            for count in dict.fromkeys(c for c in counts if c not in (0, 10)):
                with warnings.catch_warnings(record=True) as heard:  # a count tried and not kept says nothing: two
                    warnings.simplefilter("always")  # heads of 5 built for 5 classes had warned of a Linear of 0 outputs
                    rebuilt = build_model(arch, num_classes=count, input_shape=input_shape)
                left = len(reshaped_names(shapes, {k: v.shape for k, v in rebuilt.state_dict().items()}))
                if left < fewest or (left == fewest and best is module and count == counts[0]):
                    best, fewest, said = rebuilt, left, heard
            for warning in said:
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
            module = best
    return module


def name_by_architecture(loaded: LoadedModel, module: nn.Module) -> Mapping[str, torch.Tensor]:
    """Give an unnamed (Flower-style) list the architecture's names when it lines up exactly. A list of
    ``module.parameters()``, which holds tied weights (an embedding shared with the head) once, lines up too: each
    tied name gets the tensor of the name it shares (the list had been read as drift, FG701 high)."""
    state = module.state_dict()
    named = names_from(state, loaded.tensors)
    tied = _tied_names(module)
    if named is not loaded.tensors or not tied:
        return named
    named = names_from({k: v for k, v in state.items() if k not in tied}, loaded.tensors)
    if named is loaded.tensors:
        return named
    return {k: named[tied.get(k, k)] for k in state if tied.get(k, k) in named}


def unwrapped(tensors: Mapping[str, torch.Tensor], module: nn.Module) -> Mapping[str, torch.Tensor]:
    """``tensors`` without the prefix every one of its names has where the rest of each is ``module``'s own name, every
    one of them but running statistics: the attribute a wrapper holds the network under (a Lightning checkpoint's
    ``model.``, ``net.``). A Lightning checkpoint of the architecture given had been FG701, malicious, every key
    'missing'."""
    names = list(tensors)
    expected = set(module.state_dict())
    if not names or set(names) <= expected:
        return tensors
    head = os.path.commonprefix(names)
    for cut in (i + 1 for i in range(len(head) - 1, -1, -1) if head[i] == "."):
        stripped = {name[cut:] for name in names}  # running statistics a file leaves out are kept as built, as ever
        if stripped <= expected and all(is_running_stat(name) for name in expected - stripped):
            return {name[cut:]: value for name, value in tensors.items()}
    return tensors


def _tied_names(module: nn.Module) -> dict[str, str]:
    """Each ``state_dict`` name whose tensor is one listed before it, mapped to that first name."""
    first: dict[int, str] = {}
    tied = {}
    for name, value in module.state_dict(keep_vars=True).items():
        tied_to = first.setdefault(id(value), name)
        if tied_to != name:
            tied[name] = tied_to
    return tied


def names_from(named: Mapping[str, torch.Tensor], values: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """``values`` under ``named``'s names when they line up layer by layer (:func:`~fedguard.loading.name_in_order`);
    else ``values`` unchanged."""
    return name_in_order({k: v.shape for k, v in named.items()}, list(values.values())) or values


#: Input sides at which FG701 tries ``--arch`` again when the file has its layers in other shapes and no
#: ``--input-shape`` was given: a built-in's stem (ResNet-18's 3x3 up to 64x64, torchvision's 7x7 above) and the
#: Linear layer after a flatten follow the input's size. An honest torchvision ResNet-18 had read malicious against
#: ``--arch resnet18`` at its default 3,32,32, with nothing to say that 3,224,224 fits it.
HINT_SIDES = (224, 32, 28)


def fits(tensors: Mapping[str, torch.Tensor], module: nn.Module) -> bool:
    """Whether ``tensors`` hold every layer of ``module`` in its shape and nothing else (running statistics may be
    missing; pruned and weight-normalised layouts as the weights they fold into)."""
    return not any(compare_shapes(folded_shapes(tensors), folded_shapes(module.state_dict())).values())


def fitting_input_shape(arch: str, tensors: Mapping[str, torch.Tensor], num_classes: int | None,
                        named: bool = True) -> tuple[int, int, int] | None:  # fmt: skip
    """Another input shape at which ``arch`` has every layer of ``tensors`` in its shape (one of :data:`HINT_SIDES`,
    channels as the file's first filter reads them), or None (also for an architecture with no default input shape)."""
    try:
        default = tuple(resolve_input_shape(arch))
    except InputError:  # a callable without one: FG701 stands as it is (the hint had turned it into an input error)
        return None
    filters = [t for t in tensors.values() if isinstance(t, torch.Tensor) and t.ndim == 4]
    channels = int(filters[0].shape[1]) if filters else default[0]
    for shape in ((channels, side, side) for side in HINT_SIDES):
        if shape == default:
            continue
        try:
            module = build_expected_module(arch, tensors, num_classes, shape, named=named)
        except Exception:  # the architecture does not build at that size: no hint from it
            continue
        if fits(tensors, module):
            return shape
    return None


def input_shape_hint(arch: str, shape: tuple[int, int, int]) -> str:
    """What to tell a user whose file fits ``arch`` at ``shape`` (:func:`fitting_input_shape`)."""
    text, default = ",".join(map(str, shape)), ",".join(map(str, resolve_input_shape(arch)))
    return (f"the file fits --arch {arch} --input-shape {text} exactly (its default is {default}): if your federation "
            f"trains at that size, pass --input-shape {text}")


def fitting_architectures(arch: str, tensors: Mapping[str, torch.Tensor], num_classes: int | None,
                          input_shape: Sequence[int] | None = None, named: bool = True) -> list[str]:  # fmt: skip
    """The other built-in architectures that have every layer of ``tensors`` in its shape (at ``input_shape``, else
    their own), read as ``--arch`` would read the file (an unnamed list lined up, a wrapper's prefix dropped).

    ``lenet`` (DLG's 3x32x32 sigmoid net) and ``lenet5`` (LeCun's 1x28x28) are easily confused: an honest LeNet-5
    inspected with ``--arch lenet`` read as a server's drift, with nothing to say which architecture the file is.
    Each candidate's names come from a build on the meta device (no memory, about 0.2 s for all of them); only one
    whose names are the file's is built to compare shapes, so a file crafted to resemble many costs no more."""
    def layer_names(named_tensors: Mapping[str, torch.Tensor]) -> set[str]:
        return {k for k in folded_shapes(named_tensors) if not is_running_stat(k)}

    as_received = layer_names(tensors)
    found = []
    for name in ARCHITECTURES.names():
        if name == arch:
            continue
        try:
            with torch.device("meta"):
                sketch = build_model(name, num_classes=num_classes, input_shape=input_shape)
        except Exception:  # cannot be built for this class count or input shape: not the file's architecture
            continue
        mine = unwrapped(tensors if named else names_from(sketch.state_dict(), tensors), sketch)
        if (as_received if mine is tensors else layer_names(mine)) != {k for k in sketch.state_dict() if not is_running_stat(k)}:
            continue
        try:
            module = build_expected_module(name, mine, num_classes, input_shape, named=named)
        except Exception:
            continue
        if fits(mine, module):
            found.append(name)
    return found


def drift_hint(arch: str, module: nn.Module, tensors: Mapping[str, torch.Tensor], num_classes: int | None,
               input_shape: Sequence[int] | None, named: bool = True) -> str | None:  # fmt: skip
    """What the file fits where ``module``, the ``arch`` built for it, does not: ``arch`` at another input shape when
    none was given and the names are ``arch``'s (:func:`fitting_input_shape`), else other built-in architectures
    (:func:`fitting_architectures`); None where there is no such file or ``module`` fits (a file refused for something
    else, NaN, is no misfit)."""
    diff = compare_shapes(folded_shapes(tensors), folded_shapes(module.state_dict()))
    if not any(diff.values()):
        return None
    shape = fitting_input_shape(arch, tensors, num_classes, named) if input_shape is None and not (diff["missing"] or diff["unexpected"]) else None
    if shape is not None:
        return input_shape_hint(arch, shape)
    others = fitting_architectures(arch, tensors, num_classes, input_shape, named)
    if not others:
        return None
    listed = " and ".join(f"--arch {name} ({ARCHITECTURES.get(name).description})" for name in others)
    if len(others) == 1:
        return f"the file fits {listed} exactly: if that is the architecture you train, pass --arch {others[0]}"
    return (f"the file fits {listed} exactly, whose layers have the same shapes: if one of them is the architecture "
            "you train, pass it")


def _with_drift_hint(findings: list[Finding], arch: str, module: nn.Module, tensors: Mapping[str, torch.Tensor],
                     num_classes: int | None, input_shape: Sequence[int] | None, named: bool) -> list[Finding]:  # fmt: skip
    """``findings`` with FG701's message ending in :func:`drift_hint`'s sentence (not where FG701 found the file
    wrapping ``arch`` beside added layers: it says so)."""
    drift = next((f for f in findings if f.rule_id == "FG701"), None)
    if drift is None or "wrapped_under" in drift.evidence:
        return findings
    hint = drift_hint(arch, module, tensors, num_classes, input_shape, named)
    if hint is None:
        return findings
    return [dataclasses.replace(f, message=f"{f.message} {hint[0].upper()}{hint[1:]}.") if f is drift else f
            for f in findings]  # fmt: skip


def load_into(module: nn.Module, tensors: Mapping[str, torch.Tensor]) -> bool:
    """Copy the received weights into ``module``; False when they do not fit it. Running statistics the file
    leaves out (:data:`~fedguard.loading.RUNNING_STATS`) keep the module's own, as a client's model would. Layers
    stored reparametrised (pruning's ``weight_orig`` and ``weight_mask``, weight normalisation) go in as the weights
    they compute with (:func:`~fedguard.modelview.effective_tensors`): saved so, a model had skipped every behavioural
    check, clean."""
    folded = {name: tensor for name, (tensor, _) in effective_tensors(tensors).items()}
    return _loaded(module, tensors) or (folded.keys() != tensors.keys() and _loaded(module, folded))


def _loaded(module: nn.Module, tensors: Mapping[str, torch.Tensor]) -> bool:
    try:
        missing, unexpected = module.load_state_dict(
            {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in tensors.items()}, strict=False
        )
    except (RuntimeError, KeyError):
        return False
    return not unexpected and all(is_running_stat(k) for k in missing)


@keyword_names(aliases={"--detector": "detectors"})
def inspect_model(
    path: str | Path,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
    reference: str | Path | None = None,
    data: str | os.PathLike | tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray] | None = None,
    detectors: Sequence[str] | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    ignore: Sequence[str] | None = None,
) -> InspectionReport:
    """Inspect one received model file.

    Parameters
    ----------
    path : path
        The global model as received (.pt/.pth/.bin/.ckpt/.tar, .safetensors, .npz).
    arch : str or callable, optional
        Expected architecture: a built-in name, ``module:callable``, or the class or
        function itself (defined at the top level of a module). Enables the
        architecture-drift check and, with ``data``, the behavioural checks.
    num_classes, input_shape : optional
        Passed to the architecture; the class count defaults to the received head's.
    reference : path, optional
        Last round's global model, for round-to-round drift.
    data : str, path or (inputs, labels), optional
        The client's own data (``digits``, ``images``, a folder or an ``.npz``;
        or tensors or numpy arrays) for the behavioural checks.
    detectors : list of str, optional
        Registry names to run; default all.
    seed : int
        Seeds the data subset and anything random in the detectors.
    progress : callable, optional
        Called with each step as it starts (``"reading global.pt"``, ``"gradient_snr (7 of 14)"``); the command
        line shows it on a terminal (the behavioural checks of a large model take minutes).
    ignore : list of str, optional
        Findings to accept, as ``RULE`` or ``RULE:LAYER`` (``["FG301:features.0"]``): reported apart in
        :attr:`~fedguard.types.InspectionReport.suppressed`, not judged (:mod:`fedguard.suppressions`).

    Returns
    -------
    InspectionReport

    Raises
    ------
    fedguard.errors.InputError
        For unreadable files, bad arguments, unknown architectures or data that does not fit.
    """
    start = time.perf_counter()
    for value, option in ((path, "path"), (reference, "reference")):
        if value is not None and not isinstance(value, (str, os.PathLike)) or (option == "path" and value is None):
            if isinstance(value, (nn.Module, Mapping)):  # inspect reads files as received, never live objects
                raise InputError(f"{option} is {kind_of(value)}, not a file; save it with "
                                 f"torch.save(model.state_dict(), path) and pass that path")  # fmt: skip
            raise InputError(f"{option} is {checks.shown(value)}; pass the model file's path as a str or pathlib.Path")
    arch = arch_name(arch)
    if arch is not None and (not isinstance(arch, str) or not arch.strip()):
        raise InputError(f"arch is {arch!r:.40}; pass an architecture name such as 'lenet5', a class or function that "
                         "builds the model, or None")
    if num_classes is not None and (not is_whole(num_classes) or num_classes < 1):
        raise InputError(f"bad --num-classes {num_classes!r}; give a whole number of classes, 1 or more")
    for flag, value in (("--num-classes", num_classes), ("--input-shape", input_shape)):
        if arch is None and value is not None:  # the command line refuses them too: they would do nothing
            raise InputError(f"{flag} describes --arch, which is not given; add --arch, or drop {flag}")
    checks.seed(seed)
    _check_progress(progress)
    ignores = parse_ignores(ignore, rules())
    names = _detector_names(detectors)
    if detectors:  # a detector asked for by name must be able to run
        given = {NEEDS_MODULE: arch is not None, NEEDS_DATA: data is not None, NEEDS_REFERENCE: reference is not None}
        for name in names:  # a check of the data runs it through --arch: it needs both, and only the one not given is named
            needs = DETECTORS.get(name).needs | ({NEEDS_MODULE} if NEEDS_DATA in DETECTORS.get(name).needs else set())
            missing = [NEED_FLAGS[need] for need in NEED_FLAGS if need in needs and not given[need]]
            if missing:
                add = "it" if len(missing) == 1 else "them"
                raise InputError(f"detector {name} needs {' and '.join(missing)}; pass {add} or leave {name} out of --detector")
    # architectures' initialisation seeded, the caller's generators and default dtype kept; the behavioural checks
    # take gradients, also inside the caller's no_grad or inference_mode
    with own_torch_state(seed):
        config = {
            "num_classes": num_classes,
            "input_shape": list(check_input_shape(input_shape)) if input_shape is not None else None,
            "data": None if data is None else "in-memory" if isinstance(data, (tuple, list)) else str(data),
            "data_sha256": data_sha256(data),
            "data_examples": None,
            "data_shape": None,
            "seed": int(seed),
            "detectors_requested": names if detectors else None,
            "ignore": [str(i) for i in ignores],
            "reference_sha256": None,
            "torch": torch.__version__,
        }
        if progress is not None:
            progress(f"reading {path}")
        loaded = load_model_file(path)
        if loaded.refused:
            return _report(loaded, loaded.findings, (), start, arch, reference, config, ignores=ignores)

        module = None
        tensors = loaded.tensors
        if arch:
            module = build_expected_module(arch, tensors, num_classes, input_shape, named=loaded.named)
            if not loaded.named:
                tensors = name_by_architecture(loaded, module)
            tensors = unwrapped(tensors, module)
        ref_view = None
        if reference is not None:
            ref_loaded = load_model_file(reference)
            config["reference_sha256"] = ref_loaded.sha256
            if ref_loaded.refused:
                raise InputError(f"reference {reference} would execute code when loaded; it cannot serve as a reference; "
                                 "pass last round's model as a weights-only .pt, a .safetensors or an .npz")  # fmt: skip
            ref_tensors = ref_loaded.tensors if module is None else unwrapped(ref_loaded.tensors, module)
            if not ref_loaded.named:  # a Flower list: the names MODEL has (its own or the architecture's)
                ref_tensors = names_from(tensors, ref_tensors)
            elif not loaded.named and module is None:
                tensors = names_from(ref_tensors, tensors)
            if module is not None:
                # the model fits --arch and the reference's names do not: the file passed is wrong. A layer resized
                # since is FG702's: --arch reads the head off the received model, whatever its size.
                expected = folded_shapes(module.state_dict())
                misfit = compare_shapes(folded_shapes(ref_tensors), expected)
                names_misfit = misfit["missing"] or misfit["unexpected"]
                if names_misfit and fits(tensors, module):
                    raise InputError(f"reference {reference} does not fit --arch {arch} ({shape_summary(misfit)}) while "
                                     "the model does; pass last round's model of this architecture")  # fmt: skip
            spoilt = first_non_finite(ref_tensors)
            if spoilt is not None:  # FG702 could not compare that layer, and a replaced one would pass
                raise InputError(f"reference {reference} holds NaN or infinite values in {spoilt}; "
                                 "pass last round's model as you received it")  # fmt: skip
            ref_view = ModelView.from_state_dict(ref_tensors)
        batch = _client_batch(data, arch, module, input_shape, seed) if data is not None else None
        if batch is not None and not load_into(module, tensors):
            batch = None  # the weights do not fit --arch; FG701 says how, behavioural checks cannot run
        config["data_examples"] = len(batch[1]) if batch is not None else None  # what the behavioural checks ran on
        config["data_shape"] = list(batch[0].shape[1:]) if batch is not None else None  # and as what (fitted to --arch)
        view = ModelView.from_state_dict(tensors, module)
        fresh = None if module is None else functools.partial(  # the module as built, before the received weights
            build_expected_module, arch, loaded.tensors, num_classes, input_shape, named=loaded.named)
        context = InspectContext(view=view, reference=ref_view, data=batch, fresh=fresh)

        findings, ran = run_detectors(context, names, progress)
        if arch:
            findings = _with_drift_hint(findings, arch, module, tensors, num_classes, input_shape, loaded.named)
        findings = list(loaded.findings) + findings
        if not findings and not view.weight_layers():  # clean would claim checks that had nothing to look at
            from fedguard.reports.base import plural

            count = sum(t.numel() for t in tensors.values() if isinstance(t, torch.Tensor))
            whole = sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()
                            if isinstance(t, torch.Tensor) and t.ndim >= 2 and not t.is_floating_point()})
            tables = [layer.name for layer in view.layers if layer.kind == EMBEDDING]
            if whole:
                fix = f"its matrices are {' and '.join(whole)}, not floating point: save the float model"
            elif tables:  # a model of lookup tables alone (matrix factorisation): nothing a check reads as a layer
                named = ", ".join(tables[:3]) + (", ..." if len(tables) > 3 else "")
                fix = (f"--arch makes its matrices embedding tables ({named}), which no check reads; leave out --arch "
                       "to read every matrix as a Linear layer")  # fmt: skip
            else:
                fix = "pass the global model's state_dict or its Flower list of arrays"
            raise InputError(f"{path} holds no weight matrix or filter to check ({plural(len(tensors), 'tensor')}, "
                             f"{plural(count, 'value')}); {fix}")  # fmt: skip
        return _report(loaded, findings, ran, start, arch, reference, config, view, ignores)


def run_detectors(
    context: InspectContext, names: Sequence[str] | None = None, progress: Callable[[str], None] | None = None
) -> tuple[list[Finding], list[str]]:
    """Run the named detectors (default all) whose needs ``context`` meets.

    Returns the findings and the names of the detectors that ran. This is the
    in-memory core of :func:`inspect_model`, for callers that already hold a
    state_dict (a Flower client, a test). An unknown name is an InputError.
    ``progress`` is called with each detector as it starts (``"gradient_snr (7 of 14)"``).
    """
    if not isinstance(context, InspectContext):
        raise InputError(f"context is {kind_of(context)}; pass an InspectContext")
    for view, what in ((context.view, "view"), (context.reference, "reference")):
        if not isinstance(view, ModelView) and (view is not None or what == "view"):
            given = "None" if view is None else kind_of(view)
            raise InputError(f"context.{what} is {given}; pass ModelView.from_state_dict(state_dict, module)")
    _check_progress(progress)
    module = context.view.module
    findings: list[Finding] = []
    ran = []
    # behavioural checks run the model in eval mode: each submodule's own mode back afterwards
    with kept_modes(module) if module is not None else contextlib.nullcontext():
        if context.data is not None and module is not None:
            context = dataclasses.replace(context, data=_checked_batch(context.data, module))
        with own_torch_state():  # gradients on, float32, the caller's generators kept (as inspect_model runs it)
            detectors = [DETECTORS.get(name)() for name in _detector_names(names)]
            detectors = [d for d in detectors if all(context.has(need) for need in d.needs)]
            try:
                for i, detector in enumerate(detectors, 1):
                    if progress is not None:
                        progress(f"{detector.name} ({i} of {len(detectors)})")
                    findings.extend(_run_detector(detector, context))
                    ran.append(detector.name)
            finally:  # what the detectors shared holds for these weights now: a caller may change them in place
                for view in (context.view, context.reference):
                    for layer in view.layers if view is not None else ():
                        layer.shared.clear()
    return findings, ran


class ModelCodeRaised(InputError):
    """The model's own code raised in the behavioural check ``check``; ``cause`` is what it raised, in one line."""

    def __init__(self, message: str, check: str, cause: str):
        super().__init__(message)
        self.check, self.cause = check, cause


def _run_detector(detector, context: InspectContext) -> list[Finding]:
    """``detector``'s findings; the model's own code raising in a behavioural check is one InputError
    (:class:`ModelCodeRaised`)."""
    try:
        return list(detector.run(context))
    except InputError:
        raise
    except Exception as exc:
        if not detector.needs & {NEEDS_MODULE, NEEDS_DATA}:
            raise  # a static check reads tensors only: its failure is fedguard's own, not the model's code
        given = NEED_FLAGS[NEEDS_DATA if NEEDS_DATA in detector.needs else NEEDS_MODULE]
        raise ModelCodeRaised(
            f"the {detector.name} check runs the model, which raised {first_line(exc)}; "
            f"fix the architecture's code, or drop {given} to run the checks that do not need it",
            detector.name, first_line(exc),
        ) from None


def _check_progress(progress) -> None:
    if progress is not None and not callable(progress):
        raise InputError(f"progress is {checks.shown(progress)}; pass a function that takes the step's text, or None")


def _refuse_a_rule(name: str) -> None:
    """InputError naming the detector of the rule ``name`` (its id or its name) where a detector's name belongs."""
    by_name = {rule.name: rule_id for rule_id, rule in rules().items()}
    rule_id = name.strip().upper() if name.strip().upper() in rules() else by_name.get(name.strip().lower())
    if rule_id == CODE_IMPORT_RULE.rule_id:
        raise InputError(f"{name} is checked on every file while loading, by no detector; drop it (it always runs)")
    if rule_id is not None:
        raise InputError(f"{name} is a rule, not a detector; the {detector_of()[rule_id]} detector reports it "
                         "(`fedguard rules` names each rule's detector)")


def _detector_names(names: Sequence[str] | None) -> list[str]:
    """Every detector when ``names`` is None or empty, else the names given, each once; InputError for a name that is
    not a detector (or a bare string where a list belongs)."""
    if names is not None and (isinstance(names, (str, bytes)) or not isinstance(names, Sequence)):
        raise InputError(f"detectors is {names!r:.40}; pass a list of detector names such as ['imprint'], or None")
    for name in names or ():
        if not isinstance(name, str) or name not in DETECTORS:
            if isinstance(name, str):
                _refuse_a_rule(name)
            raise InputError(f"unknown detector {name!r:.40}{did_you_mean(name, DETECTORS.names())}; valid: {', '.join(DETECTORS.names())}")
    return list(dict.fromkeys(names)) if names else DETECTORS.names()  # a detector named twice runs once


def _client_batch(data, arch, module, input_shape, seed):
    if arch is None:
        raise InputError("--data needs --arch: the behavioural checks run your data through the architecture")
    if not isinstance(data, (tuple, list)):
        try:
            shape = resolve_input_shape(arch, input_shape)
        except InputError:  # no input shape: for a model of tokens, asking for C,H,W would mislead
            layers = module.modules() if module is not None else ()
            first = next((m for m in layers if isinstance(m, (nn.Embedding, nn.EmbeddingBag, nn.Linear, nn.Conv1d,
                                                               nn.Conv2d, nn.Conv3d))), None)
            if isinstance(first, (nn.Embedding, nn.EmbeddingBag)):
                raise InputError(f"--data takes images, and --arch {arch} starts with an embedding (a model of tokens "
                                 "or categories); leave out --data: the static and --arch checks still run") from None
            raise
        data = load_data(data, input_shape=shape, limit=64, seed=seed)
    inputs, labels = _checked_batch(data, module)
    refuse_flat(inputs, "--data")
    need = gradient_snr.BATCH
    if len(labels) < need:  # with 2 examples D-SNR is the ratio of two norms: honest LeNets had read as malicious
        raise InputError(
            f"--data holds {len(labels)} example{'s' if len(labels) != 1 else ''}; the behavioural checks weigh each "
            f"example against the rest of a batch of {need}, on which their thresholds were measured, and need at "
            f"least {need}; pass more of your data (or leave out --data for the static checks)"
        )
    return inputs, labels


def _checked_batch(data, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``data`` as a batch the behavioural checks can take: float ``[N, C, H, W]`` in [0, 1] (uint8 read as 0-255),
    int64 labels within the model's outputs; InputError otherwise."""
    inputs, labels = in_memory_batch(data)
    outputs = classifier_logits(module, inputs, "inspect").shape[1]
    if outputs == 1:  # the labels' range had been blamed ("pass data whose labels are 0 to 0")
        raise InputError("--data: the model has a single output (a binary classifier with a sigmoid), through which "
                         "the behavioural checks' cross-entropy sends no gradient; leave out --data for the static and "
                         "--arch checks, or inspect the classifier as two logits (nn.Linear(..., 2))")
    if int(labels.max()) >= outputs:
        raise InputError(  # not "or --num-classes": the count is the file's, and another reads as the server's drift (FG701)
            f"--data has labels up to {int(labels.max())} but the model has {outputs} outputs; pass data whose labels "
            f"are 0 to {outputs - 1}, the classes it was made for"
        )
    return inputs, labels


def _report(loaded, findings, ran, start, arch, reference, config, view: ModelView | None = None,
            ignores: Sequence[Ignore] = ()) -> InspectionReport:
    from fedguard.reports.base import sorted_findings

    findings, suppressed = split_findings(findings, ignores)
    findings = tuple(sorted_findings(findings))  # worst first, as every renderer shows them
    return InspectionReport(
        path=loaded.path,
        sha256=loaded.sha256,
        file_format=loaded.file_format,
        size_bytes=loaded.size_bytes,
        n_parameters=view.n_parameters if view else 0,
        n_layers=len(view.weight_layers()) if view else 0,
        findings=findings,
        verdict=judge(findings),
        detectors_run=tuple(ran),
        seconds=round(time.perf_counter() - start, 3),
        arch=arch,
        reference=str(reference) if reference is not None else None,
        tool_version=fedguard.__version__,
        loaded=not loaded.refused,
        config=config,
        suppressed=tuple(sorted_findings(suppressed)),
    )
