"""Shared machinery of the optimisation attacks: simulate the client, compare updates.

The server holds the global model and the protocol. For a guess of the batch
it can compute the update the client *would* have sent (one gradient, or the
unrolled FedAvg steps) and compare it with the one it received.
:class:`MatchingObjective` does this for ``K`` guesses at once (one per random
start or restart) and returns each guess's loss and its gradient with respect
to the guess, through one of two engines:

* ``vmap`` -- ``torch.func.vmap`` over the guesses of ``torch.func.grad``:
  one batched evaluation, no Python loop per guess; far faster for small
  models and on GPUs;
* ``loop`` -- plain autograd, one autograd graph per guess; the distance's
  gradient with respect to the simulated update is formed in closed form and
  pushed back with one vector-Jacobian product (no autograd graph through the
  flattened, parameter-sized cosine), and convolutions whose second
  derivative forms only the images' gradient
  (:mod:`fedguard.attacks._split_conv`); faster for large models on CPU. On a
  CPU with several threads, several guesses run side by side in worker
  threads, each with its own copy of the model and its share of the
  intra-op threads. A batch-1 ResNet-18 at 32x32 keeps two cores only about
  two-thirds busy (two threads evaluate one guess 1.5x faster than one
  thread); two guesses in two single-threaded workers take 405 ms where one
  after the other take 538 ms (medians of 12 on 2 cores: 1.33x). A batch of
  four keeps two threads busy already: 1.2-1.5x in short measurements, about
  none over a 1000-iteration run (``docs/benchmarks.md``).

``engine="auto"`` picks one by a fixed rule, so that a seed always gives the
same numbers (the two engines round differently): ``vmap`` on a GPU, and on
a CPU for several guesses of a model up to :data:`VMAP_MAX_PARAMETERS`
parameters; ``loop`` otherwise. Measured on 2 CPU cores: the DLG LeNet (15 k
parameters, 4 starts) 7.5-9 ms per evaluation with vmap vs 13-17 ms with the
loop; the 270 k-parameter MLP (2 restarts) 4.5 ms vs 3 ms; a single guess is
always faster in the loop (3.5 ms vs 7-8 ms on the DLG LeNet).
BatchNorm layers use the statistics of the batch (as in training) in both.
"""

from __future__ import annotations

import copy
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from torch.func import functional_call, grad, grad_and_value, replace_all_batch_norm_modules_, vmap

from fedguard.threat import ServerView
from fedguard.update import minibatch_slices

from ._split_conv import SplitConvolutions

__all__ = ["ServerModel", "MatchingObjective", "total_variation", "DISTANCES"]

#: ``engine="auto"`` uses vmap on a CPU only for several guesses of a model this small (see above).
VMAP_MAX_PARAMETERS = 100_000

DISTANCES = ("l2", "cosine")


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation as in Geiping et al.'s code: mean |dx| + mean |dy| over the tensor."""
    return (x[..., :, :-1] - x[..., :, 1:]).abs().mean() + (x[..., :-1, :] - x[..., 1:, :]).abs().mean()


