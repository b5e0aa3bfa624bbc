"""``fedguard audit``: attack your own pending update before you upload it.

The Python entry point is :func:`audit`; the CLI (:mod:`fedguard.audit_cli`)
is a thin layer on top. Data flow::

    global model + private batch + protocol
        -> pending Update (FedSGD gradient or FedAvg weight delta)      fedguard.update
        -> ServerView (the update + what the threat model grants)        fedguard.threat
        -> attacks, label attacks first (their labels seed the others)   fedguard.attacks
        -> matched metrics vs the true batch -> leakage level, verdict   fedguard.metrics

Example
-------
>>> from fedguard.audit import audit                                              # doctest: +SKIP
>>> report = audit(arch="lenet", data="digits", batch_size=8, seed=0)            # doctest: +SKIP
>>> report.verdict, report.leakage.level, [a.psnr_max for a in report.attacks]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import inspect
import itertools
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import fedguard
from fedguard import checks
from fedguard.architectures import (
    arch_name, build_model, builds_any_class_count, check_float32, classifier_logits, resolve_input_shape,
)
from fedguard.data import data_sha256, in_memory_batch, load_data, refuse_flat
from fedguard.defenses import Defense, check_defense
from fedguard.errors import InputError, did_you_mean, first_line, first_of, keyword_names, kind_of
from fedguard.exposure import FederationSettings, client_exposure, what_ifs
from fedguard.io import missing
from fedguard.layers import find_head
from fedguard.inspect import ModelCodeRaised, rules
from fedguard.loading import is_running_stat, line_up, load_model_file, to_state_dict
from fedguard.suppressions import Ignore, parse_ignores, split_findings, unmatched
from fedguard.threat import ServerView, ThreatModel
from fedguard.torch_state import own_random_state, own_torch_state
from fedguard.types import (
    CRAFTED_UPDATE, NOT_REQUESTED, AttackOutcome, AuditReport, AuditVerdict, Finding, Leakage, LeakageLevel, Severity,
)
from fedguard.update import TrainingDiverged, Update, checked_update, compute_update, is_zero, l2_norm, load_update, resolve_device

if TYPE_CHECKING:
    from fedguard.attacks.base import Budget

__all__ = ["audit", "AuditProgress", "DEFAULT_TIME_BUDGET", "DEFAULT_BATCH_SIZE", "EXPOSURE_BUDGET"]

#: Seconds each attack may run when ``time_budget`` is not given.
DEFAULT_TIME_BUDGET = 20.0
#: Seconds the exposure analysis may take at most (less when ``time_budget`` is smaller): the
#: configured federation always runs (1-2 s at the defaults), what-ifs while time is left.
EXPOSURE_BUDGET = 5.0
DEFAULT_BATCH_SIZE = 8
#: Public examples (the client's data outside the batch) the server stand-in may use.
MAX_AUXILIARY = 512


class AuditProgress(Protocol):
    """Receives progress; the CLI draws it as one bar per attack on stderr. An exception a method raises ends the
    audit with that exception (it is not taken for the attack failing)."""

    def start(self, attack: str, total: int, seconds: float | None) -> None:
        """``attack`` starts: ``total`` iterations at most (its ``max_iterations``), ``seconds`` its time budget
        (None: none)."""

    def update(self, attack: str, done: int, total: int, fields: dict) -> None:
        """``done`` of ``total`` iterations; ``fields`` the attack's figures so far (``loss``, ``starts``, ...; may be
        empty)."""

    def finish(self, attack: str, stopped: str) -> None:
        """``attack`` ended, ``stopped`` saying why, as :attr:`~fedguard.types.AttackOutcome.stopped` does."""

    def message(self, text: str) -> None:
        """A line to show beside the bars (that Ctrl-C was heard and the partial results are being kept)."""


class _CallersProgress:
    """The caller's progress object, remembering the exceptions its methods raise: the attack loop re-raises those
    as they are, where any other exception is an attack that could not run on the model (a bug in a progress bar
    had been reported as the attack skipped, and the verdict warn)."""

    def __init__(self, progress: AuditProgress):
        self.progress = progress
        self.raised: list[BaseException] = []

    def raised_by_it(self, exc: BaseException) -> bool:
        return any(exc is seen for seen in self.raised)

    def _call(self, method: str, *args) -> None:
        try:
            getattr(self.progress, method)(*args)
        except Exception as exc:
            self.raised.append(exc)
            raise

    def start(self, attack: str, total: int, seconds: float | None) -> None:
        self._call("start", attack, total, seconds)

    def update(self, attack: str, done: int, total: int, fields: dict) -> None:
        self._call("update", attack, done, total, fields)

    def finish(self, attack: str, stopped: str) -> None:
        self._call("finish", attack, stopped)

    def message(self, text: str) -> None:
        self._call("message", text)


# --------------------------------------------------------------------------- loading


def load_weights(
    module: nn.Module, tensors: Mapping[str, torch.Tensor], path: str, arch: str, *, passed_in: bool = False
) -> None:
    """Copy ``tensors`` into ``module``; InputError naming the first layer that does not fit.

    ``path`` names the model in the messages: a file's path, ``state_dict`` or ``passed in``. A module
    ``passed_in`` from Python is compared by its parameters only (a wrapper's own buffers are no layers), and its
    messages name ``arch``, not ``--arch``."""
    if passed_in:
        expected, option = dict(module.named_parameters()), "arch"
        hint = ("pass the arch this module is built as (a package.module:callable that builds it, wrapper and all, "
                "when no built-in name is)")
    else:
        expected, option = module.state_dict(), "--arch"
        hint = "pass the --arch (and --num-classes / --input-shape) the server uses"
    for key, value in tensors.items():
        if key in expected and tuple(value.shape) != tuple(expected[key].shape):
            raise InputError(
                f"model {path} does not fit {option} {arch}: layer {key} has shape {list(value.shape)} in the model "
                f"but {list(expected[key].shape)} in the architecture; {hint}"
            )
    missing = [k for k in expected if k not in tensors and not is_running_stat(k)]  # kept as built
    unexpected = [k for k in tensors if k not in expected]
    said = ([f"it has no tensor for {first_of(missing)}"] if missing else []) + (
        [f"it has {first_of(unexpected)}, which the architecture lacks"] if unexpected else [])
    if said:  # both halves: a wrapper's extra layer ('0.mean') explains the names the architecture misses
        if unexpected and not passed_in:  # a server that added layers (imprint, LOKI) sent another architecture
            hint += (", a package.module:callable that builds the file's layers if no built-in name does; "
                     "`fedguard inspect` reports layers added to the architecture you agreed on (FG701)")
        raise InputError(f"model {path} does not fit {option} {arch}: {' and '.join(said)}; {hint}")
    state = {k: (v.to(expected[k].dtype) if v.is_floating_point() else v) for k, v in tensors.items()}
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise InputError(f"model {path}: layer {k} holds NaN or infinite values; it cannot be trained or audited: "
                             "do not train on it, and ask the server to send the model again")  # fmt: skip
    module.load_state_dict(state, strict=False)


def _left_out(cls, view) -> str:
    """Why the default attack ``cls``, which the audit was not asked for, did not run: where it does not apply to this
    update (``view``, labels given: those the other attacks would have read), the reason, and a pass misses nothing
    by it (a gate naming the attacks that apply to its FedAvg updates had been told to audit with iDLG, DLG and
    fc_inversion too); else :data:`~fedguard.types.NOT_REQUESTED`."""
    try:
        return cls().applies(view) or NOT_REQUESTED
    except Exception:  # model code that raises in the probe: the attack, had it been asked for, would say so
        return NOT_REQUESTED


def _carries(emulator, view) -> bool:
    """Whether the received model carries ``emulator``'s planted parameters; False where probing it runs model code
    that raises (the attacks that run it say so and skip: the probe had ended the audit as a fault in fedguard)."""
    try:
        return bool(emulator.planted(view))
    except InputError:
        raise
    except Exception:
        return False


def load_global_model(model, arch: str, num_classes, input_shape, seed: int) -> tuple[nn.Module, dict[str, Any]]:
    """``arch`` with the weights of ``model`` (a path, loaded safely as inspect does; a state_dict; a module),
    or a fresh seeded initialisation when ``model`` is None; plus a JSON-ready description of where it came from."""
    from fedguard.inspect import build_expected_module, drift_hint, names_from, unwrapped

    shape = resolve_input_shape(arch, input_shape)
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):  # the network it runs on its devices
        model = model.module  # (torch.func, which the attacks use, cannot call the wrapper)
    if isinstance(model, nn.Module):  # a copy: the audit moves it to its device, and the caller's model stays as it was
        check_float32(model, "the model passed in", "pass model.float()")
        if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
            raise InputError("the model passed in is on the meta device (shapes without values); load its weights first")
        # The report names --arch, so it must be this model's: its parameters layer by layer by shape (a wrapper's
        # names differ, and its own buffers, a normalisation's mean and std, are no layers), else the check a file
        # gets, which names the first layer that does not fit.
        tensors, _ = to_state_dict(dict(model.named_parameters()), "the model passed in")
        expected = build_expected_module(arch, tensors, num_classes, shape if input_shape is not None else None)
        if names_from(dict(expected.named_parameters()), tensors) is tensors:
            load_weights(expected, tensors, "passed in", arch, passed_in=True)
        try:
            module = copy.deepcopy(model).cpu()  # where the data are; the audit moves it to its device later
        except Exception as exc:  # an attribute that cannot be copied: a lock, a file handle, a process pool
            raise InputError(f"the model passed in cannot be copied ({first_line(exc)}); pass its state_dict()") from None
        return module, {"path": None, "sha256": None, "weights": "in-memory module", "arch": arch}
    if model is None:
        with own_random_state(seed):
            module = build_model(arch, num_classes=num_classes, input_shape=input_shape)
        return module, {"path": None, "sha256": None, "weights": f"fresh initialisation of --arch, seed {seed}", "arch": arch}
    if isinstance(model, Mapping):
        tensors, named = to_state_dict(model, "the state_dict passed in")
        info = {"path": None, "sha256": None, "weights": "in-memory state_dict"}
    else:
        if not os.path.exists(model):
            raise missing(f"--model {model}", model)
        loaded = load_model_file(model)
        if loaded.refused:
            imports = ", ".join(loaded.findings[0].evidence.get("imports", [])[:3])
            raise InputError(
                f"model {model} would execute code when loaded ({imports}); fedguard will not load it: "
                "run `fedguard inspect` on it and ask the server for a weights-only state_dict or safetensors"
            )
        tensors, named = loaded.tensors, loaded.named
        info = {"path": str(model), "sha256": loaded.sha256, "file_format": loaded.file_format, "weights": "file"}
    module = build_expected_module(arch, tensors, num_classes, shape if input_shape is not None else None, named=named)
    if not named:
        lined, why = line_up({k: v.shape for k, v in module.state_dict().items()}, list(tensors.values()))
        if lined is None:  # its names are fedguard's own (layer0.weight ...): name the item and the shape instead
            hint = drift_hint(arch, module, tensors, num_classes, input_shape, named=False)
            raise InputError(f"model {info.get('path') or 'list'} is an unnamed list of arrays (Flower's) that does not "
                             f"fit --arch {arch}: {why}; {hint or 'pass the --arch (and --num-classes / --input-shape) the server uses'}")  # fmt: skip
        tensors = lined
    tensors = unwrapped(tensors, module)
    try:
        load_weights(module, tensors, info.get("path") or "state_dict", arch)
    except InputError as exc:  # the file fits another input size of --arch, or another built-in: say which
        hint = drift_hint(arch, module, tensors, num_classes, input_shape, named) if named else None
        if hint is None:
            raise
        raise InputError(f"{str(exc).split('; ')[0]}; {hint}") from None
    info["arch"] = arch
    return module, info


def tensors_sha256(tensors: Mapping[str, Any]) -> str:
    """SHA-256 of named tensors: each one's name, dtype and shape, then its values' bytes (the machine's byte order:
    little-endian on x86 and ARM), in order; sparse tensors as dense, quantised ones as their dequantised values, an
    entry that is no tensor (a module's extra state) by its name and type. It names the exact weights (a model's
    ``state_dict``) or update whatever they came from: a module passed in from Python, or an update computed here,
    has no file digest, and a compliance record must say what it judged."""
    digest = hashlib.sha256()
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            digest.update(f"{name}\0{type(value).__qualname__}\0".encode("utf-8", "surrogatepass"))
            continue
        values = value.detach().cpu()
        if values.layout != torch.strided:
            values = values.to_dense()
        if values.is_quantized:
            values = values.dequantize()
        values = values.resolve_conj().resolve_neg().contiguous()
        digest.update(f"{name}\0{values.dtype}\0{tuple(values.shape)}\0".encode("utf-8", "surrogatepass"))
        digest.update(values.reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype: bfloat16, float8, bool
    return digest.hexdigest()


def batch_sha256(x: torch.Tensor, y: torch.Tensor) -> str:
    """SHA-256 of a batch as audited: its float32 pixels then its int64 labels, little-endian, in batch order. It
    names the exact images whatever they were read from (a folder or the built-in sets have no file digest)."""
    digest = hashlib.sha256(x.detach().cpu().float().contiguous().numpy().astype("<f4").tobytes())
    digest.update(y.detach().cpu().long().numpy().astype("<i8").tobytes())
    return digest.hexdigest()


def _data(data, arch: str, input_shape, seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    if isinstance(data, (tuple, list)):
        x, y = in_memory_batch(data)
        source = "in-memory"
    else:
        x, y = load_data(data, input_shape=resolve_input_shape(arch, input_shape), seed=seed)
        source = str(data)
    refuse_flat(x, "--data")
    return x, y, source


# --------------------------------------------------------------------------- Ctrl-C


@contextlib.contextmanager
def _first_interrupt_sets(stop: threading.Event, notify: Callable[[str], None] | None):
    """First Ctrl-C sets ``stop`` (attacks end after their current iteration); the second one aborts. A caller that
    ignores SIGINT (``signal.SIG_IGN``) keeps ignoring it; outside the main thread no handler can be set."""
    previous = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if previous is None or previous is signal.SIG_IGN:
        yield
        return

    def handler(signum, frame):
        if stop.is_set():
            signal.signal(signal.SIGINT, previous if callable(previous) else signal.default_int_handler)
            raise KeyboardInterrupt
        stop.set()
        if notify is not None:
            notify("interrupted: finishing the current iteration and keeping partial results (Ctrl-C again to abort)")

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _flushing_denormals() -> bool:
    """Whether torch flushes denormals now (torch has no getter: a denormal times one reads 0 when it does)."""
    return float(torch.tensor([1e-40], dtype=torch.float32).mul(1.0)) == 0.0


@contextlib.contextmanager
def _numerics():
    """Flush denormals: saturated sigmoids make gradients denormal, which is 10-100x slower on CPUs.
    The caller's setting is restored afterwards."""
    was = _flushing_denormals()
    changed = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if changed and not was:
            torch.set_flush_denormal(False)


def _caller_state_kept(fn: Callable) -> Callable:
    """Run ``fn`` inside :func:`~fedguard.torch_state.own_torch_state` (gradients on, float32, torch's random
    generators restored afterwards) with denormals flushed (:func:`_numerics`): the audit seeds and trains, the
    caller's global state stays its own."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with own_torch_state(), _numerics():
            return fn(*args, **kwargs)

    return run


# --------------------------------------------------------------------------- the audit


def _choose_batch(n: int, batch_size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=batch_size, replace=False))


def _label_seed(view: ServerView, done: dict[str, Any], budget: Budget) -> tuple[torch.Tensor | None, torch.Tensor | None, str | None]:
    """Labels for the image attacks: from a label attack that ran, else inferred quietly (or None), within
    ``budget``'s time and stop."""
    from fedguard.attacks.idlg import idlg_counts
    from fedguard.attacks.label_counts import CUT_BY_TIME_BUDGET, estimate_counts

    for name in ("idlg", "label_counts"):
        rec = done.get(name)
        if rec is not None and rec.labels is not None and (view.batch_size is None or len(rec.labels) == view.batch_size):
            return rec.labels.long(), rec.label_counts, f"recovered by {name}"
    if view.batch_size is None:
        return None, None, None
    head = find_head(view.model, view.input_shape, view.device, view.num_classes)
    if head is None or head.weight not in view.tensors:
        return None, None, None
    if view.batch_size == 1:
        label, counts, _ = idlg_counts(view)
        return torch.tensor([label]), counts, "recovered by idlg"
    if view.protocol == "fedavg" and (view.local_steps is None or view.local_lr is None):
        return None, None, None
    counts, _, details = estimate_counts(view, head, budget)
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.as_tensor(counts))
    cut = " (cut short by the time budget)" if CUT_BY_TIME_BUDGET in details else ""  # the seed's share of it
    return labels, torch.as_tensor(counts), f"recovered by label_counts{cut}"


