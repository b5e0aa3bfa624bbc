"""The pending update: what the client would upload after training on its private batch.

:func:`compute_update` runs the client's local training exactly as an FL client
does (``model.train()``, mean cross-entropy, plain SGD) and returns an
:class:`Update`:

* ``fedsgd`` -- one gradient of the loss over the whole batch (McMahan et al.'s
  FedSGD; the setting of DLG and iDLG);
* ``fedavg`` -- ``local_steps`` SGD steps with learning rate ``local_lr`` on
  mini-batches of ``local_batch_size``, taken in order and cycling over the batch
  (the schedule of Geiping et al.'s multi-step experiments); the update is the
  weight difference ``W_T - W_0`` (new minus old).

Only parameters are part of the update; BatchNorm running statistics are not.
:func:`load_update` reads an update computed elsewhere (same names and shapes
as the model's parameters, same sign conventions).
"""

from __future__ import annotations

import copy
import functools
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedguard import checks
from fedguard.checks import is_number, is_whole
from fedguard.defenses import DPSGD, Defense, GaussianNoise, Pruning, PrivateGradients, check_defense
from fedguard.errors import InputError, first_of, keyword_names, kind_of
from fedguard.modelview import first_non_finite
from fedguard.torch_state import own_torch_state

__all__ = ["PROTOCOLS", "Update", "average_gradient", "compute_update", "load_update"]

PROTOCOLS: tuple[str, ...] = ("fedsgd", "fedavg")
#: Below this a local SGD step (lr times a gradient of order one) is under float32's resolution of a weight of 0.001
#: (about 1e-10), so the update is zero, and reading it back as a gradient divides by almost nothing.
MIN_LOCAL_LR = 1e-10
#: The most local steps an audit takes. Every attack on a FedAvg update replays the local steps (Inverting
#: Gradients unrolls them in each iteration, label counts simulate them dozens of times), so the cost of an
#: audit grows with them: at 17 ms a step on the DLG LeNet, 1000 steps take 17 s to compute once.
MAX_LOCAL_STEPS = 1000
#: Rise of the cross-entropy within the local steps (in nats) beyond which local training has diverged: 100 nats
#: puts a probability of e^-100 on the true label. Finite weights can hide it: at --local-lr 1e30 the DLG LeNet's
#: loss goes from 2.3 to about 1e31 in one step and the update stays finite, so the NaN check alone passed it.
DIVERGED_NATS = 100.0
#: Distance from the model's own parameters, relative to the update's size, below which an update read in is the
#: model's weights (W_T, or W_0 sent back), not a gradient or W_T - W_0. Measured on digits (MLP, LeNet, ConvNet,
#: two inits each; FedSGD batches 8 and 64; FedAvg 5 steps at lr 0.01 to 50 steps at lr 1.0): a true update lies
#: 1.3x (ConvNet FedSGD) to 450x its size away; W_T lies 0.002-0.08x away (0.4-0.9x only after 20-50 steps at
#: lr 0.3-1.0, which the agreement check then flags). Attacked as an update, weights rebuild nothing.
WEIGHTS_DISTANCE = 0.5