class ServerModel:
    """The server's functional copy of the global model, simulating the client's update.

    Parameters
    ----------
    view : ServerView
        The update's parameter names select the trainable parameters; every
        other parameter and buffer is held constant.
    protocol, local_steps, local_lr, local_batch_size
        The schedule the server assumes (from the view by default).
    """

    def __init__(
        self,
        view: ServerView,
        *,
        protocol: str | None = None,
        local_steps: int | None = None,
        local_lr: float | None = None,
        local_batch_size: int | None = None,
    ):
        net = copy.deepcopy(view.model).to(view.device)
        replace_all_batch_norm_modules_(net)  # batch statistics always, no running-stat writes (vmap-safe)
        net.train()
        for p in net.parameters():
            p.requires_grad_(False)
        self.net = net
        self.names: list[str] = list(view.tensors)
        named = dict(net.named_parameters())
        self.params = {n: named[n].detach() for n in self.names}
        self.constants = {n: p.detach() for n, p in named.items() if n not in self.params}
        self.constants.update({n: b for n, b in net.named_buffers()})
        self.protocol = protocol or view.protocol
        self.local_steps = int(local_steps or view.local_steps or 1)
        self.local_lr = local_lr if local_lr is not None else view.local_lr
        self.local_batch_size = local_batch_size or view.local_batch_size
        self.device = view.device
        # leaf copies for the autograd engine
        self._leaves = [self.params[n].clone().requires_grad_(True) for n in self.names]
        self._convolutions = SplitConvolutions()

    def replica(self) -> "ServerModel":
        """A copy for another thread: its own module (``functional_call`` swaps a module's tensors) and leaves."""
        other = copy.copy(self)
        other.net = copy.deepcopy(self.net)
        other._leaves = [leaf.detach().clone().requires_grad_(True) for leaf in self._leaves]
        other._convolutions = SplitConvolutions()
        return other

    # -- functional (torch.func) -------------------------------------------------

    def _loss(self, params: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(self.net, {**params, **self.constants}, (x,))
        return torch.sum(-y * F.log_softmax(out, dim=-1), dim=-1).mean()

    def upload_functional(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """The update for batch ``x`` with soft labels ``y`` (composable with vmap/grad)."""
        if self.protocol == "fedsgd":
            g = grad(self._loss)(self.params, x, y)
            return [g[n] for n in self.names]
        p = dict(self.params)
        for sl in minibatch_slices(x.shape[0], self.local_batch_size or x.shape[0], self.local_steps):
            g = grad(self._loss)(p, x[sl], y[sl])
            p = {n: p[n] - self.local_lr * g[n] for n in self.names}
        return [p[n] - self.params[n] for n in self.names]

    # -- autograd ----------------------------------------------------------------------

    def upload_autograd(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """The update for ``(x, y)``, differentiable with respect to ``x`` and ``y`` (create_graph)."""
        leaves = self._leaves

        def loss(ps: Sequence[torch.Tensor], xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            return self._loss(dict(zip(self.names, ps)), xb, yb)

        with self._convolutions:
            if self.protocol == "fedsgd":
                return list(torch.autograd.grad(loss(leaves, x, y), leaves, create_graph=True, materialize_grads=True))
            ps: list[torch.Tensor] = list(leaves)
            for sl in minibatch_slices(x.shape[0], self.local_batch_size or x.shape[0], self.local_steps):
                gs = torch.autograd.grad(loss(ps, x[sl], y[sl]), ps, create_graph=True, materialize_grads=True)
                ps = [p - self.local_lr * g for p, g in zip(ps, gs)]
            return [p - p0 for p, p0 in zip(ps, leaves)]

    def guess_gradient(self, update: Sequence[torch.Tensor], cotangent: Sequence[torch.Tensor], wrt: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """``Σ <cotangent, update>`` differentiated with respect to ``wrt`` (the guess), never the server's parameters."""
        live = [(u, c) for u, c in zip(update, cotangent) if u.requires_grad]
        self._convolutions.images_only = True
        try:
            return torch.autograd.grad(
                [u for u, _ in live], list(wrt), grad_outputs=[c for _, c in live], allow_unused=True, materialize_grads=True
            )
        finally:
            self._convolutions.images_only = False


def _distance(u: Sequence[torch.Tensor], t: Sequence[torch.Tensor], t_norm: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "l2":
        return sum(((a - b) ** 2).sum() for a, b in zip(u, t))
    dot = sum((a * b).sum() for a, b in zip(u, t))
    un = torch.sqrt(sum((a * a).sum() for a in u))
    return 1.0 - dot / (un * t_norm + 1e-20)


def _distance_and_cotangent(u, t, t_norm, kind):
    """Distance and its gradient with respect to ``u``, in closed form (no autograd graph)."""
    u = [a.detach() for a in u]
    if kind == "l2":
        diff = torch._foreach_sub(u, list(t))
        value = sum(torch.vdot(d.reshape(-1), d.reshape(-1)) for d in diff)
        return value, torch._foreach_mul(diff, 2.0)
    dot = sum(torch.vdot(a.reshape(-1), b.reshape(-1)) for a, b in zip(u, t))
    un = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(u))) + 1e-20
    cos = dot / (un * t_norm)
    # cot = u cos/|u|² - t/(|u||t|) in one new list and one in-place pass (with a third
    # parameter-sized list, on a ResNet-18, it took 1.3-1.5x as long)
    cot = torch._foreach_mul(u, float(cos / un**2))
    torch._foreach_add_(cot, list(t), alpha=float(-1.0 / (un * t_norm)))
    return 1.0 - cos, cot


class MatchingObjective:
    """Loss and gradient of ``K`` guesses of the batch against the received update.

    Parameters
    ----------
    server : ServerModel
    target : sequence of tensors
        The received update, in ``server.names`` order.
    distance : {"l2", "cosine"}
        Squared Euclidean distance summed over all parameters (DLG) or one
        minus cosine similarity over all parameters at once (Inverting
        Gradients).
    to_pixels : callable
        Maps the optimised variable to model inputs (identity for DLG, an affine
        de-standardisation for Inverting Gradients).
    labels : tensor [B, num_classes] or None
        Fixed (soft) labels; None to optimise label logits jointly (DLG).
    tv_weight : float
        Weight of :func:`total_variation` of the optimised variable.
    engine : {"auto", "vmap", "loop"}
    """

    def __init__(
        self,
        server: ServerModel,
        target: Sequence[torch.Tensor],
        *,
        distance: str = "l2",
        to_pixels: Callable[[torch.Tensor], torch.Tensor] = lambda z: z,
        labels: torch.Tensor | None = None,
        tv_weight: float = 0.0,
        engine: str = "auto",
    ):
        if distance not in DISTANCES:
            raise ValueError(f"unknown distance {distance!r}; use one of {DISTANCES}")
        self.server = server
        self.target = [t.detach().to(server.device) for t in target]
        self.t_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(self.target)))
        self.distance = distance
        self.to_pixels = to_pixels
        self.labels = labels
        self.tv_weight = float(tv_weight)
        self.engine = engine
        self.evaluations = 0
        self._vmapped = None
        self._replicas: list[ServerModel] = []

    # -- one guess, functional -----------------------------------------------------------

    def _single(self, z: torch.Tensor, logits: torch.Tensor | None):
        y = self.labels if logits is None else F.softmax(logits, dim=-1)
        u = self.server.upload_functional(self.to_pixels(z), y)
        d = _distance(u, self.target, self.t_norm, self.distance)
        loss = d + self.tv_weight * total_variation(z) if self.tv_weight else d
        return loss, d

    def _vmap_eval(self, z, logits):
        if self._vmapped is None:
            if logits is None:
                fn = grad_and_value(lambda zz: self._single(zz, None), has_aux=True)
                self._vmapped = (vmap(fn, randomness="same"), False)
            else:
                fn = grad_and_value(self._single, argnums=(0, 1), has_aux=True)
                self._vmapped = (vmap(fn, randomness="same"), True)
        fn, with_logits = self._vmapped
        with warnings.catch_warnings():  # torch's note that an op (weight_norm's) runs as a loop under vmap: same numbers
            warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
            if with_logits:
                (gz, gl), (loss, d) = fn(z, logits)
            else:
                gz, (loss, d) = fn(z)
                gl = None
        return loss.detach(), d.detach(), gz.detach(), None if gl is None else gl.detach()

    def _loop_one(self, server: ServerModel, z: torch.Tensor, logits: torch.Tensor | None):
        """``(loss, distance, grad_z, grad_logits or None)`` of one guess, through ``server``'s autograd graph."""
        z = z.detach().requires_grad_(True)
        logits = None if logits is None else logits.detach().requires_grad_(True)
        with torch.enable_grad():
            y = self.labels if logits is None else F.softmax(logits, dim=-1)
            u = server.upload_autograd(self.to_pixels(z), y)
            d, cot = _distance_and_cotangent(u, self.target, self.t_norm, self.distance)
            gs = server.guess_gradient(u, cot, [z] if logits is None else [z, logits])
            gz = gs[0]
            loss = d
            if self.tv_weight:
                zt = z.detach().requires_grad_(True)
                tv = self.tv_weight * total_variation(zt)
                gz = gz + torch.autograd.grad(tv, zt)[0]
                loss = d + tv.detach()
        return loss, d, gz.detach(), None if logits is None else gs[1].detach()

    def _loop_eval(self, z, logits):
        K = z.shape[0]
        threads = torch.get_num_threads()
        workers = min(K, threads) if z.device.type == "cpu" else 1
        guesses = range(K)
        if workers == 1:
            results = [self._loop_one(self.server, z[k], None if logits is None else logits[k]) for k in guesses]
        else:
            while len(self._replicas) < workers - 1:
                self._replicas.append(self.server.replica())
            servers = [self.server, *self._replicas]

            def work(w: int) -> list:
                torch.set_num_threads(max(1, threads // workers))  # this worker thread's share of the cores
                return [self._loop_one(servers[w], z[k], None if logits is None else logits[k]) for k in guesses[w::workers]]

            try:
                with ThreadPoolExecutor(workers) as pool:
                    shares = list(pool.map(work, range(workers)))
            finally:
                torch.set_num_threads(threads)  # the setting is process-wide as well as per thread
            results = [shares[k % workers][k // workers] for k in guesses]
        losses, dists, gzs, gls = zip(*results)
        return torch.stack(losses), torch.stack(dists), torch.stack(gzs), None if logits is None else torch.stack(gls)

    def _choose_engine(self, z) -> None:
        if self.engine != "auto":
            return
        if z.device.type == "cuda":
            self.engine = "vmap"
        elif z.shape[0] > 1 and sum(p.numel() for p in self.server.params.values()) <= VMAP_MAX_PARAMETERS:
            self.engine = "vmap"
        else:
            self.engine = "loop"

    def __call__(self, z: torch.Tensor, logits: torch.Tensor | None = None):
        """``(loss [K], distance [K], grad_z [K, ...], grad_logits [K, ...] or None)`` for ``K`` guesses."""
        self._choose_engine(z)
        self.evaluations += 1
        if self.engine == "vmap":
            try:
                return self._vmap_eval(z, logits)
            except RuntimeError:  # e.g. an op without a batching rule: fall back once, for good
                if self.evaluations > 1:
                    raise
                self.engine = "loop"
        return self._loop_eval(z, logits)

    def distance_only(self, z: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """The distance of every guess (no regulariser, no gradient): the restart score."""
        out = []
        for k in range(z.shape[0]):
            y = self.labels if logits is None else F.softmax(logits[k], dim=-1)
            with torch.enable_grad():
                x = self.to_pixels(z[k].detach())
                u = self.server.upload_autograd(x, y)
            out.append(_distance([a.detach() for a in u], self.target, self.t_norm, self.distance))
        return torch.stack(out).detach()
