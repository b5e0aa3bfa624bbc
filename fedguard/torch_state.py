"""Working inside torch's process-wide state without changing the caller's.

fedguard seeds torch's global generators where a layer's initialisation or
dropout needs them (a fresh ``--arch`` model, the client's local training),
trains (which needs gradients on) and builds tensors with torch's default
dtype. A library called from someone's notebook or Flower client must not
leave any of that changed, nor depend on how the caller set it: those
places run inside :func:`own_torch_state`, which sets what fedguard needs
and restores the caller's settings on the way out. That state is the
process's, not a thread's: calls from several threads take turns (a lock),
or each would restore the dtype and generators another had just set. Other
threads of the caller's own see fedguard's settings while a call runs (its
seeded global generator, float32 as the default dtype), and what they change
there meanwhile is undone when the call restores the caller's: a client
that draws from torch's global generator or sets the default dtype in
another thread should not do so while fedguard runs.
Modules that run in eval mode for a while get back each submodule's own
train/eval mode, not one mode for all (a caller's frozen BatchNorm or
disabled dropout in a training model stays as it was).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch

__all__ = [
    "evaluating",
    "evaluating_one_by_one",
    "kept_modes",
    "normalising_as_in_training",
    "own_random_state",
    "own_torch_state",
    "running_statistics",
]

#: Held while fedguard sets process-wide torch state; re-entrant, as those blocks nest.
_PROCESS_STATE = threading.RLock()


@contextlib.contextmanager
def kept_modes(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run the block, then give each submodule of ``module`` back its own train/eval mode (``module.train(mode)``
    would set one mode on all of them)."""
    modes = [(m, m.training) for m in module.modules()]
    try:
        yield module
    finally:
        for m, mode in modes:
            m.training = mode