#: Why the attacks on the client's update do not run on one that is zero everywhere (--model passes no gradient for
#: the batch, every unit off): it carries nothing of the batch, and a label attack's estimate from it is its prior, a
#: guess that had read as a low leak. The emulated servers, which attack an update made under their own model, run.
ZERO_UPDATE = "the update is zero everywhere (--model passes no gradient for this batch): it reveals nothing of the batch"


#: Share of an image attack's time budget that inferring the batch's labels for it may take (label counts on a
#: FedAvg ConvNet use all the time they are given): the rest is left for its iterations.
LABELLING_SHARE = 0.5
#: |cosine| between an update read in and the batch's gradient at the global model beyond which its sign says
#: which protocol made it. FedAvg deltas point against the gradient: cosine -0.04 to -1.0 (MLP, LeNet and the
#: ConvNet on digits, batches 1-64, 5-20 steps at lr 0.01-0.3, whole and one-example mini-batches); a FedSGD
#: gradient computed as fedguard does lies at +1, and DP noise pulls either towards 0, never across.
MISREAD_COSINE = 0.3
#: Cosine between an update read in and the one recomputed here (same protocol and schedule) below which the
#: update is not what --model gives on --data. Measured on digits (MLP, LeNet, ConvNet, VGG-11, MobileNetV3;
#: batches 2-32; FedSGD, FedAvg 5 steps at lr 0.01-0.1, whole and quarter mini-batches): recomputed with another
#: seed, >= 0.995 without dropout (MobileNetV3's dropout: 0.005-0.96, which is why a mismatch only counts when
#: two recomputations agree); the update of another batch of the same size: -0.25 to 0.97; half the batch
#: swapped: 0.01-0.999; the local mini-batches in another order: 0.19-1.0; 1 or 50 local steps for 5: 0.02-1.0;
#: Gaussian noise of 1x / 0.1x the update's norm: 0.71 / 0.995. So a cosine below it is a mismatch, one above
#: it is no proof of a match (0.1x noise, a batch that differs in one example).
AGREEMENT_COSINE = 0.99
#: Cosine between an update declared differentially private (an ``epsilon``) and the one recomputed here without
#: noise from which on no noise is measurable in it (noise under 1.5 % of its norm). DP-SGD at epsilon <= 100
#: (delta 1e-5, one step on the whole batch, Opacus' RDP accountant: noise multiplier sigma >= 0.098; 100 steps at
#: sample rate 0.01: 0.19) adds noise of norm sigma * C * sqrt(d) / B to a mean of clipped gradients of norm <= C:
#: >= 5 % of it for d >= 1,000 parameters and batches B <= 64 (cosine <= 0.9988), 3x it on a LeNet of 60k at B = 8.
NOISELESS_COSINE = 0.9999
#: Largest ratio of sizes (either way) between an update read in and the one recomputed: a recomputation on the same
#: data gives the same size to float rounding on CPU (ratio 1.000 on the tests' models); a summed loss gives the batch
#: size (8x), a gradient times a learning rate 0.01x, both of which had passed with cosine 1.0 and no note.
AGREEMENT_SCALE = 1.1
#: Share of an image attack's iterations below which a stop by the time budget, or a --max-iterations under that
#: share of the attack's own, leaves its figures meaningless: the audit notes it and the verdict is at least warn.
#: With --max-iterations given, any stop by the time budget is noted so (the work asked for was not done).
#: The default audit (LeNet, digits, batch 8, 20 s) reaches 21 %
#: of DLG's 300 and 66 % of Inverting Gradients' 2000 iterations; DLG's random starts are only weeded out at steps
#: 10 and 25, and its successes on LeNet come between steps 30 and 150.
CUT_SHORT = 0.1


