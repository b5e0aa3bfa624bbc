"""L-BFGS for many independent problems at once (one per random start).

``torch.optim.LBFGS`` optimises one problem; DLG runs it from several random
starts. :class:`BatchedLBFGS` runs ``K`` starts side by side: one call of the
objective evaluates all of them (batched with ``torch.func.vmap``), and each
start keeps its own curvature history, step and stopping tests.

It reproduces ``torch.optim.LBFGS``'s default behaviour, the one DLG's code
uses (``lr=1``, no line search, ``max_iter=20`` inner iterations per
:meth:`step`, ``max_eval=25``, ``tolerance_grad=1e-7``,
``tolerance_change=1e-9``, ``history_size=100``), with two differences:

* the inverse-Hessian product uses the compact representation of Byrd,
  Nocedal & Schnabel (1994) -- two small triangular solves per start instead
  of ``2m`` sequential vector updates (no Python loop over the history);
* every start keeps its own ring of the last ``m`` accepted pairs, as torch
  does; products with the history are updated as pairs enter, so one
  iteration reads the history three times whatever ``m`` is.

A start that meets a stopping test idles (evaluated, not moved) until the
step ends; a start whose loss is not finite is frozen. :meth:`keep` drops
starts (abandoned ones) to save their compute.

Two options, off by default (torch's behaviour), make it fit gradient
matching, whose loss falls over ten orders of magnitude (DLG):

* ``safeguard=True`` -- a move that does not lower a start's loss (or makes
  it non-finite) is undone and retried with a step ten times shorter, the
  simplest backtracking; after three undone moves in a row the start's
  curvature history is cleared (steepest descent, full step again), after
  eight it idles until the next :meth:`step`, which starts it afresh. Without it, L-BFGS with unit steps and no
  line search can jump from a good point (30 dB) to a diverged one
  (loss 1e6) in one step;
* ``scale_invariant=True`` -- the tests are relative: the loss change to
  ``|loss|``, the gradient to the start's first gradient, and a curvature pair
  is stored when ``s.y > 1e-10 |s| |y|``. torch's absolute tests
  (``|change| < 1e-9``, ``s.y > 1e-10``) stop DLG on the DLG LeNet once
  the gradient distance is about 1e-6 (20-25 dB on hard images), long
  before it converges.

References
----------
Liu, D. C. & Nocedal, J. "On the limited memory BFGS method for large scale
optimization." Mathematical Programming 45 (1989).
Byrd, R. H., Nocedal, J. & Schnabel, R. B. "Representations of quasi-Newton
matrices and their use in limited memory methods." Mathematical Programming
63 (1994).
"""

from __future__ import annotations

from typing import Callable

import torch