@contextlib.contextmanager
def evaluating(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run the block with ``module`` in eval mode (BatchNorm at its running statistics, dropout off), then give
    each submodule back the mode its caller left it in."""
    with kept_modes(module):
        module.eval()
        yield module


@contextlib.contextmanager
def evaluating_one_by_one(module: torch.nn.Module, inputs: torch.Tensor) -> Iterator[torch.nn.Module]:
    """:func:`evaluating`, for running ``inputs`` through ``module`` in parts (an example or a chunk at a time): a
    BatchNorm that keeps no running statistics standardises every batch by its own, in eval mode too, and one
    example has none (honest models so built had failed the per-example checks); each such layer holds the
    statistics of all of ``inputs`` (at least two) as running ones meanwhile, and keeps none again afterwards."""
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
             and m.running_mean is None and m.running_var is None]  # fmt: skip
    settings = [(norm.track_running_stats, norm.momentum) for norm in norms]
    with kept_modes(module):
        module.eval()
        try:
            for norm in norms:
                like = {"device": inputs.device, "dtype": inputs.dtype}  # a float64 twin's statistics are float64
                norm.register_buffer("running_mean", torch.zeros(norm.num_features, **like))
                norm.register_buffer("running_var", torch.ones(norm.num_features, **like))
                norm.register_buffer("num_batches_tracked", torch.tensor(0, device=inputs.device))
                norm.track_running_stats = True
            with _holding_statistics(module, norms, inputs):
                yield module
        finally:
            for norm, (track, momentum) in zip(norms, settings):
                norm.track_running_stats, norm.momentum = track, momentum
                for name in ("running_mean", "running_var", "num_batches_tracked"):
                    norm.register_buffer(name, None)


@contextlib.contextmanager
def _holding_statistics(module: torch.nn.Module, norms: list[torch.nn.Module], inputs: torch.Tensor) -> Iterator[None]:
    """Run the block with ``norms`` (BatchNorm layers of ``module``, which is in eval mode) at the statistics of
    ``inputs``: one pass of them as a batch without gradients, those layers in training mode with momentum 1 (the
    running statistics become the batch's), then in eval mode. The momentum is the caller's to give back.

    A layer the forward pass calls more than once (one module applied to two tensors) standardises each call by
    that call's statistics, as training does; its running statistics keep only the last call's (a red team's
    BatchNorm applied to its features and once more to five times them, output unused, left planted units dead
    in the checks, which rebuilt 76-99 % of the layer's inputs in training, clean)."""
    calls: dict[torch.nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {norm: [] for norm in norms}

    def record(norm: torch.nn.Module, args: tuple) -> None:
        x = args[0].detach()
        dims = [0, *range(2, x.dim())]
        calls[norm].append((x.mean(dims), x.var(dims)))  # the variance unbiased, as the running one

    handles = [norm.register_forward_pre_hook(record) for norm in norms]
    try:
        for norm in norms:
            norm.momentum = 1.0
            norm.train()
        if norms:
            with torch.no_grad():
                module(inputs)
    finally:
        for handle in handles:
            handle.remove()
        for norm in norms:
            norm.eval()
    repeated = {norm: stats for norm, stats in calls.items() if len(stats) > 1}
    made = {norm: 0 for norm in repeated}

    def restart(_module: torch.nn.Module, _args: tuple) -> None:
        for norm in made:
            made[norm] = 0

    def per_call(norm: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if norm.training:  # an enclosing block's own statistics pass
            return None
        stats = repeated[norm]
        mean, var = stats[min(made[norm], len(stats) - 1)]
        made[norm] += 1
        return torch.nn.functional.batch_norm(args[0], mean, var, norm.weight, norm.bias, False, 0.0, norm.eps)

    handles = [module.register_forward_pre_hook(restart)] if repeated else []
    handles += [norm.register_forward_hook(per_call) for norm in repeated]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def running_statistics(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The normalisation layers of ``module`` (BatchNorm, InstanceNorm) that keep running statistics: in eval mode
    they standardise by those, in training by the batch's own."""
    return [m for m in module.modules()
            if isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.running_mean is not None]  # fmt: skip


@contextlib.contextmanager
def normalising_as_in_training(module: torch.nn.Module, inputs: torch.Tensor) -> Iterator[torch.nn.Module]:
    """Run the block with ``module`` in eval mode but for the layers of :func:`running_statistics`, which standardise
    as the client's training does: a BatchNorm by the statistics of ``inputs`` (at least two examples: the client's
    data, taken as one batch in a pass without gradients), an InstanceNorm each example by its own; dropout stays
    off. Each submodule's mode and those layers' running statistics and momentum are given back afterwards.

    The statistics of all the examples rather than of each batch the block runs: a BatchNorm that standardises
    ``n`` examples by their own cannot set any of them past ``sqrt(n - 1)`` standard deviations, and a red team's
    units that fire only past 4.2 stayed dead in chunks of 16 (3.87) while batches of 32 and 64 set them off (5.57,
    7.94), rebuilding half the digits of a batch of 64."""
    norms = running_statistics(module)
    saved = [([buffer.clone() for buffer in norm.buffers(recurse=False)], norm.momentum) for norm in norms]
    batch_norms = [norm for norm in norms if isinstance(norm, torch.nn.modules.batchnorm._BatchNorm)]
    with kept_modes(module):
        module.eval()
        try:
            for norm in batch_norms:
                norm.reset_running_stats()
            with _holding_statistics(module, batch_norms, inputs):
                for norm in norms:
                    norm.train(norm not in batch_norms)
                yield module
        finally:
            with torch.no_grad():
                for norm, (buffers, momentum) in zip(norms, saved):
                    norm.momentum = momentum
                    for buffer, value in zip(norm.buffers(recurse=False), buffers):
                        buffer.copy_(value)


@contextlib.contextmanager
def own_random_state(seed: int | None = None) -> Iterator[None]:
    """Run the block with torch's CPU generator (and those of CUDA devices already in use) restored afterwards;
    seeded with ``seed`` when given (:func:`torch.random.fork_rng`). CUDA first used inside the block is left as
    the caller's first use would have found it: seeded with the caller's seed (``torch.manual_seed`` and
    ``torch.seed`` seed CUDA with the CPU's, when CUDA starts; never seeded, both have the same default)."""
    cuda_ready = torch.cuda.is_initialized()
    devices = list(range(torch.cuda.device_count())) if cuda_ready else []
    caller_seed = torch.initial_seed()
    with _PROCESS_STATE:
        try:
            with torch.random.fork_rng(devices=devices):
                if seed is not None:
                    torch.manual_seed(seed)
                yield
        finally:
            if not cuda_ready and torch.cuda.is_initialized():
                torch.cuda.manual_seed_all(caller_seed)


@contextlib.contextmanager
def own_torch_state(seed: int | None = None) -> Iterator[None]:
    """:func:`own_random_state`, with gradients on (also inside the caller's ``no_grad`` or ``inference_mode``),
    float32 as the default dtype (a caller's ``torch.set_default_dtype(torch.float64)`` would build float64
    models and dummies that the float32 weights of a model file do not fit) and autograd's anomaly detection off
    (a caller's ``torch.autograd.set_detect_anomaly(True)`` makes the attacks' double backward 1.8x slower on
    the DLG LeNet, and a time budget had turned that into other figures: Inverting Gradients cut at 84 of 200
    iterations); all restored afterwards."""
    with _PROCESS_STATE:
        dtype = torch.get_default_dtype()
        torch.set_default_dtype(torch.float32)
        try:
            with (own_random_state(seed), torch.inference_mode(False), torch.enable_grad(),
                  torch.autograd.set_detect_anomaly(False)):
                yield
        finally:
            torch.set_default_dtype(dtype)