def is_zero(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every value of ``tensors`` is zero (an update that carries nothing)."""
    return not any(bool(t.any()) for t in tensors)


def l2_norm(tensors: Iterable[Any]) -> float:
    """The L2 norm of ``tensors`` (tensors or arrays) taken together, in float64."""
    return math.sqrt(sum(float(torch.as_tensor(t).double().square().sum()) for t in tensors))


def _check_mapping(tensors: Any) -> None:
    """InputError unless ``tensors`` maps names to an update's tensors."""
    if not isinstance(tensors, Mapping):
        raise InputError(f"update.tensors is {kind_of(tensors)}; pass a dict of parameter names to tensors "
                         "(name a Flower list of arrays in state_dict order: dict(zip(model.state_dict(), arrays)))")


def average_gradient(
    tensors: Mapping[str, torch.Tensor], protocol: str, local_steps: int | None, local_lr: float | None
) -> dict[str, torch.Tensor]:
    """An update as one average gradient: FedSGD's as it is, FedAvg's weight change ``W_T - W_0`` as
    ``(W_0 - W_T) / (T * lr)``, the form Geng et al. (2021) use to extend label counting to several local steps."""
    if protocol == "fedsgd":
        return dict(tensors)
    scale = -1.0 / (local_steps * float(local_lr))
    return {name: t * scale for name, t in tensors.items()}


class TrainingDiverged(InputError):
    """Local training ran into NaN or infinite weights (a learning rate far too high for the model)."""


@dataclass(frozen=True)
class Update:
    """What would be uploaded, per parameter name.

    Parameters
    ----------
    tensors : mapping of str to tensor or numpy array
        ``fedsgd``: the gradient of the mean loss; ``fedavg``: ``W_T - W_0``;
        per parameter name (numpy arrays are copied into tensors).
    protocol : {"fedsgd", "fedavg"}
    batch_size : int
        Examples in the private batch the update was computed on.
    local_steps, local_lr, local_batch_size : int, float, int or None
        FedAvg's local schedule: its SGD steps (default 1), their learning
        rate (required for ``fedavg``) and examples per step (None: the whole
        batch). FedSGD has none: leave them at 1, None, None.
    defense : str
        Defense applied before upload, as declared: ``none`` for an update
        fedguard computed, ``unknown`` by default (an update read from a file
        or built elsewhere: fedguard measures what leaks, it does not tell
        which defense made the update), else the caller's name for it, e.g.
        ``dp-sgd``.
    epsilon, delta : float or None
        DP guarantee of the defense, when it has one, as declared:
        ``epsilon >= 0``, ``0 <= delta < 1``; ``delta`` only with ``epsilon``
        (``epsilon`` alone is pure DP), and neither for ``none`` or
        ``unknown``. Not proven against the update; the audit notes an update
        that carries no measurable noise.
    source : str
        ``computed`` or the path of the file it was read from.
    sha256 : str or None
        The SHA-256 of that file (None when computed here).
    loss : float or None
        Training loss on the batch before the first step (client-side only).
    extra : mapping
        What else the upload carries beside the parameters' update:
        ``running_statistics``, the names of BatchNorm running statistics an
        update file holds (the audit notes them; no attack reads them).
    defense_settings : mapping or None
        The settings of a defense fedguard applied itself
        (:mod:`fedguard.defenses`; ``epsilon`` is then computed, not
        declared); None otherwise.

    Raises
    ------
    InputError
        For what no upload can be: tensors that are not a mapping of numeric
        tensors or arrays, a batch size that is not a positive whole number,
        an unknown protocol, a FedAvg schedule that cannot run (no or a
        non-positive ``local_lr``, ``local_steps`` outside 1..1000, a local
        batch larger than the batch), a FedSGD update given a schedule, or a
        DP guarantee that is out of range or declared without a defense.
    """

    tensors: Mapping[str, torch.Tensor | np.ndarray]
    protocol: str
    batch_size: int
    local_steps: int = 1
    local_lr: float | None = None
    local_batch_size: int | None = None
    defense: str = "unknown"
    epsilon: float | None = None
    delta: float | None = None
    source: str = "computed"
    sha256: str | None = None
    loss: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    defense_settings: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        """InputError for what no upload can be: tensors that are no mapping, a batch that is no positive whole
        number, an unknown protocol or a FedAvg schedule that cannot run (its methods had failed on them later).
        numpy arrays among the tensors are taken as tensors (copied)."""
        _check_mapping(self.tensors)
        for name, value in self.tensors.items():
            if not isinstance(value, (torch.Tensor, np.ndarray, np.generic)) or isinstance(value, np.ma.MaskedArray) or (
                    not isinstance(value, torch.Tensor) and value.dtype.kind not in "biufc"):  # a mask would be dropped
                what = ("a masked array (its mask would be dropped; pass value.filled())" if isinstance(value, np.ma.MaskedArray)
                        else f"a numpy array of {value.dtype}" if isinstance(value, (np.ndarray, np.generic)) else kind_of(value))
                raise InputError(f"update.tensors[{name!r}] is {what}; pass a tensor (or a numpy array) of numbers per parameter")
        if not all(isinstance(v, torch.Tensor) for v in self.tensors.values()):  # repr and to() had failed on arrays
            from fedguard.loading import numpy_tensor  # as a file's arrays are read; copied first: torch takes no
            # negative strides (a reversed view) and warns of read-only arrays

            object.__setattr__(self, "tensors", {k: v if isinstance(v, torch.Tensor) else numpy_tensor(np.array(v))
                                                 for k, v in self.tensors.items()})  # fmt: skip
        if not isinstance(self.extra, Mapping):
            raise InputError(f"update extra is {kind_of(self.extra)}; pass a mapping (e.g. {{}}), or leave it out")
        if not is_whole(self.batch_size) or self.batch_size < 1:
            raise InputError(f"bad update batch_size {self.batch_size!r}; give the number of examples it was computed on")
        check_protocol(self.protocol, self.local_steps, self.local_lr, self.local_batch_size, int(self.batch_size))
        if not isinstance(self.defense, str) or not self.defense.strip():
            raise InputError(f"update defense is {checks.shown(self.defense)}; name it, e.g. 'dp-sgd', or leave it 'unknown'")
        for name, value, upper in (("epsilon", self.epsilon, math.inf), ("delta", self.delta, 1.0)):
            if value is not None and not (is_number(value) and 0 <= value < upper):
                bound = "a finite number of at least 0" if upper == math.inf else "a number from 0 to below 1"
                raise InputError(f"bad update {name} {checks.shown(value)}; give {bound}, or None when the defense has no DP guarantee")
        settings = self.defense_settings
        if settings is not None and not (isinstance(settings, Mapping) and all(
                isinstance(k, str) and is_number(v) and math.isfinite(v) for k, v in settings.items())):
            raise InputError(f"update defense_settings is {checks.shown(settings)}; give a mapping of setting names to "
                             "numbers (as fedguard.defenses' settings()), or None")
        if self.delta is not None and self.epsilon is None:
            raise InputError(f"update delta {self.delta:g} given without epsilon: an (epsilon, delta) guarantee needs both; "
                             "give epsilon too, or drop delta")
        if self.epsilon is not None and self.defense.strip() in ("none", "unknown"):
            raise InputError(f"update epsilon {self.epsilon:g} given with defense {self.defense.strip()!r}: a DP guarantee is "
                             "a defense's; name it (e.g. defense='dp-sgd') or drop epsilon and delta")

    def __repr__(self) -> str:
        """The fields, with the tensors summarised (printed whole, a LeNet's ran to 32 KB)."""
        fields = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items() if k != "tensors")
        values = sum(int(t.numel()) for t in self.tensors.values())
        return f"Update(tensors=<{len(self.tensors)} tensors, {values:,} values>, {fields})"

    def as_gradient(self) -> dict[str, torch.Tensor]:
        """The update as one average gradient (:func:`average_gradient`)."""
        return average_gradient(self.tensors, self.protocol, self.local_steps, self.local_lr)

    def norm(self) -> float:
        return l2_norm(self.tensors.values())

    def to(self, device: torch.device) -> "Update":
        return Update(**{**self.__dict__, "tensors": {k: v.to(device) for k, v in self.tensors.items()}})

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (no tensors)."""
        return {
            "protocol": self.protocol,
            "batch_size": int(self.batch_size),
            "local_steps": int(self.local_steps),
            "local_lr": self.local_lr,
            "local_batch_size": self.local_batch_size,
            "defense": self.defense,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "source": self.source,
            "sha256": self.sha256,
            "n_tensors": len(self.tensors),
            "n_parameters": int(sum(math.prod(t.shape) for t in self.tensors.values())),
            "norm": self.norm(),
            "loss": self.loss,
            "defense_settings": None if self.defense_settings is None else dict(self.defense_settings),
        }


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda`` without a GPU is an InputError."""
    if isinstance(device, torch.device):
        if device.type not in ("cpu", "cuda"):
            raise InputError(f"device {device} is not supported; use auto, cpu or cuda")
        device = str(device)
    if device is not None and not isinstance(device, str):
        raise InputError(f"bad device {device!r}; use auto, cpu, cuda or cuda:N")
    text = (device or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        try:
            dev = torch.device(text)
        except RuntimeError:
            raise InputError(f"bad device {device!r}; use auto, cpu, cuda or cuda:N") from None
        if not torch.cuda.is_available():
            raise InputError("--device cuda but PyTorch sees no CUDA GPU here; use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) here; use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
        return dev
    raise InputError(f"bad device {device!r}; use auto, cpu, cuda or cuda:N")


def minibatch_slices(batch_size: int, local_batch_size: int, local_steps: int) -> list[slice]:
    """The mini-batch of each local step: consecutive slices of the batch, cycling, in order.

    With ``B`` examples and mini-batches of ``b``, step ``t`` uses slice
    ``t mod ceil(B/b)`` (the last one may be shorter). The attack that unrolls
    FedAvg uses the same schedule.
    """
    b = max(1, min(int(local_batch_size), int(batch_size)))
    n = math.ceil(batch_size / b)
    return [slice((t % n) * b, min(batch_size, (t % n) * b + b)) for t in range(local_steps)]


def _most_steps_per_example(protocol: str, batch_size: int, local_batch_size: int | None, local_steps: int) -> int:
    """How many local steps the example used most often takes part in (:func:`minibatch_slices`; 1 for FedSGD):
    what DP-SGD's accounting composes."""
    if protocol == "fedsgd":
        return 1
    counts = [0] * batch_size
    for sl in minibatch_slices(batch_size, local_batch_size or batch_size, local_steps):
        for i in range(sl.start, sl.stop):
            counts[i] += 1
    return max(counts)


@keyword_names
def check_protocol(protocol: str, local_steps: int, local_lr: float | None, local_batch_size: int | None, batch_size: int) -> None:
    """InputError for an unknown protocol, a FedAvg schedule that cannot run, or a FedSGD update given a schedule
    (its one gradient has none: a report had said ``fedsgd`` beside five local steps)."""
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    if protocol == "fedsgd":
        given = [f"{flag} {value!r}" for flag, value, none in (("--local-steps", local_steps, 1), ("--local-lr", local_lr, None),
                                                                 ("--local-batch-size", local_batch_size, None)) if value != none]
        if given:
            raise InputError(f"{', '.join(given)} given for a fedsgd update (one gradient, no local steps); "
                             "use protocol fedavg for an update of local SGD steps, or leave them out")
    if protocol == "fedavg":
        if not is_whole(local_steps) or local_steps < 1:
            raise InputError(f"bad --local-steps {local_steps!r}; give a positive number of local SGD steps such as 5")
        if local_steps > MAX_LOCAL_STEPS:
            raise InputError(
                f"--local-steps {local_steps} is more than an audit replays (at most {MAX_LOCAL_STEPS}: every attack "
                "re-runs the local steps); audit a shorter schedule"
            )
        if local_lr is None:
            raise InputError("a fedavg update needs --local-lr, the learning rate of its local steps, such as 0.01")
        if not is_number(local_lr) or not (math.isfinite(local_lr) and local_lr > 0):
            raise InputError(f"bad --local-lr {local_lr!r}; give a positive learning rate such as 0.01")
        if float(local_lr) < MIN_LOCAL_LR:
            raise InputError(f"--local-lr {local_lr!r} is below {MIN_LOCAL_LR:g}: its steps vanish in float32 weights; give a learning rate such as 0.01")
        if local_batch_size is not None and not is_whole(local_batch_size):
            raise InputError(f"bad --local-batch-size {local_batch_size!r}; give a whole number of examples per local step")
        if local_batch_size is not None and not 1 <= local_batch_size <= batch_size:
            raise InputError(
                f"--local-batch-size {local_batch_size} does not fit a batch of {batch_size}; give 1..{batch_size}"
            )


def checked_schedule(
    protocol: str, local_steps: int, local_lr: float | None, local_batch_size: int | None, batch_size: int
) -> tuple[int, float | None, int | None]:
    """``(local_steps, local_lr, local_batch_size)`` as ``protocol`` runs them on a batch of ``batch_size``: FedSGD's
    one gradient ``(1, None, None)``, FedAvg's steps on the whole batch unless a local batch is given; InputError
    (:func:`check_protocol`) for a schedule that cannot run."""
    if protocol == "fedsgd":
        local_steps, local_lr, local_batch_size = 1, None, None
    elif local_batch_size is None:
        local_batch_size = batch_size
    check_protocol(protocol, local_steps, local_lr, local_batch_size, batch_size)
    return local_steps, local_lr, local_batch_size


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _plain_gradients(net: nn.Module, params: Mapping[str, nn.Parameter], inputs: torch.Tensor,
                     labels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:  # fmt: skip
    """A mini-batch's mean cross-entropy and its gradient, as plain SGD takes its step."""
    logits = net(inputs)
    loss = F.cross_entropy(logits, checks.class_labels(labels, logits))
    return loss, _gradients(loss, params)


def _gradients(loss: torch.Tensor, params: Mapping[str, nn.Parameter]) -> list[torch.Tensor]:
    """d loss / d each parameter; zeros for one the forward does not use (an auxiliary head), as an optimizer
    leaves it and the client uploads it (autograd had refused the whole model)."""
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params.values())]


@keyword_names(aliases={"--arch": "model", "--input-shape": "inputs", "--data": "labels", "--batch-size": "inputs",
                        "--delta": "DPSGD delta", "--noise-multiplier": "DPSGD noise_multiplier"})
def compute_update(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    protocol: str = "fedsgd",
    local_steps: int = 5,
    local_lr: float = 0.01,
    local_batch_size: int | None = None,
    seed: int = 0,
    allow_divergence: bool = False,
    defense: Defense | None = None,
) -> Update:
    """Compute the update the client would upload after training on ``(inputs, labels)``.

    ``model`` is not modified (a copy is trained, in ``train()`` mode throughout: a
    caller's frozen BatchNorm or disabled dropout in that copy is set training,
    and the module's own hooks run on it). Inputs, labels and the model must be
    on the same device; the update's tensors are on that device.
    ``defense`` (:mod:`fedguard.defenses`) is applied as the client would:
    DP-SGD at every local step, pruning or noise on the update (seeded by
    ``seed``); the update says which, with DP-SGD's epsilon for the round.
    FedAvg training whose loss rises by :data:`DIVERGED_NATS` is refused, as
    no client would upload it, unless ``allow_divergence`` (a server's
    simulation: a crafted model may make training diverge on purpose).

    Parameters
    ----------
    model : torch.nn.Module
        The received global model; the update is over its trainable
        parameters (left unchanged: a copy is trained).
    inputs, labels : torch.Tensor
        The private batch: ``[N, ...]`` float inputs exactly as the model takes
        them and ``[N]`` integer class labels (no conversion here: numpy
        arrays and integer pixels are what :func:`fedguard.audit.audit`'s
        ``data`` converts, through :func:`fedguard.data.load_data`).
    protocol : {"fedsgd", "fedavg"}
        ``fedsgd``: the gradient of the mean loss on the batch; ``fedavg``:
        the weight change ``W_T - W_0`` after ``local_steps`` of plain SGD.
    local_steps, local_lr, local_batch_size : int, float, int or None
        FedAvg's schedule (ignored for FedSGD): steps, learning rate, and
        examples per step taken as consecutive mini-batches of the batch
        (None: the whole batch each step).
    seed : int
        Seeds the copy's dropout and the defense's randomness.
    allow_divergence : bool
        Return the update of FedAvg training that diverged instead of
        refusing it.
    defense : fedguard.defenses.Defense or None
        ``DPSGD``, ``Pruning`` or ``GaussianNoise``, applied as above.

    Returns
    -------
    Update
        The update with its schedule, defense and the batch's loss at the
        received weights (``source="computed"``).

    Raises
    ------
    InputError
        For an unknown protocol, a FedAvg schedule that cannot run, a model
        that cannot train on this batch (e.g. BatchNorm with a batch of one),
        or training that diverges.
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"model is {kind_of(model)}; pass the torch.nn.Module to train")
    if not (isinstance(inputs, torch.Tensor) and isinstance(labels, torch.Tensor)):
        raise InputError(f"inputs and labels are {kind_of(inputs)} and {kind_of(labels)}; pass tensors ([N, C, H, W] and [N])")
    meta = [what for what, on in (("inputs", inputs.is_meta), ("labels", labels.is_meta),
                                  ("the model", any(t.is_meta for t in (*model.parameters(), *model.buffers())))) if on]
    if meta:  # shapes without values: torch had raised "META device type not an accelerator"
        raise InputError(f"{' and '.join(meta)} {'is' if len(meta) == 1 else 'are'} on the meta device (shapes without "
                         "values); load the values first")
    if labels.dim() != 1 or len(labels) != len(inputs) or len(labels) == 0 or labels.is_floating_point() or labels.is_complex():
        raise InputError(f"labels of shape {list(labels.shape)} and dtype {labels.dtype} for {len(inputs)} inputs; pass one integer class label per example")
    if int(labels.min()) < 0:  # cross-entropy skips -100 (its ignore_index): the update would leave those examples out
        raise InputError(f"labels hold negative values (min {int(labels.min())}); pass class labels 0, 1, 2, ...")
    labels = labels.long()  # int32 or uint8 labels, which cross-entropy refuses
    if not inputs.is_floating_point():
        raise InputError(f"inputs are {inputs.dtype}; pass float images in [0, 1] (divide 0-255 pixels by 255)")
    dtypes = sorted({str(p.dtype) for p in model.parameters() if p.is_floating_point()})
    if dtypes and str(inputs.dtype) not in dtypes:
        raise InputError(f"inputs are {inputs.dtype} but the model's weights {' and '.join(dtypes)}; pass inputs of the model's dtype")
    seed = checks.whole(seed, "seed", 0, 2**63 - 1)  # torch's generators' range: the audit passes its seed plus offsets
    allow_divergence = checks.flag(allow_divergence, "allow_divergence")
    check_defense(defense)
    batch = int(inputs.shape[0])
    local_steps, local_lr, local_batch_size = checked_schedule(protocol, local_steps, local_lr, local_batch_size, batch)
    # before training: a noise multiplier too small for any bound is refused without training first
    epsilon = (defense.epsilon(_most_steps_per_example(protocol, batch, local_batch_size, local_steps), batch)
               if isinstance(defense, DPSGD) else None)  # fmt: skip
    # dropout masks from seed, the caller's generators and default dtype kept; training works inside the caller's
    # no_grad and inference_mode too (the copy is made outside inference mode, or its weights could not be trained)
    with own_torch_state(seed):
        try:
            net = copy.deepcopy(model)
        except RuntimeError as exc:  # a computed tensor held as an attribute: the legacy weight_norm's weight
            raise InputError("the model cannot be copied to train it (a tensor attribute that is not a leaf, as the legacy "
                             "torch.nn.utils.weight_norm keeps); use torch.nn.utils.parametrizations.weight_norm") from exc
        net.train()
        params = _trainable(net)
        if not params:
            raise InputError("the model has no trainable parameters; there is no update to audit")
        # made under the caller's inference_mode: autograd cannot save them for backward
        inputs, labels = (t.clone() if t.is_inference() else t for t in (inputs, labels))
        generator = torch.Generator(device=inputs.device).manual_seed(seed)
        try:
            if isinstance(defense, DPSGD):
                step = PrivateGradients(net, params, defense, generator)
            else:
                step = functools.partial(_plain_gradients, net, params)
            if protocol == "fedsgd":
                loss, grads = step(inputs, labels)
                tensors = {name: g.detach() for name, g in zip(params, grads)}
                first_loss = float(loss.detach())
            else:
                start = {name: p.detach().clone() for name, p in params.items()}
                losses = []
                for sl in minibatch_slices(batch, local_batch_size, local_steps):
                    loss, grads = step(inputs[sl], labels[sl])
                    losses.append(loss.detach())
                    with torch.no_grad():
                        for p, g in zip(params.values(), grads):
                            p.sub_(float(local_lr) * g)
                tensors = {name: (p.detach() - start[name]) for name, p in params.items()}
                first_loss, worst = float(losses[0]), float(torch.stack(losses).max())
                if worst > first_loss + DIVERGED_NATS and not allow_divergence:
                    raise InputError(
                        f"local training diverged at --local-lr {local_lr:g}: the loss rose from {first_loss:.3g} to "
                        f"{worst:.3g} within the local steps, an update no client would upload; lower --local-lr"
                    )
        except (InputError, MemoryError):
            raise
        except Exception as exc:  # the model's own code can raise anything (IndexError: a label outside its classes)
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if not isinstance(exc, (RuntimeError, ValueError, IndexError)):
                text = f"{type(exc).__name__}: {text}"
            if "more than 1 value per channel" in text:
                if protocol == "fedavg" and batch > 1:  # a local mini-batch of one: the whole batch, or the last slice
                    raise InputError(
                        f"the model has BatchNorm and cannot train on a local mini-batch of one example (--local-batch-size "
                        f"{local_batch_size} over a batch of {batch}); use a --local-batch-size that leaves 2 or more in each"
                    ) from None
                raise InputError(
                    "the model has BatchNorm and cannot train on a batch of one example; use a batch of 2 or more (--batch-size)"
                ) from None
            raise InputError(f"training the model on the batch failed ({text[:160]}); check --arch, --input-shape and --data") from None
        if isinstance(defense, (Pruning, GaussianNoise)):
            tensors = defense.apply(tensors, generator)
    if first_non_finite(tensors) is not None:
        if protocol == "fedavg":
            raise TrainingDiverged("the update holds NaN or infinite values (training diverged); lower --local-lr or check the model")
        raise InputError("the gradient holds NaN or infinite values; check the model: its loss on this batch is not finite")
    return Update(
        tensors=tensors,
        protocol=protocol,
        batch_size=batch,
        local_steps=int(local_steps),
        local_lr=None if local_lr is None else float(local_lr),
        local_batch_size=local_batch_size,
        defense="none" if defense is None else defense.name,
        epsilon=epsilon,
        delta=defense.delta if isinstance(defense, DPSGD) else None,
        loss=first_loss,
        defense_settings=None if defense is None else defense.settings(),
    )


@keyword_names(aliases={"--update": "path", "--arch": "model"})
def load_update(
    path: str | Path,
    model: nn.Module,
    *,
    batch_size: int,
    protocol: str = "fedsgd",
    local_steps: int = 5,
    local_lr: float = 0.01,
    local_batch_size: int | None = None,
) -> Update:
    """Read an update computed elsewhere; its tensors must match ``model``'s parameters.

    Accepts what :func:`fedguard.loading.load_model_file` accepts: a mapping of
    parameter names to tensors (FedSGD: the gradient; FedAvg: ``W_T - W_0``),
    or an unnamed Flower-style list in parameter order or ``state_dict`` order
    (buffers such as BatchNorm's running statistics are left out). A file that
    would run code when loaded is refused.
    """
    from fedguard.loading import load_model_file

    if not isinstance(model, nn.Module):
        raise InputError(f"model is {kind_of(model)}; pass the nn.Module the update was computed from")
    if not is_whole(batch_size) or batch_size < 1:
        raise InputError(f"bad --batch-size {batch_size!r} for the update; give the number of examples it was computed on")
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"update is {kind_of(path)}; pass the path of the update file")
    if os.path.isdir(path):
        raise InputError(f"--update {path} is a directory; pass the update file (.pt, .safetensors or .npz)")
    loaded = load_model_file(path)
    if loaded.refused:
        raise InputError(f"--update {path} would execute code when loaded; fedguard will not load it, export the tensors with torch.save(dict_of_tensors)")
    out = _matched_tensors(dict(loaded.tensors), loaded.named, model, f"--update {path}")
    local_steps, local_lr, local_batch_size = checked_schedule(protocol, local_steps, local_lr, local_batch_size, batch_size)
    return Update(
        tensors=out,
        protocol=protocol,
        batch_size=int(batch_size),
        local_steps=int(local_steps),
        local_lr=None if local_lr is None else float(local_lr),
        local_batch_size=local_batch_size,
        source=str(path),
        sha256=loaded.sha256,
        extra={"running_statistics": stats} if (stats := running_statistics(loaded.tensors, loaded.named, model)) else {},
    )


def _named_list(values: list[Any], model: nn.Module) -> dict[str, Any] | None:
    """An unnamed list of tensors (as Flower sends) named layer by layer in ``model``'s trainable-parameter order, else
    in its ``state_dict`` order (buffers included), or None when neither lines up
    (:func:`~fedguard.loading.name_in_order`)."""
    from fedguard.loading import name_in_order

    params = {name: p.shape for name, p in _trainable(model).items()}
    state = {k: t.shape for k, t in model.state_dict().items()}
    return name_in_order(params, values, deltas=True) or name_in_order(state, values, deltas=True)


def running_statistics(tensors: Mapping[str, Any], named: bool, model: nn.Module) -> list[str]:
    """Names of the BatchNorm running means and variances of ``model`` that ``tensors`` (an update as read, named or
    an unnamed list in ``state_dict`` order) carries with a nonzero value: statistics of the client's batch that go
    to the server beside the parameters (Flower's ``state_dict`` lists hold them), which no attack here reads."""
    if not named:
        tensors = _named_list(list(tensors.values()), model) or {}
    stats = dict(model.named_buffers())
    return [name for name, t in tensors.items() if name in stats and name.rsplit(".", 1)[-1] in ("running_mean", "running_var")
            and isinstance(t, torch.Tensor) and bool(t.detach().any())]  # fmt: skip


def _matched_tensors(tensors: dict[str, Any], named: bool, model: nn.Module, where: str) -> dict[str, torch.Tensor]:
    """``tensors`` as one finite floating-point tensor per trainable parameter of ``model`` (same names, shapes,
    device and dtype), not all zero, or InputError starting with ``where``. An unnamed list, as Flower sends, is named layer by
    layer in parameter or ``state_dict`` order, with or without the buffers (Flower's usual
    ``[v.numpy() for v in net.state_dict().values()]`` holds them; :func:`~fedguard.loading.name_in_order`);
    the model's buffers and frozen parameters, named or not, are left out, since they are not trained (a nonzero
    tensor for a frozen parameter says the client trained it: InputError, as for the model's weights passed as
    the update, see :data:`WEIGHTS_DISTANCE`). Named tensors are matched by name only: two of one shape in another
    order would pass a check by position."""
    params = _trainable(model)
    state = {name: t.shape for name, t in model.state_dict().items()}
    if not named:
        values = list(tensors.values())
        tensors = _named_list(values, model)
        if tensors is None:
            raise InputError(
                f"{where} has {len(values)} unnamed tensors that do not line up with the model's {len(params)} "
                f"parameters ({len(state)} state_dict entries with its buffers); save a dict of parameter names to tensors"
            )
    frozen = {name: p for name, p in model.named_parameters() if not p.requires_grad}
    moved = [name for name, t in tensors.items() if name in frozen and isinstance(t, torch.Tensor) and t.is_floating_point()
             and tuple(t.shape) == tuple(frozen[name].shape) and bool(t.detach().any())]  # fmt: skip
    tensors = {name: t for name, t in tensors.items() if name in params or name not in state}
    missing = [name for name in params if name not in tensors]
    extra = [name for name in tensors if name not in params]
    if missing and len(missing) == len(params) and extra:
        raise InputError(
            f"{where} names none of the model's parameters (it has {extra[0]!r}, the model {missing[0]!r}); "
            "it comes from another architecture (check --arch) or its names carry a prefix; name its tensors as "
            "model.named_parameters() does"
        )
    if missing:
        raise InputError(f"{where} has no tensor for parameter {first_of(missing)}; give one tensor per model parameter, "
                         "named as in model.named_parameters()")  # fmt: skip
    if extra:
        raise InputError(f"{where} has tensor {extra[0]!r} that is not a parameter of the model; remove it or check --arch")
    out = {}
    for name, p in params.items():
        t = tensors[name]
        if not isinstance(t, torch.Tensor):
            raise InputError(f"{where}: {name} is {kind_of(t)}; an update holds torch tensors")
        if tuple(t.shape) != tuple(p.shape):
            raise InputError(
                f"{where}: layer {name} has shape {list(t.shape)} but the model's parameter has {list(p.shape)}; "
                "the update does not come from this model"
            )
        if not t.is_floating_point():
            raise InputError(f"{where}: {name} has dtype {t.dtype}; an update holds floating-point values")
        t = t.detach().to(device=p.device, dtype=p.dtype)
        if not torch.isfinite(t).all():
            raise InputError(f"{where}: {name} holds NaN or infinite values; recompute the update")
        out[name] = t
    if is_zero(out.values()):
        raise InputError(f"{where} is zero everywhere, which training leaves only where the model passes no gradient "
                         "for the batch; pass the gradient (FedSGD) or W_T - W_0 (FedAvg) the client would upload, or "
                         "audit without --update to have the update computed (a zero one reveals nothing)")  # fmt: skip
    size = l2_norm(out.values())
    distance = l2_norm(out[n] - p.detach() for n, p in params.items())
    if distance < WEIGHTS_DISTANCE * size:
        raise InputError(
            f"{where} holds the model's weights, not an update (its distance from the model's parameters is "
            f"{distance / size:.1%} of its own size); pass the gradient (FedSGD) or W_T - W_0 (FedAvg) the client would upload"
        )
    if moved:
        raise InputError(
            f"{where} changes {first_of(moved)}, which the model freezes (requires_grad=False); the client trained a "
            "model with it unfrozen: build --arch as the client trains it, or zero that tensor if it is not uploaded"
        )
    return out


def checked_update(update: Update, model: nn.Module, batch_size: int) -> Update:
    """An in-memory ``update`` checked as :func:`load_update` checks a file: one finite tensor per parameter of
    ``model`` (moved to its device), computed on ``batch_size`` examples with a schedule that can run.

    Raises
    ------
    InputError
        Naming the tensor, the count or the schedule that does not fit.
    """
    if not isinstance(update, Update):
        raise InputError(f"update is {kind_of(update)}; pass an Update(tensors=..., protocol=..., batch_size=...)")
    if not isinstance(model, nn.Module):
        raise InputError(f"model is {kind_of(model)}; pass the nn.Module the update is for")
    _check_mapping(update.tensors)
    from fedguard.loading import to_state_dict

    tensors, named = to_state_dict(dict(update.tensors), "update")  # module. prefixes, numpy arrays: as in a file
    out = _matched_tensors(tensors, named, model, "update")
    if not is_whole(update.batch_size) or int(update.batch_size) != int(batch_size):
        raise InputError(
            f"the update was computed on {update.batch_size!r} examples but the data holds {batch_size}; "
            "pass exactly the batch the update came from"
        )
    local_batch_size = update.local_batch_size
    if update.protocol == "fedavg" and local_batch_size is None:
        local_batch_size = batch_size
    check_protocol(update.protocol, update.local_steps, update.local_lr, local_batch_size, batch_size)
    stats = running_statistics(tensors, named, model)
    extra = {**update.extra, "running_statistics": stats} if stats else update.extra
    return replace(update, tensors=out, local_batch_size=local_batch_size, extra=extra)