Closure = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _rows_dot(W: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``W[k] @ v[k]`` for every k as float64 ``[K, rows]``.

    Written as ``v^T W^T``: CPU BLAS runs batched matrix-vector products an
    order of magnitude slower than this row-vector form.
    """
    return torch.bmm(v.unsqueeze(1), W.transpose(1, 2)).squeeze(1).double()


class BatchedLBFGS:
    """L-BFGS over ``x`` of shape ``[K, n]``; ``closure(x) -> (loss [K], grad [K, n])``.

    Parameters
    ----------
    x : tensor [K, n]
        Starting points (copied).
    closure : callable
        Evaluates every start; must not modify its argument.
    lr, max_iter, max_eval, tolerance_grad, tolerance_change, history_size
        As ``torch.optim.LBFGS``.
    safeguard : bool
        Undo and shorten moves that do not lower the loss (see the module docstring).
    scale_invariant : bool
        Relative stopping and curvature tests (see the module docstring).
    """

    def __init__(
        self,
        x: torch.Tensor,
        closure: Closure,
        *,
        lr: float = 1.0,
        max_iter: int = 20,
        max_eval: int | None = None,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        history_size: int = 100,
        safeguard: bool = False,
        scale_invariant: bool = False,
    ):
        if x.dim() != 2:
            raise ValueError("x must be [K, n]")
        self.x = x.detach().clone()
        self.closure = closure
        self.lr = float(lr)
        self.max_iter = int(max_iter)
        self.max_eval = int(max_eval if max_eval is not None else max_iter * 5 // 4)
        self.tolerance_grad = float(tolerance_grad)
        self.tolerance_change = float(tolerance_change)
        K, n = self.x.shape
        m = max(1, int(history_size))
        self.m = m
        dev, dt = self.x.device, self.x.dtype
        # S (slots 0..m-1) and Y (slots m..2m-1) of every start in one tensor: W @ g is one bmm
        self.W = torch.zeros(K, 2 * m, n, device=dev, dtype=dt)
        self.SY = torch.zeros(K, m, m, device=dev, dtype=torch.float64)  # SY[k, i, j] = s_i . y_j
        self.YY = torch.zeros(K, m, m, device=dev, dtype=torch.float64)
        self.age = torch.full((K, m), -1, dtype=torch.long, device=dev)  # per-start insertion counter, -1 = empty
        self.count = torch.zeros(K, dtype=torch.long, device=dev)
        self.H_diag = torch.ones(K, device=dev, dtype=torch.float64)
        self.d = torch.zeros_like(self.x)
        self.t = torch.zeros(K, device=dev, dtype=dt)
        self.prev_g: torch.Tensor | None = None
        self.n_iter = 0
        self.evaluations = 0
        self.frozen = torch.zeros(K, dtype=torch.bool, device=dev)
        self.safeguard = bool(safeguard)
        self.scale_invariant = bool(scale_invariant)
        self.shrink = torch.ones(K, device=dev, dtype=dt)  # step factor of the safeguard (1 after a good move)
        self.undone = torch.zeros(K, dtype=torch.long, device=dev)  # undone moves in a row
        self.loss, self.g = self._evaluate(self.x)
        self.g0 = self.g.abs().amax(dim=1).clamp_min(torch.finfo(dt).tiny)  # for the relative gradient test

    # ------------------------------------------------------------------ helpers

    @property
    def K(self) -> int:
        return self.x.shape[0]

    def _evaluate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss, g = self.closure(x)
        self.evaluations += 1
        loss = loss.detach().to(self.x.dtype).reshape(-1)
        g = g.detach().reshape(self.K, -1).to(self.x.dtype)
        bad = ~torch.isfinite(loss) | ~torch.isfinite(g).all(dim=1)
        if bad.any():
            if not (self.safeguard and hasattr(self, "g0")):  # the safeguard undoes such moves instead
                self.frozen |= bad
            loss = torch.where(bad, torch.full_like(loss, float("inf")), loss)
            g = torch.where(bad[:, None], torch.zeros_like(g), g)
        return loss, g

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the starts ``index`` (1-D long tensor), in that order."""
        for name in ("x", "W", "SY", "YY", "age", "count", "H_diag", "d", "t", "frozen", "loss", "g", "shrink", "undone", "g0"):
            setattr(self, name, getattr(self, name)[index])
        if self.prev_g is not None:
            self.prev_g = self.prev_g[index]

    def _forget(self, k: torch.Tensor) -> None:
        """Clear the curvature history of starts ``k`` (1-D long tensor); they restart from steepest descent."""
        self.W[k] = 0
        self.SY[k] = 0
        self.YY[k] = 0
        self.age[k] = -1
        self.count[k] = 0

    def _grad_small(self, g: torch.Tensor) -> torch.Tensor:
        gmax = g.abs().amax(dim=1)
        return gmax <= self.tolerance_grad * (self.g0 if self.scale_invariant else 1.0)

    def _insert(self, s: torch.Tensor, y: torch.Tensor, accept: torch.Tensor, Wg: torch.Tensor, g: torch.Tensor) -> None:
        """Store (s, y) in the oldest slot of every accepting start; keep ``Wg = W g`` current."""
        m = self.m
        k = torch.nonzero(accept).flatten()
        if k.numel() == 0:
            return
        j = self.count[k] % m
        # products of the new pair with every stored pair, for all starts at once (no copy of W)
        Wy = _rows_dot(self.W, y)  # [s_i . y_new ; y_i . y_new]
        Ys = _rows_dot(self.W[:, m:], s)  # y_i . s_new
        sy_row, sy_col, yy = Ys[k], Wy[k, :m], Wy[k, m:]
        sk, yk = s[k], y[k]
        own_sy = (sk * yk).sum(1).double()
        own_yy = (yk * yk).sum(1).double()
        self.W[k, j] = sk
        self.W[k, m + j] = yk
        ar = torch.arange(k.numel(), device=k.device)
        sy_row[ar, j] = own_sy
        sy_col[ar, j] = own_sy
        yy[ar, j] = own_yy
        self.SY[k, j, :] = sy_row
        self.SY[k, :, j] = sy_col
        self.YY[k, j, :] = yy
        self.YY[k, :, j] = yy
        self.count[k] += 1
        self.age[k, j] = self.count[k]
        gk = g[k]
        Wg[k, j] = (sk * gk).sum(1).double()
        Wg[k, m + j] = (yk * gk).sum(1).double()

    def _direction(self, g: torch.Tensor, Wg: torch.Tensor) -> torch.Tensor:
        """``-H g`` with the compact L-BFGS matrix of every start (``Wg = W g``)."""
        m, K = self.m, self.K
        if int(self.count.max()) == 0:
            return -g
        order = torch.argsort(self.age, dim=1)  # empty slots first, then oldest -> newest
        valid = torch.gather(self.age, 1, order) >= 0
        gamma = self.H_diag
        rows = order.unsqueeze(2).expand(K, m, m)
        cols = order.unsqueeze(1).expand(K, m, m)
        SY = torch.gather(torch.gather(self.SY, 1, rows), 2, cols)
        YY = torch.gather(torch.gather(self.YY, 1, rows), 2, cols)
        both = valid[:, :, None] & valid[:, None, :]
        R = torch.where(both, torch.triu(SY), torch.zeros_like(SY))
        R = R + torch.diag_embed((~valid).double())  # empty slots: identity rows (they carry zero vectors)
        D = torch.diagonal(SY, dim1=1, dim2=2) * valid.double()
        a = torch.gather(Wg[:, :m], 1, order)
        b = torch.gather(Wg[:, m:], 1, order) * gamma[:, None]
        u = torch.linalg.solve_triangular(R, a.unsqueeze(2), upper=True).squeeze(2)
        w = D * u + gamma[:, None] * torch.bmm(YY, u.unsqueeze(2)).squeeze(2) - b
        top = torch.linalg.solve_triangular(R.transpose(1, 2), w.unsqueeze(2), upper=False).squeeze(2)
        coef = torch.zeros(K, 2 * m, dtype=torch.float64, device=g.device)
        coef[:, :m].scatter_(1, order, top)
        coef[:, m:].scatter_(1, order, -gamma[:, None] * u)
        Hg = gamma[:, None].to(g.dtype) * g + torch.bmm(coef.to(g.dtype).unsqueeze(1), self.W).squeeze(1)
        return -Hg

    # ------------------------------------------------------------------ the step

    def step(self, should_stop: Callable[[], bool] | None = None) -> torch.Tensor:
        """One ``optimizer.step(closure)`` of torch's LBFGS for every start; returns the loss [K]."""
        K = self.K
        active = ~self.frozen & ~self._grad_small(self.g)
        if self.safeguard:  # a start that gave up in the last step tries again from steepest descent, full step
            stuck = self.undone >= 8
            if bool(stuck.any()):
                self._forget(torch.nonzero(stuck).flatten())
                self.shrink = torch.where(stuck, torch.ones_like(self.shrink), self.shrink)
                self.undone = torch.where(stuck, torch.zeros_like(self.undone), self.undone)
        evals = torch.ones(K, dtype=torch.long, device=self.x.device)
        inner = 0
        while bool(active.any()) and inner < self.max_iter:
            inner += 1
            self.n_iter += 1
            g = self.g
            if self.n_iter == 1:
                d = -g
                self.H_diag = torch.ones(K, dtype=torch.float64, device=g.device)
                t = torch.clamp(1.0 / g.abs().sum(dim=1), max=1.0) * self.lr
            else:
                y = g - self.prev_g
                s = self.d * self.t[:, None]
                ys = (y * s).sum(dim=1)
                yy = (y * y).sum(dim=1)
                if self.scale_invariant:
                    accept = active & (ys > 1e-10 * torch.sqrt((s * s).sum(dim=1) * yy))
                else:
                    accept = active & (ys > 1e-10)
                Wg = _rows_dot(self.W, g)
                if bool(accept.any()):
                    self._insert(s, y, accept, Wg, g)
                    self.H_diag = torch.where(accept, (ys / yy).double(), self.H_diag)
                d = self._direction(g, Wg)
                t = torch.full((K,), self.lr, dtype=g.dtype, device=g.device)
            if self.safeguard:
                t = t * self.shrink
            # as torch: direction, step and previous gradient are stored before the descent test
            # (a start that fails it stays put from then on); idle starts keep theirs
            self.prev_g = torch.where(active[:, None], g, self.prev_g if self.prev_g is not None else g)
            self.d = torch.where(active[:, None], d, self.d)
            self.t = torch.where(active, t, self.t)
            gtd = (g * d).sum(dim=1)
            if self.scale_invariant:
                active = active & (gtd < 0)
            else:
                active = active & (gtd <= -self.tolerance_change)
            if not bool(active.any()):
                break
            step = self.d * self.t[:, None] * active[:, None]
            x_prev = self.x
            self.x = self.x + step
            prev_loss = self.loss
            loss, g_new = self._evaluate(self.x)
            evals += active.long()
            if self.safeguard:
                undo = active & ~(loss < prev_loss)  # no decrease, or not finite
                if bool(undo.any()):
                    self.x = torch.where(undo[:, None], x_prev, self.x)
                    loss = torch.where(undo, prev_loss, loss)
                    g_new = torch.where(undo[:, None], self.g, g_new)
                    self.shrink = torch.where(undo, self.shrink * 0.1, torch.ones_like(self.shrink))
                    self.undone = torch.where(undo, self.undone + 1, torch.zeros_like(self.undone))
                    reset = undo & (self.undone == 3)
                    if bool(reset.any()):  # the curvature model misleads: steepest descent, full step
                        self._forget(torch.nonzero(reset).flatten())
                        self.shrink = torch.where(reset, torch.ones_like(self.shrink), self.shrink)
                else:
                    self.shrink = torch.where(active, torch.ones_like(self.shrink), self.shrink)
                    self.undone = torch.where(active, torch.zeros_like(self.undone), self.undone)
            else:
                undo = torch.zeros_like(active)
            self.loss = torch.where(active, loss, self.loss)
            self.g = torch.where(active[:, None], g_new, self.g)
            moved = active & ~undo
            active = active & ~self.frozen
            active = active & (evals < self.max_eval)
            active = active & ~(moved & self._grad_small(self.g))
            if self.scale_invariant:
                change = (self.loss - prev_loss).abs() >= self.tolerance_change * prev_loss.abs()
                active = active & (~moved | change)
                active = active & ~(undo & (self.undone >= 8))  # nothing lowers the loss: idle until the next step
            else:
                active = active & (step.abs().amax(dim=1) > self.tolerance_change)
                active = active & ((self.loss - prev_loss).abs() >= self.tolerance_change)
            if should_stop is not None and should_stop():
                break
        return self.loss