def _norm(tensors: Mapping[str, torch.Tensor], names) -> float:
    """The Euclidean norm of the tensors ``names`` of ``tensors`` taken together."""
    return l2_norm(tensors[k] for k in names)


def _cosine(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    dot = sum(float((a[k].double() * g.double()).sum()) for k, g in b.items())
    norms = _norm(a, b) * _norm(b, b)
    return dot / norms if norms > 0 else 0.0


def _running_statistics_note(upd: Update) -> str | None:
    """The note for an update that carries BatchNorm running statistics (:func:`~fedguard.update.running_statistics`):
    they average the batch's features per channel and no attack here reads them, so the audit cannot vouch for them."""
    stats = upd.extra.get("running_statistics")
    if not stats:
        return None
    return (f"the update carries BatchNorm running statistics ({len(stats)} tensors, e.g. {stats[0]}), which no attack "
            "here reads: they average the batch's features per channel and go to the server as they are, so the "
            "verdict is at least warn; keep them local (as FedBN does) or upload the parameters only")


def _agreement(upd: Update, module: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[dict[str, Any] | None, str | None]:
    """How well an update read in matches the one training ``module`` on ``(x, y)`` gives here: ``cosine`` with
    it, whether that training is ``reproducible`` (two seeds agree; dropout makes them differ) and the update's
    ``scale`` over the recomputed one's (left out where the recomputed update is zero); with None, or None and why
    the model cannot train on this batch here. InputError when the update points the way the other protocol's
    would: a FedAvg delta passed as a FedSGD gradient (or the reverse) is attacked with the wrong sign, and the
    audit understates the leak."""
    schedule = dict(protocol=upd.protocol, local_steps=upd.local_steps, local_lr=upd.local_lr,
                    local_batch_size=upd.local_batch_size, allow_divergence=True)  # fmt: skip
    try:
        grad = compute_update(module, x, y, seed=seed).tensors
    except InputError as exc:  # e.g. BatchNorm on one example: nothing to compare with
        return None, str(exc)
    cosine = _cosine(upd.tensors, grad)
    if upd.protocol == "fedsgd" and cosine < -MISREAD_COSINE:
        raise InputError(
            f"--update points against the gradient of --data at --model (cosine {cosine:.2f}), as a FedAvg weight delta "
            "W_T - W_0 does; pass --protocol fedavg with its --local-steps and --local-lr, or check --data and --model"
        )
    if upd.protocol == "fedavg" and cosine > MISREAD_COSINE:
        raise InputError(
            f"--update points along the gradient of --data at --model (cosine {cosine:.2f}), as a FedSGD gradient does, "
            "not against it as a FedAvg delta W_T - W_0; pass --protocol fedsgd, or check the sign of the update"
        )
    try:
        mine = grad if upd.protocol == "fedsgd" else compute_update(module, x, y, seed=seed, **schedule).tensors
        norm = _norm(mine, mine)
        if norm == 0:  # no gradient reaches the parameters: a zero recomputed twice, and no direction or size to compare
            return {"cosine": 0.0, "reproducible": True}, None
        cosine = _cosine(upd.tensors, mine)
        scale = _norm(upd.tensors, mine) / norm
        reproducible = cosine >= AGREEMENT_COSINE or (
            _cosine(mine, compute_update(module, x, y, seed=seed + 1, **schedule).tensors) >= AGREEMENT_COSINE)
    except TrainingDiverged:  # the schedule given, not the update read in (finite, checked), is what diverged
        raise InputError(
            f"replaying {upd.local_steps} local steps at --local-lr {upd.local_lr:g} on --data diverges (NaN or infinite "
            "weights), so --update, whose values are finite, was most likely computed with others; pass the "
            "--local-steps, --local-lr and --local-batch-size your training used"
        ) from None
    return {"cosine": cosine, "reproducible": bool(reproducible), "scale": scale}, None


def _mismatch_note(agreement: Mapping[str, Any] | None, protocol: str, unchecked: str | None = None) -> str | None:
    """The report's note when an update read in is, reproducibly, not what --model gives on --data, or when that
    cannot be checked (``unchecked``: why the model cannot be trained on the batch here; or a training here that does
    not repeat itself, as with dropout, and no match)."""
    if unchecked is not None:  # a --update that cannot be recomputed had passed with no word of it
        return (f"--update could not be checked against --data: the update cannot be recomputed here ({unchecked.rstrip('.')}); "
                "what is measured is what it reveals about --data, so the verdict is at least warn")
    if agreement is None:
        return None
    if "scale" not in agreement:  # the recomputed update is zero (every unit off, say): a nonzero one is another's
        return ("--update is not what --model gives on --data here: --model passes no gradient for this batch (the "
                "update recomputed is zero), so the update was made on other data or from another model; what is "
                "measured is what it reveals about --data, so the verdict is at least warn")
    if not agreement["reproducible"]:  # an update made on other data had passed unremarked on a dropout model
        return (f"--update could not be checked against --data: training this model here does not repeat itself "
                f"(dropout or another random layer), and the update's cosine with one recomputation is "
                f"{agreement['cosine']:.3f}; what is measured is what it reveals about --data, so the verdict is at least "
                "warn (compute the update with fedguard.update.compute_update and this audit's seed to have it checked)")
    scale = agreement.get("scale", 1.0)
    if agreement["cosine"] >= AGREEMENT_COSINE:
        if 1 / AGREEMENT_SCALE <= scale <= AGREEMENT_SCALE:
            return None
        causes = ("another --local-lr or --local-steps (the local steps move alike), a summed instead of a mean loss, or "
                  "clipping" if protocol == "fedavg" else "a summed instead of a mean loss, a gradient already multiplied "
                  "by a learning rate, or one clipped")  # fmt: skip
        return (f"--update is {scale:.3g} times the size of the update recomputed from --model on --data, in the same "
                f"direction: {causes} (DP-SGD clips each example's gradient); attacks "
                "that match the update's size (DLG, label counts) read it as another batch's, so what the audit measures may "
                "understate the leak and the verdict is at least warn")
    how = "its local mini-batches in another order, another --local-steps or --local-lr, " if protocol == "fedavg" else ""
    return (f"--update is not what --model gives on --data here (cosine {agreement['cosine']:.3f} with the update "
            f"recomputed, below {AGREEMENT_COSINE}): it was made on other data, with {how}a defense such as DP noise, "
            "or from another model; what is measured is what it reveals about --data, so the verdict is at least warn")


def _noiseless_note(upd: Update, agreement: Mapping[str, Any] | None) -> str | None:
    """The report's note when an update declared differentially private is, reproducibly, the noise-free update
    recomputed here: the declared guarantee cannot hold for it (the defense did not run, or ran on another copy)."""
    if upd.epsilon is None or agreement is None or not agreement["reproducible"] or agreement["cosine"] < NOISELESS_COSINE:
        return None
    return (f"--update is declared {upd.defense} with epsilon {upd.epsilon:g}, yet it matches the update recomputed here "
            f"without noise (cosine {agreement['cosine']:.5f}): no DP noise is measurable in it, so the declared guarantee "
            "does not hold for what would be uploaded and the verdict is at least warn; check that the defense ran")


def _probabilities_note(logits: torch.Tensor) -> str | None:
    """The report's note when the model's outputs (``logits`` of a few examples) are probabilities, rows of
    non-negative values summing to 1: the audit trains with cross-entropy on the outputs as logits, as a client with
    nn.CrossEntropyLoss does; a client taking their log (nn.NLLLoss) uploads another update."""
    out = logits.double()
    if bool((out >= 0).all()) and torch.allclose(out.sum(1), torch.ones(len(out), dtype=out.dtype), atol=1e-4):
        return ("the model's outputs are probabilities (each row sums to 1): the audit applied cross-entropy to them as "
                "logits, as nn.CrossEntropyLoss does; if the client takes their log instead (nn.NLLLoss), its update "
                "differs (drop the final softmax from --arch to audit that one); the verdict is at least warn")
    return None


def audited_detectors(batch: bool = True) -> list[str]:
    """The detectors :func:`inspect_received` runs: ``fedguard inspect``'s weight rules and, on a batch, FG805's."""
    from fedguard.detectors import DETECTORS

    return [name for name in DETECTORS.names() if not DETECTORS.get(name).needs or (batch and name == "silenced")]


def audited_rules() -> set[str]:
    """The rule ids :func:`inspect_received` can report."""
    from fedguard.detectors import DETECTORS

    return {rule.rule_id for name in audited_detectors() for rule in DETECTORS.get(name).rules}


def inspect_received(module: nn.Module, ignores: Sequence[Ignore] = (),
                     batch: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, Any]:
    """What ``fedguard inspect`` reads in the received model's weights (the rules that need neither ``--data`` nor
    ``--reference``) and, with the client's ``batch``, whether the model discards it (FG805: a server that sends
    every client but one such a model reads that one's update alone out of the secure sum; the audit had passed
    it, as nothing of the batch leaks): ``{"verdict", "findings", "suppressed", "ignore", "ignore_unmatched"}``, the
    findings at medium severity or above, worst first; those ``ignores`` accept (``--ignore``) apart, at any
    severity, not judged, and the entries of ``ignores`` that matched nothing.

    The attacks measure what their own methods rebuild; a server's method may read more. An imprint planted in an
    MLP's second layer behind a first layer that every example passes (an independent review: biases of 1000)
    left every quotient of the first layer one mixture, and the audit passed while the bins gave back the batch's
    images exactly (94 and 58 dB); the weight-pattern rules read it (FG301, FG401). 6-9 ms on LeNet, the ConvNet and
    the MLP, 0.05-0.1 s on ResNet-18, VGG-16 and MobileNetV3 (an idle 2-core machine); the seconds of ``fedguard
    inspect`` on large models.
    """
    from fedguard.detectors import InspectContext
    from fedguard.inspect import judge, run_detectors
    from fedguard.modelview import ModelView
    from fedguard.reports.base import sorted_findings

    names = audited_detectors(batch is not None)
    state = {name: tensor.detach().cpu() for name, tensor in module.state_dict().items()}
    findings, _ = run_detectors(InspectContext(view=ModelView.from_state_dict(state, module), data=batch), names)
    findings, suppressed = split_findings(findings, ignores)

    def listed(found: list[Finding], floor: Severity) -> list[dict[str, Any]]:
        shown = [f for f in sorted_findings(found) if f.severity >= floor]
        return [{"rule_id": f.rule_id, "severity": str(f.severity), "layer": f.layer, "title": f.title} for f in shown[:20]]

    return {
        "verdict": str(judge(findings)),
        "findings": listed(findings, Severity.MEDIUM),
        "suppressed": listed(suppressed, Severity.INFO),  # whatever an entry accepted, so that no entry goes unseen
        "ignore": [str(i) for i in ignores],
        "ignore_unmatched": [str(i) for i in unmatched(ignores, suppressed)],
    }


def _inspection_note(inspection: Mapping[str, Any]) -> str | None:
    """The note for a received model ``fedguard inspect`` does not call clean (:func:`inspect_received`)."""
    if inspection["verdict"] == "clean":
        return None
    layers: dict[tuple[str, str], list[str]] = {}  # each rule's layers, worst first
    for f in inspection["findings"]:
        layers.setdefault((f["rule_id"], f["title"]), []).extend([f["layer"]] if f["layer"] else [])
    rules = "; ".join(f"{rule} {title}" + (f" in {', '.join(dict.fromkeys(where))}" if where else "")
                      for (rule, title), where in list(layers.items())[:3])  # fmt: skip
    if len(layers) > 3:  # the text and HTML reports show this note alone: the others had gone unsaid
        more = ", ".join(rule for rule, _ in list(layers)[3:])
        rules += f"; and {len(layers) - 3} more ({more}: model.inspection lists them)"
    if inspection["verdict"] == "malicious":
        return (f"fedguard inspect calls the model received malicious: {rules}; a server that planted these parameters "
                "can rebuild more than the attacks here measure, so the verdict is block: do not train on this model")
    return (f"fedguard inspect calls the model received suspicious: {rules}; ask the server why before training on it; "
            "the verdict is at least warn")


def _no_iteration(stopped: str, time_budget: float | None, crafting: float = 0.0, labelling: float = 0.0) -> str:
    """Why an attack that applies measured nothing: the time budget or a stop came before its first iteration
    (``crafting``: the seconds an emulator spent on the server's model, ``labelling`` those spent inferring the
    batch's labels; both part of its budget)."""
    if stopped == "time_budget":
        parts = [f"{what} took {seconds:.1f} s" for what, seconds in
                 (("inferring the labels", labelling), ("crafting the server's model", crafting)) if seconds >= 0.05]
        spent = f" ({' and '.join(parts)} of it)" if parts else ""
        return (f"the time budget of {time_budget:g} s ran out before its first iteration{spent}, so it measured "
                "nothing; raise --time-budget")
    return "interrupted before its first iteration, so it measured nothing"


def _emulate(
    crafter: str,
    options: Mapping[str, Any],
    view: ServerView,
    upd: Update,
    batch_x: torch.Tensor,
    batch_y: torch.Tensor,
    aux: tuple[torch.Tensor, torch.Tensor] | None,
    seed: int,
    defense: Defense | None = None,
    rounds: Iterator[int] | None = None,
) -> ServerView:
    """What a malicious server would see: the model crafted by ``crafter`` for this architecture, and
    the client's update computed under it with the same protocol and ``defense`` (the client's side, run here).
    Its ``next_round(options)`` crafts again from the same model for a later round on the same batch; under a
    defense each round draws its own noise, as a client's training does (the same noise twice would cancel in the
    difference of two rounds that feature fishing reads)."""
    from fedguard.attacks.craft import READS_DATA, craft

    rounds = itertools.count() if rounds is None else rounds  # one count for every round of this emulation
    round_index = next(rounds)
    public = aux[0] if aux is not None and view.threat.auxiliary_data and crafter in READS_DATA else None
    with own_random_state():
        crafted = craft(crafter, copy.deepcopy(view.model).cpu(), input_shape=view.input_shape,
                        num_classes=view.num_classes, data=public, seed=seed, **options).to(view.device)
        evil = compute_update(crafted, batch_x.to(view.device), batch_y.to(view.device), protocol=upd.protocol,
                              local_steps=upd.local_steps, local_lr=upd.local_lr,
                              local_batch_size=upd.local_batch_size, seed=seed if defense is None else seed + round_index,
                              allow_divergence=True, defense=defense)  # fmt: skip
    again = functools.partial(_emulate, crafter, view=view, upd=upd, batch_x=batch_x, batch_y=batch_y, aux=aux, seed=seed,
                              defense=defense, rounds=rounds)
    return dataclasses.replace(view, model=crafted, tensors=evil.tensors, next_round=again)


def _exposure(
    upd: Update,
    federation: FederationSettings,
    seed: int,
    budget: float,
    stop: threading.Event,
    progress: AuditProgress | None,
) -> dict[str, Any]:
    """The exposure section: this update among simulated peers (see :mod:`fedguard.exposure`), within ``budget`` s."""
    vector = torch.cat([t.detach().reshape(-1).cpu() for t in upd.tensors.values()])
    name = "exposure"
    scenarios = len(what_ifs(federation))
    if progress is not None:
        progress.start(name, scenarios, budget)
    seen: list[str] = []

    def step(label: str) -> None:
        seen.append(label)
        if progress is not None:
            progress.update(name, len(seen) - 1, scenarios, {})

    result = client_exposure(vector, federation, seed=seed, budget=budget, stop=stop.is_set, progress=step)
    if progress is not None:  # as the report says it: a bar that read "done" beside a cut-short analysis had misled
        outcome = result.configured.outcome
        progress.finish(name, "interrupted" if stop.is_set() else outcome if outcome in ("cut short", "not run") else "done")
    return {**result.to_dict(), "budget": budget}


def _check_schedule_agrees(update: Update, **given: Any) -> None:
    """InputError when an argument of the training schedule, given other than its default, contradicts the one the
    ``Update`` object carries (whose schedule the audit uses: the other had been dropped without a word). A
    mini-batch of the whole batch is the same schedule as none (``local_batch_size=len(y)`` against an Update made
    without one had been refused)."""
    defaults = inspect.signature(audit).parameters

    def effective(name: str, value: Any) -> Any:
        return update.batch_size if name == "local_batch_size" and value is None else value

    for name, value in given.items():
        if value != defaults[name].default and effective(name, value) != effective(name, getattr(update, name)):
            raise InputError(f"{name}={value!r} but the Update object was computed with {name}={getattr(update, name)!r}; "
                             f"leave {name} out (an Update carries its own schedule) or pass the update it describes")


@keyword_names(aliases={"--attack": "attacks", "--attacker-labels": "threat labels", "--delta": "DPSGD delta",
                        "--noise-multiplier": "DPSGD noise_multiplier", "--max-grad-norm": "DPSGD max_grad_norm"})
@_caller_state_kept
def audit(
    model: str | os.PathLike | nn.Module | Mapping[str, torch.Tensor] | None = None,
    *,
    arch: str,
    data: str | os.PathLike | tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray],
    batch_size: int | None = None,
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
    protocol: str = "fedsgd",
    local_steps: int = 5,
    local_lr: float = 0.01,
    local_batch_size: int | None = None,
    update: str | os.PathLike | Update | None = None,
    defense: Defense | None = None,
    attacks: Sequence[str] | None = None,
    max_iterations: int | None = None,
    time_budget: float | None = DEFAULT_TIME_BUDGET,
    threat: ThreatModel | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    fail_on: str | LeakageLevel = "high",
    attack_options: Mapping[str, Mapping[str, Any]] | None = None,
    progress: AuditProgress | None = None,
    stop: threading.Event | None = None,
    federation: FederationSettings | None = None,
    exposure_budget: float | None = None,
    ignore: Sequence[str] | None = None,
) -> AuditReport:
    """Compute the pending update, attack it as the server would, and measure what leaks.

    Parameters
    ----------
    model : path, nn.Module, state_dict or None
        The global model as received (loaded safely, as ``fedguard inspect``
        does; a module is audited as a copy and left as it was); None audits
        a fresh initialisation of ``arch`` (seeded). Weights are audited in
        float32: a file's or state_dict's half-precision tensors are read
        into ``arch``'s float32 layers, a half-precision module is refused
        (pass ``model.float()``).
    arch : str or callable
        Architecture: a built-in name, ``package.module:callable``, or the
        class or function itself (defined at the top level of a module;
        reports name it ``module:name``).
    data : str, path or (x, y)
        ``digits``, ``images``, an image folder, an ``.npz`` with ``x``/``y``,
        or tensors or numpy arrays. The batch is drawn from it with ``seed``; the rest plays the
        server's public data. With ``update``, all of ``data`` is the batch.
    batch_size : int
        Examples in the private batch (default 8; with ``update``, all of ``data``).
    num_classes, input_shape : optional
        Options of ``arch`` (classes default to the received head's; the input shape to the architecture's own, or,
        for an architecture without one, to the shape of in-memory ``data``).
    protocol : {"fedsgd", "fedavg"}
    local_steps, local_lr, local_batch_size
        FedAvg's local schedule (mini-batches default to the whole batch);
        FedSGD does not read them.
    update : path or Update, optional
        An update computed elsewhere from ``model`` (required then) on exactly
        ``data`` (same names and shapes as the model's parameters; FedAvg:
        ``W_T - W_0``). An :class:`~fedguard.update.Update` brings its own
        protocol and schedule and is checked as a file is.
    defense : DPSGD, Pruning or GaussianNoise, optional
        A defense the client applies (:mod:`fedguard.defenses`): the update
        is computed under it, the malicious-server emulators' updates too, and
        the report gives its settings (DP-SGD's epsilon for the round). Not
        with ``update``, which is attacked as it is.
    attacks : list of str, optional
        Registry names to run; default every one that applies.
    max_iterations : int, optional
        Per attack; default each attack's own (DLG 300, Inverting Gradients 2000).
        Given, an image attack the time budget stops before it makes the
        verdict at least ``warn`` (a note says so); by default only a stop
        within a tenth of the iterations does.
    time_budget : float or None
        Seconds per attack (default 20); None for no limit.
    threat : ThreatModel, optional
        What the server knows; default its realistic knowledge.
    seed : int
        Seeds the batch, the model initialisation (``model=None``), the attacks.
    device : {"auto", "cpu", "cuda", "cuda:N"} or torch.device
    fail_on : {"low", "medium", "high"}
        Level at which the verdict is ``block`` (default ``high``); one level below it (from
        ``low`` up) is ``warn``. A run in which no attack ran, or that was
        stopped, is at least ``warn`` (an update that is zero everywhere, which reveals nothing, excepted).
    attack_options : mapping, optional
        Constructor options per attack that runs, e.g. ``{"dlg": {"starts": 8}}``.
    progress : AuditProgress, optional
        Told each attack's start, iterations and end (:class:`AuditProgress`); the CLI draws bars with it.
    stop : threading.Event, optional
        Set it (or press Ctrl-C in the main thread) to stop after the current
        iteration; the report keeps the partial results and says ``interrupted``.
    federation : FederationSettings, optional
        The federation the update goes to (users per round, participation,
        count window, rounds the update stays the same, noise on the sums).
        When given, the report gets an ``exposure`` section: after how many
        rounds gradient disaggregation recovers this update from securely
        aggregated sums, and how DP noise, coarser counts or rarer
        participation change that (:mod:`fedguard.exposure`).
    exposure_budget : float, optional
        Seconds for the exposure analysis, all its scenarios together; default
        :data:`EXPOSURE_BUDGET` (or ``time_budget`` when smaller). What-ifs it
        does not reach are reported as not run, never as not exposed.
    ignore : list of str, optional
        Findings of ``fedguard inspect``'s weight rules on the received model to accept, as ``RULE`` or
        ``RULE:LAYER`` (:mod:`fedguard.suppressions`): listed in ``model.inspection.suppressed``, they neither
        block nor warn. What the attacks measure still counts.

    Returns
    -------
    AuditReport
        Its JSON document is :func:`fedguard.reports.audit_json.audit_to_dict`.

    Raises
    ------
    fedguard.errors.InputError
        Bad model, data, attack names, options or device (one line, says what to do).

    Notes
    -----
    The caller's state is left as it was: torch's random generators (the
    audit seeds its own), grad mode (it trains inside ``torch.no_grad()``
    too), the denormal setting and the SIGINT handler. A module passed in
    is copied, hooks included (weight normalisation and pruning work
    through them), so a hook that records activations into the caller's
    objects fires on the audit's passes too: remove such hooks first.
    """
    from fedguard.attacks.base import KNOWN_LABELS, Budget
    from fedguard.attacks.base import attacks as registry
    from fedguard.metrics import NoUpdateGuess, baseline_psnr, score, verdict_for

    t_start = time.perf_counter()
    seed = checks.seed(seed)
    arch = arch_name(arch)
    batch_size, num_classes, max_iterations = (
        None if value is None else checks.whole(value, option)
        for value, option in ((batch_size, "--batch-size"), (num_classes, "--num-classes"), (max_iterations, "--max-iterations"))
    )  # the local schedule is checked with the update (update.check_protocol)
    if time_budget is not None:
        time_budget = checks.finite(time_budget, "--time-budget", positive=True)
    if exposure_budget is not None:
        exposure_seconds = checks.finite(exposure_budget, "--exposure-budget", positive=True)
    else:
        exposure_seconds = EXPOSURE_BUDGET if time_budget is None else min(EXPOSURE_BUDGET, time_budget)
    for value, kind, name in ((threat, ThreatModel, "threat"), (federation, FederationSettings, "federation")):
        if value is not None and not isinstance(value, kind):
            raise InputError(f"{name} is {kind_of(value)}; pass a {kind.__name__} or None")
    if stop is not None and not callable(getattr(stop, "is_set", None)):
        raise InputError(f"stop is {kind_of(stop)}; pass a threading.Event or None")
    if progress is not None and not all(callable(getattr(progress, m, None)) for m in ("start", "update", "finish", "message")):
        raise InputError(f"progress is {kind_of(progress)} without start, update, finish and message; see AuditProgress")
    if model is not None and not isinstance(model, (str, os.PathLike, nn.Module, Mapping)):
        raise InputError(
            f"model is {model!r:.60}; pass a path, an nn.Module or a state_dict "
            "(a Flower list of arrays: load it into your module first, or save it with np.savez and pass the path)"
        )
    if update is not None and not isinstance(update, (str, os.PathLike, Update)):
        raise InputError(
            f"update is {kind_of(update)}; pass a path or an Update "
            "(e.g. Update(tensors=dict_of_tensors, protocol='fedavg', batch_size=len(y), local_steps=5, local_lr=0.01))"
        )
    if check_defense(defense) is not None and update is not None:
        raise InputError(
            "--defense applies to the update fedguard computes; --update is attacked as it is (in Python, declare "
            "its defense with Update(defense=..., epsilon=..., delta=...)); drop one of them"
        )
    if update is not None and model is None:
        raise InputError(
            "--update needs --model, the global model the update was computed from; "
            "against a fresh initialisation of --arch the attacks would read the wrong weights"
        )
    reg = registry()
    if attacks is not None and (isinstance(attacks, (str, bytes)) or not isinstance(attacks, Sequence) or not attacks):
        raise InputError(f"attacks is {attacks!r}; pass a non-empty list of attack names such as ['dlg'], or None for the default")
    for name in attacks or []:
        if not isinstance(name, str) or name not in reg:
            raise InputError(f"unknown attack {name!r}{did_you_mean(name, reg.names())}; valid: {', '.join(reg.names())}")
    requested = list(dict.fromkeys(attacks)) if attacks else None
    # label attacks first; malicious-server emulators only when asked for
    names = [n for n in reg.names() if n in requested] if requested else [n for n in reg.names() if reg.get(n).default]
    if attack_options is not None and not isinstance(attack_options, Mapping):
        raise InputError(f"attack_options is {kind_of(attack_options)}; pass a mapping such as {{'dlg': {{'starts': 8}}}}")
    options = dict(attack_options or {})
    for name, given in options.items():
        if name not in reg:
            raise InputError(f"options for unknown attack {name!r}{did_you_mean(name, reg.names())}; valid: {', '.join(reg.names())}")
        if not isinstance(given, Mapping):
            raise InputError(f"options for {name} are {kind_of(given)}; pass a mapping of option names to values")
        known = [k for k in inspect.signature(reg.get(name)).parameters if k != "self"]
        unknown = [k for k in given if k not in known]
        if unknown:
            raise InputError(f"{name} has no option {unknown[0]!r}; its options: {', '.join(known) or 'none'}")
        if name not in names:
            raise InputError(f"options for {name}, which this audit does not run; add it to attacks or drop its options")
    chosen = {}
    for name in names:
        try:
            chosen[name] = reg.get(name)(**options.get(name, {}))
        except (TypeError, ValueError) as exc:
            raise InputError(f"bad options for {name}: {first_line(exc).split(': ', 1)[-1]}") from None
    if not isinstance(fail_on, (str, LeakageLevel)):
        raise InputError(f"fail_on is {fail_on!r}; use low, medium or high")
    try:
        fail_level = fail_on if isinstance(fail_on, LeakageLevel) else LeakageLevel.parse(fail_on)
    except ValueError:  # its own list names none too, which is refused next
        raise InputError(f"unknown --fail-on {fail_on!r}; use low, medium or high") from None
    if fail_level == LeakageLevel.NONE:
        raise InputError("--fail-on none would block every update; use low, medium or high")
    threat = threat or ThreatModel()
    if requested and threat.labels == "known" and all(reg.get(n).kind == "labels" for n in requested):
        # each would be skipped (labels the server has tell it nothing): a run of none is a warn that measured nothing
        said = " and ".join(f"--attack {n}" for n in requested)
        raise InputError(f"{said} recover{'s' if len(requested) == 1 else ''} the batch's labels, which --attacker-labels known hands the server already, "
                         "so nothing would run; name an image attack (e.g. --attack dlg), or drop --attacker-labels known")
    dev = resolve_device(device)
    ignores = parse_ignores(ignore, rules())
    run = audited_rules()
    for entry in ignores:
        if entry.rule_id not in run:
            raise InputError(f"--ignore {entry}: the audit does not run {entry.rule_id} (it reads the received model with "
                             f"the weight rules and FG805 only); accept it with fedguard inspect's --ignore, and leave it "
                             "out of the audit's")  # fmt: skip

    if input_shape is None and isinstance(data, (tuple, list)):
        try:
            resolve_input_shape(arch)
        except InputError:  # no default shape: in-memory data go in as they are, so theirs is the input shape
            input_shape = tuple(in_memory_batch(data)[0].shape[1:])
    # the data first: an --input-shape too large for them is refused before the model is built at that size (LeNet at
    # 3x5000x5000 had allocated its classifier for 7 s before the data said 502 GiB)
    x_all, y_all, data_spec = _data(data, arch, input_shape, seed)
    module, model_info = load_global_model(model, arch, num_classes, input_shape, seed)
    model_info["weights_sha256"] = tensors_sha256(module.state_dict())
    logits = classifier_logits(module, x_all, "audit")
    n_out = logits.shape[1]
    if n_out == 1:  # softmax over one logit is 1 whatever the weights: the update would be zero everywhere
        raise InputError("the model has a single output, through which cross-entropy (what the audit trains with) sends "
                         "no gradient; audit a binary classifier as two logits (nn.Linear(..., 2)) trained with cross-entropy")  # fmt: skip
    if int(y_all.max()) >= n_out or int(y_all.min()) < 0:
        if int(y_all.min()) == 1 and int(y_all.max()) == n_out:
            fix = "the labels look numbered from 1: number the classes from 0 (y - 1)"
        else:
            other_count = model is None and builds_any_class_count(arch)  # a received model's classes are its own
            fix = f"pass data whose labels are 0 to {n_out - 1}" + (" (or --num-classes)" if other_count else "")
        raise InputError(f"--data has labels up to {int(y_all.max())} but the model has {n_out} outputs; {fix}")
    if update is not None:
        if not isinstance(update, Update) and not os.path.exists(update):
            raise missing(f"--update {update}", update)
        if batch_size is not None and int(batch_size) != len(y_all):
            raise InputError(
                f"--update was computed on the whole --data batch ({len(y_all)} examples) but --batch-size is {batch_size}; "
                "drop --batch-size (with --update the batch is all of --data), or give --data exactly the examples the "
                "update came from"
            )
        index = np.arange(len(y_all))
    else:
        from fedguard.reports.base import plural

        if batch_size is None and DEFAULT_BATCH_SIZE > len(y_all):
            raise InputError(f"--data holds {plural(len(y_all), 'example')}, fewer than the default --batch-size "
                             f"{DEFAULT_BATCH_SIZE}; pass --batch-size {len(y_all)} or less, or more data")  # fmt: skip
        batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size  # checked whole and >= 1 above
        if int(batch_size) > len(y_all):
            raise InputError(f"--batch-size {batch_size} is larger than --data ({plural(len(y_all), 'example')}); "
                             f"give --batch-size {len(y_all)} or less")  # fmt: skip
        index = _choose_batch(len(y_all), int(batch_size), seed)
    batch_x, batch_y = x_all[index], y_all[index]
    rest = np.setdiff1d(np.arange(len(y_all)), index)
    rest = np.random.default_rng(seed + 1).permutation(rest)[:MAX_AUXILIARY]
    aux = (x_all[rest], y_all[rest]) if len(rest) else None
    if aux is None:  # the whole of --data is the batch: nothing is left to stand in for the server's public data
        threat = dataclasses.replace(threat, auxiliary_data=False)

    module = module.to(dev)
    if isinstance(update, Update):
        _check_schedule_agrees(update, protocol=protocol, local_steps=local_steps, local_lr=local_lr,
                               local_batch_size=local_batch_size)
        upd = checked_update(update, module, batch_size=len(index))
        agreement, unchecked = _agreement(upd, module, batch_x.to(dev), batch_y.to(dev), seed)
    elif update is not None:
        upd = load_update(update, module, batch_size=len(index), protocol=protocol, local_steps=local_steps,
                          local_lr=local_lr, local_batch_size=local_batch_size)
        agreement, unchecked = _agreement(upd, module, batch_x.to(dev), batch_y.to(dev), seed)
    else:
        upd = compute_update(module, batch_x.to(dev), batch_y.to(dev), protocol=protocol, local_steps=local_steps,
                             local_lr=local_lr, local_batch_size=local_batch_size, seed=seed, defense=defense)
        agreement, unchecked = None, None
    mismatch = _mismatch_note(agreement, upd.protocol, unchecked)
    try:
        model_info["inspection"] = inspect_received(module, ignores, (batch_x.to(dev), batch_y.to(dev)))
    except ModelCodeRaised as exc:  # inspect's advice (drop --data) is no option here
        raise InputError(f"the {exc.check} check of the received model runs it on your batch, which raised {exc.cause}; "
                         "fix the architecture's code") from None
    notes = [note for note in (mismatch, _noiseless_note(upd, agreement), _probabilities_note(logits),
                               _running_statistics_note(upd), _inspection_note(model_info["inspection"])) if note]
    # each: warn; a model inspect calls malicious: block

    B = len(index)
    known_labels = threat.labels == "known"
    view = ServerView.of_update(module, upd, threat, num_classes=n_out, input_shape=batch_x.shape[1:], device=dev,
                                seed=seed, labels=batch_y, auxiliary=aux)

    sent: set[str] = set()  # emulators whose parameters the received model carries: attacked as received
    carried = []  # the same, where the attacks were named and these left out
    for name in reg.names():  # a received model that already carries an emulated server's parameters: attack it unasked
        cls = reg.get(name)
        if (cls.emulates is not None and name not in names and not any(issubclass(cls, type(chosen[n])) for n in names)
                and _carries(cls(), view)):  # fmt: skip  (mkor_inconspicuous reads it as mkor does)
            if requested is None:
                names, chosen[name] = [*names, name], cls()
                sent.add(name)
            else:
                carried.append(name)
    if carried:  # a pass from the attacks named must not hide a model crafted to leak (a compliance reader's review)
        notes.append(f"the received model carries the parameters a malicious server plants for {', '.join(carried)}, "
                     "which the attacks named leave out: add them to the attacks, and inspect the model (fedguard "
                     "inspect) before training on it")  # fmt: skip

    from fedguard.attacks.craft import NothingToPlant

    stop = stop or threading.Event()
    progress = _CallersProgress(progress) if progress is not None else None
    notify = progress.message if progress is not None else None
    skipped: dict[str, str] = {}
    unmeasured = False  # an attack that applies failed, or stopped before its first iteration
    done: dict[str, Any] = {}
    outcomes: list[AttackOutcome] = []
    # what the server would guess without the update: its public data's mean image, each class's, the classes' shares
    prior = NoUpdateGuess.from_public(*view.auxiliary, n_out) if view.auxiliary is not None else NoUpdateGuess()
    baseline = baseline_psnr(batch_x, prior, batch_y)
    exposure = None
    # the attacks differentiate gradients; only the math kernel of scaled_dot_product_attention has a double backward
    zero_update = is_zero(upd.tensors.values())
    with _first_interrupt_sets(stop, notify), sdpa_kernel(SDPBackend.MATH):
        for name in names:
            cls = reg.get(name)
            attack = chosen[name]
            if zero_update and cls.emulates is None:
                skipped[name] = ZERO_UPDATE
                continue
            if stop.is_set():  # an attack that could never run keeps its reason (an image attack's may hang on labels)
                never = cls.emulates is None and (cls.kind != "images" or view.labels is not None) and attack.applies(view)
                skipped[name] = never or "interrupted before it started"
                continue
            started = False
            try:
                labelling, labelling_started = 0.0, time.perf_counter()
                if cls.kind == "images" and view.labels is None and not known_labels:
                    seeding = None if time_budget is None else LABELLING_SHARE * time_budget
                    labels, counts, source = _label_seed(view, done, Budget(1, seeding, stop))
                    labelling = time.perf_counter() - labelling_started  # the server's first step: this attack's time
                    if labels is not None:
                        view = dataclasses.replace(view, labels=labels, label_counts=counts, label_source=source)
                target, crafting_started = view, time.perf_counter()
                planted = cls.emulates is not None and (name in sent or attack.planted(view))  # sent: no crafting on top
                if cls.emulates is not None and not planted:
                    try:
                        target = _emulate(cls.emulates, attack.crafter_options(view), view, upd, batch_x, batch_y, aux, seed,
                                          defense)
                    except NothingToPlant as exc:  # nothing of the kind it changes, or its parameters there already
                        planted = attack.applies(view) is None  # then the server sent them: attack the update as is
                        if not planted:
                            skipped[name] = f"could not craft the server's model from this one: {exc}"
                            continue
                    except InputError as exc:  # the crafter cannot work on this architecture
                        skipped[name] = f"could not craft the server's model from this one: {exc}"
                        continue
                crafting = time.perf_counter() - crafting_started  # the attack's time and budget (ResNet-18: 0.2-1.1 s)
                reason = attack.applies(target)
                if reason is not None:
                    skipped[name] = reason
                    continue
                total = int(max_iterations or cls.default_iterations or 1)
                if progress is not None:
                    progress.start(name, total, time_budget)
                    started = True
                budget = Budget(
                    total,
                    time_budget,
                    stop,
                    (lambda d, t, f, n=name: progress.update(n, d, t, f)) if progress is not None else None,
                    spent=labelling + crafting,
                )
                torch.manual_seed(seed)
                rec = attack.run(target, budget)
                before = {"labelling_seconds": labelling} if labelling else {}
                if planted:
                    before.update(update="the client's own: the model received already carries the server's parameters")
                elif cls.emulates is not None:  # the update it attacks is the client's under the crafted model, not --update
                    before.update(crafting_seconds=crafting, update=CRAFTED_UPDATE)
                if before:
                    rec = dataclasses.replace(rec, seconds=rec.seconds + labelling + crafting, details={**rec.details, **before})
            except InputError:
                raise
            except Exception as exc:  # torch cannot do what the attack needs on this model, or the model's own code raised
                if progress is not None and progress.raised_by_it(exc):
                    raise  # the caller's own, as it was raised
                why = first_line(exc)
                if "more than 1 value per channel" in why:  # the batch itself trains (checked): the attack's own examples
                    why = "a BatchNorm layer in training mode cannot take the one example at a time it rebuilds"
                skipped[name] = f"could not run on this model: {why}"
                unmeasured = True  # what it would have rebuilt is unknown: not a pass
                if started:
                    progress.finish(name, "failed")
                continue
            if progress is not None:
                if rec.iterations:  # the bar at the count the report gives (it had ended one short of it)
                    progress.update(name, rec.iterations, max(total, rec.iterations), {})
                progress.finish(name, rec.stopped)
            if cls.kind == "images" and rec.iterations == 0 and rec.stopped in ("time_budget", "interrupted"):  # cut before
                # it rebuilt anything: its images would be the random start's (an analytic attack that ends by itself
                # has 0 iterations too; label counts cut short are an estimate from the statistics measured by then)
                skipped[name] = _no_iteration(rec.stopped, time_budget, crafting, labelling)
                unmeasured = True
                continue
            # a fixed max_iterations asks for repeatable work (a gate's): the budget ending it at all answers by load
            short = rec.iterations < (total if max_iterations is not None else CUT_SHORT * total)
            if cls.kind == "images" and rec.stopped == "time_budget" and short:
                planned = rec.details.get("planned_iterations", total)  # Inverting Gradients fits its schedule to the budget
                fitted = f" (its schedule shortened to {planned} to fit the budget)" if planned != total else ""
                notes.append(f"{name} was stopped by the time budget after {rec.iterations} of {total} iterations{fitted}: "
                             "what it rebuilt understates what a server with more time would; raise --time-budget")  # fmt: skip
            if rec.details.get("cut_short"):  # the attack's own unit (rounds) was cut by the budget
                notes.append(f"{name}: {rec.details['cut_short']}: what it rebuilt understates what a server with more "
                             "time would; raise --time-budget")  # fmt: skip
            if cls.emulates is not None and rec.details.get("why_nothing"):
                notes.append(f"{name} rebuilt nothing ({rec.details['why_nothing']}): the emulated server's crafted "
                             "model did not isolate the batch's examples here, which says nothing of what a server "
                             "that chose its rounds or parameters otherwise would rebuild")  # fmt: skip
            if rec.details.get("inconclusive"):  # the attack ran but could not read the update as the server might
                notes.append(f"{name} rebuilt nothing: {rec.details['inconclusive']}; a server that models those "
                             "steps may rebuild more")  # fmt: skip
            if cls.kind == "images" and cls.default_iterations and total < CUT_SHORT * cls.default_iterations:
                notes.append(f"{name} ran at most {total} iterations (--max-iterations; the attack's own is "
                             f"{cls.default_iterations}): what it rebuilt understates what a server running it longer "
                             "would; raise --max-iterations")  # fmt: skip
            if cls.kind == "images" and rec.stopped == "diverged" and rec.iterations < CUT_SHORT * total:
                notes.append(f"{name} diverged after {rec.iterations} of {total} iterations (its objective became infinite, "
                             "as on a model with huge weights): what it rebuilt says nothing of what a server with a "
                             "steadier optimiser would")  # fmt: skip
            done[name] = rec
            outcome = score(rec, batch_x, batch_y, n_out, title=cls.title, reference=cls.reference, kind=cls.kind, prior=prior)
            outcomes.append(outcome)
            exact = outcome.label_counts_exact if outcome.label_counts_exact is not None else outcome.label_accuracy
            if cls.kind == "labels" and rec.stopped == "time_budget" and exact is not None and exact < 1.0:
                what = "per-class counts exact" if outcome.label_counts_exact is not None else "labels right"
                notes.append(f"{name} was stopped by the time budget with {exact:.0%} of the {what}: a server with "
                             "more time estimates them from more of its data; raise --time-budget")  # fmt: skip
            if cls.emulates is None and view.labels is None and rec.labels is not None and len(rec.labels) == B:
                # the same server's labels seed the attacks after it (DLG's, where no label attack applies)
                view = dataclasses.replace(view, labels=rec.labels.long(), label_counts=rec.label_counts, label_source=f"recovered by {name}")
        if federation is not None and not stop.is_set() and not zero_update:  # Ctrl-C here too keeps the attacks' results
            exposure = _exposure(upd, federation, seed, exposure_seconds, stop, progress)
            if exposure["outcome"] == "cut short":  # undecided, which a pass next to it must not read as hidden
                notes.append(f"the exposure analysis was cut short ({exposure['scenarios'][0]['note']}): whether secure "
                             f"aggregation hides this update is undecided; more time (--exposure-budget, "
                             f"{exposure_seconds:g} s here) or an idle machine may decide it (the exposure does not change "
                             "the leakage level)")  # fmt: skip

    # what was asked for and not measured is no pass (the default skips freely): an attack named and skipped, where no
    # attack of its kind (images, labels) measured anything instead and labels the server knows are not the reason
    measured = {reg.get(o.name).kind for o in outcomes}
    not_run = [name for name in requested or ()
               if name in skipped and reg.get(name).kind not in measured and skipped[name] not in (KNOWN_LABELS, ZERO_UPDATE)]  # fmt: skip
    if not_run and not stop.is_set():
        notes.append(f"named but not run: {', '.join(not_run)} (the reasons are under skipped), and no other attack "
                     "measured that kind of leak: the audit measured less than it was asked to")  # fmt: skip
    for name in reg.names():  # what a reader of a pass must know was not tried: the default attacks left out
        if requested is not None and reg.get(name).default and name not in requested:
            skipped[name] = _left_out(reg.get(name), dataclasses.replace(view, labels=batch_y))

    from fedguard.metrics import THRESHOLDS

    by_attack = {o.name: o.level for o in outcomes}
    worst = max(outcomes, key=lambda o: (int(o.level), o.psnr_max or -1.0), default=None)
    level = worst.level if worst is not None else LeakageLevel.NONE
    leakage = Leakage(
        level=level,
        by_attack=by_attack,
        worst_attack=worst.name if worst is not None and level > LeakageLevel.NONE else None,
        baseline_psnr=baseline,
        thresholds=dict(THRESHOLDS),
    )
    n_params = sum(p.numel() for p in module.parameters())
    model_info.update(
        {"num_classes": n_out, "input_shape": list(batch_x.shape[1:]), "n_parameters": int(n_params)}
    )
    verdict = verdict_for(level, fail_level, conclusive=(bool(outcomes) or zero_update) and not unmeasured and not stop.is_set() and not notes)
    if model_info["inspection"]["verdict"] == "malicious":
        verdict = AuditVerdict.BLOCK
    return AuditReport(
        verdict=verdict,
        notes=tuple(notes),
        leakage=leakage,
        attacks=tuple(outcomes),
        skipped=skipped,
        fail_on=fail_level,
        model=model_info,
        data={
            "spec": data_spec,
            "sha256": data_sha256(data),
            "batch_sha256": batch_sha256(batch_x, batch_y),
            "n_examples": int(len(y_all)),
            "batch_indices": [int(i) for i in index],
            "batch_size": B,
            "class_counts": torch.bincount(batch_y, minlength=n_out).tolist(),
            "auxiliary_examples": 0 if aux is None or not threat.auxiliary_data else int(len(aux[1])),
        },
        update={**upd.summary(), "tensors_sha256": tensors_sha256(upd.tensors), "agreement": agreement},
        threat=threat.to_dict(),
        config={
            "seed": int(seed),
            "device": str(dev),
            "max_iterations": max_iterations,
            "time_budget": time_budget,
            "attacks_requested": requested,
            "attack_options": {k: dict(v) for k, v in options.items()},
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "exposure_requested": federation is not None,
        },
        seconds=time.perf_counter() - t_start,
        interrupted=stop.is_set(),
        tool_version=fedguard.__version__,
        exposure=exposure,
        true_images=batch_x,
        true_labels=batch_y,
    )
