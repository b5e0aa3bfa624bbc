"""Gradient disaggregation: rebuilding every user's update from secure-aggregation sums.

Secure aggregation shows the server only the sum of a round's updates. Lam et
al. (2021) showed that this is not enough once the server keeps the sums of
many rounds and learns how often each user took part in each *window* of
rounds (device analytics, billing, fairness reports publish such counts).
With ``P`` the rounds x users binary participation matrix and ``g`` the
users x d individual updates (held fixed over the rounds, as in the paper),
the server sees

    G = P g (+ noise)        (rounds x d)            and
    C[u, k] = sum of P[t, u] over the rounds t of window k.

When ``g`` has full row rank (d >= users) the columns of ``P`` span the same
space as the columns of ``G``, so each user's column ``p_u`` is a binary vector
in ``col(G)`` whose window sums are ``C[u]``. For rounds well above the number
of users that vector is unique; once ``P`` is known, ``g = P^+ G`` by least
squares, and every individual update is out.

How this module finds ``p_u`` (all open solvers; no Gurobi):

1. **Subspace.** ``B`` = the top ``n`` left singular vectors of ``G`` (``n`` =
   users who took part at least once). Rank deficiency (rounds <= users,
   d < users, linearly dependent updates) is detected here and raised as
   :class:`NotIdentifiable`, an :class:`~fedguard.errors.InputError` whose
   one-line message says why. The noise level is taken from ``noise_scale``
   or estimated from the singular values beyond ``n``.
2. **Projection** (all users at once). The column must lie in the box
   ``[0, 1]^T`` and in the affine space ``V_u = {B a : window sums = C[u]}``.
   Douglas-Rachford splitting on those two convex sets runs as a handful of
   matrix products over all users together. For most users that
   intersection (the LP relaxation of the paper's integer program) is the
   single point ``p_u``; rounding each window's ``C[u, k]`` largest entries to
   one recovers it in ~20 iterations. On noisy sums the counts pin only the
   directions of ``B`` whose window sums exceed the noise's (see _geometry).
3. **Search** (users still open). Where the relaxation is not tight,
   Douglas-Rachford with the *non-convex* set of binary vectors with the
   right window counts (Elser's difference map, as used for bit retrieval)
   usually lands on ``p_u`` within a few hundred cheap iterations.
4. **MILP** (users still open). The paper's integer program, one per user,
   with ``scipy.optimize.milp`` (HiGHS) in a process pool and a per-user time
   limit: null-space equalities ``N^T x = 0`` plus the window counts for exact
   data; for noisy data the robust form ``min ||N^T x||_1`` (N spans the
   complement of ``B``).

Every candidate is verified before it is called ``exact``: binary, window
counts met, and its distance to ``col(G)`` no larger than what the noise
explains (``3 * sigma * sqrt(T - n) * ||S^+ B^T x||``, first-order
perturbation of the subspace) and clearly below the distance a one-swap
change would add, and it must be the only such column
(:func:`_stage_unique`). A candidate that is closer to ``col(G)`` than a random
vector with the same counts, but not certifiably so, is ``approximate``;
anything else is ``failed`` (its column is reported as zeros and its update
as NaN). Users whose count rows are identical cannot be told apart by any
attacker; they are kept on distinct columns.

References
----------
Lam, M., Wei, G.-Y., Brooks, D., Reddi, V. J., Mitzenmacher, M. "Gradient
Disaggregation: Breaking Privacy in Federated Learning by Reconstructing the
User Participant Matrix." ICML 2021.

Bauschke, H. H., Combettes, P. L., Luke, D. R. "Phase retrieval, error
reduction algorithm, and Fienup variants: a view from convex optimization."
JOSA A, 2002 (Douglas-Rachford / difference map as projections).

Elser, V., Rankenburg, I., Thibault, P. "Searching with iterated maps."
PNAS 104(2), 2007 (the difference map on non-convex constraint sets).

Huangfu, Q., Hall, J. A. J. "Parallelizing the dual revised simplex method."
Mathematical Programming Computation, 2018 (HiGHS, behind scipy.optimize.milp).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import scipy.linalg
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, linprog, milp

from fedguard import checks
from fedguard.checks import is_number, is_whole
from fedguard.errors import InputError, keyword_names, kind_of

from .federation import Federation, NotIdentifiable, Rounds, as_numpy, by_count_rows, finite_or_none, npz_bytes, npz_keys, validate_rounds

__all__ = [
    "STAGES",
    "STATUSES",
    "Disaggregation",
    "Score",
    "disaggregate",
    "is_updates_file",
    "match_users",
    "save_updates",
    "score",
]

#: Per-user outcome, best first.
STATUSES = ("exact", "approximate", "failed")
#: How each user's column was found (``none`` when it was not).
STAGES = ("zero", "projection", "search", "milp", "none")

Progress = Callable[[int, int], None]

# Tuning, measured on the benchmark federations (benchmarks/disaggregation.py).
_PROJECTION_ITERS = 400     # convex Douglas-Rachford: most users settle in ~20
_CHECK_EVERY = 5            # verify rounded candidates every this many iterations
_SEARCH_ITERS = 3000        # non-convex difference map per batch of open users
_SEARCH_RESTART = 750       # restart from a perturbed point after this many
_NOISE_FACTOR = 2.0         # residual allowed, in units of the predicted noise residual (measured max 1.3); also the
                            # window sums that pin a direction of the subspace, in units of their noise (_geometry)
_RATIO_MAX = 1.5            # bound on actual / predicted residual of the true column (measured max 1.32)
_ROW_FACTOR = 5.0           # MILP row tolerance, in predicted residual per null-space coordinate
_MILP_TRIES = 5             # re-solves with a no-good cut when a noisy MILP answer fails verification
_SWAP_PAIRS = 20_000_000    # cap on T * window * n work for the one-swap separation
_UNIQUE_MAX = 20_000        # cap on rounds x M's columns for proving exact columns the only ones (_stage_unique)
#: Branch-and-bound nodes per user for the integer programs that look for a rival column (_stage_unique; shared by
#: its ``_MILP_TRIES`` tries, each of which cuts off a rival the noise does not explain): a bound on work, not on
#: time, so a proof comes out the same on any machine unless ``time_limit`` ends it. A 2 s cap had certified user 15
#: of a 20-user, 80-round federation at 5 % noise in one run and not in the next (an independent review). 1 000 left
#: one of those 20 unproven, 3 000 none (seeds 1-3), and every user of 50 / 200 rounds / d = 200 (seeds 0 and 3,
#: programs up to 3.9 s).
_RIVAL_NODES = 3000
_SPREAD_MARGIN = 1.5        # rival search's per-round tolerance over the largest round's expected share (_stage_unique)
_EXACT_TOL = 1e-6           # residual allowed (per sqrt(rounds)) on exact aggregates


@dataclass(frozen=True)
class Disaggregation:
    """The attack's result.

    ``participation`` is rounds x users (0/1; a ``failed`` user's column is all
    zeros), ``updates`` users x d (NaN rows for ``failed`` users and for users
    who never took part). ``residual`` is each recovered column's distance to
    the aggregates' column space, ``threshold`` the largest distance that still
    counts as ``exact``. ``stage`` says which step found each column.
    ``interchangeable`` lists the
    groups of users who took part with identical count rows: their columns
    and updates are recovered as a set, but which is whose no attacker can
    tell from the counts (``status`` calls each exact when the set is).
    """

    participation: np.ndarray
    updates: np.ndarray
    status: tuple[str, ...]
    stage: tuple[str, ...]
    residual: np.ndarray
    threshold: np.ndarray
    seconds: float
    window: int
    noise_scale: float
    noise_estimated: bool
    rank: int
    notes: tuple[str, ...] = ()
    interchangeable: tuple[tuple[int, ...], ...] = ()
    #: Integer programs the time limit stopped, users the deadline left open and users whose proof of being the only
    #: column the time limit stopped: with more time, more may be exact.
    timed_out: int = 0
    #: What the run was given, to run it again: seconds per user for the integer programs, their worker processes,
    #: the seed.
    settings: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.status)

    @property
    def users_exact(self) -> int:
        return sum(s == "exact" for s in self.status)

    @property
    def users_recovered(self) -> int:
        """Users whose update was recovered exactly: users who took part (not stage ``zero``), when every column is
        exact. One approximate or failed column pulls every update's least-squares estimate off (its user's share
        is spread over the others: 7 exact users' updates had been 93-158 % off), so then none counts."""
        if any(s != "exact" for s in self.status):
            return 0
        return sum(g != "zero" for g in self.stage)

    @property
    def users_approximate(self) -> int:
        return sum(s == "approximate" for s in self.status)

    @property
    def users_failed(self) -> int:
        return sum(s == "failed" for s in self.status)

    def stage_counts(self) -> dict[str, int]:
        return {name: sum(s == name for s in self.stage) for name in STAGES}


@dataclass(frozen=True)
class Score:
    """A :class:`Disaggregation` against the truth of a simulated federation.

    ``users_exact`` counts users whose recovered column equals their true one
    (users with identical count rows are interchangeable to any attacker and
    are matched as a group). ``claimed_exact_wrong`` counts users the attack
    labelled ``exact`` but got wrong: it should be 0. ``update_error`` is the
    relative error ``||g_hat - g|| / ||g||`` over users with a recovered update
    (median per user and whole-matrix), ``update_coverage`` their share.
    """

    users: int
    users_exact: int
    share_exact: float
    matrix_exact: bool
    claimed_exact_wrong: int
    update_error_median: float
    update_error: float
    update_coverage: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "users": self.users,
            "users_exact": self.users_exact,
            "share_exact": self.share_exact,
            "matrix_exact": self.matrix_exact,
            "claimed_exact_wrong": self.claimed_exact_wrong,
            "update_error_median": finite_or_none(self.update_error_median),
            "update_error": finite_or_none(self.update_error),
            "update_coverage": self.update_coverage,
        }


# --------------------------------------------------------------------------- the recovered updates file


_UPDATES_FILE_KEYS = frozenset({"updates", "participation", "status", "residual"})


def is_updates_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is an ``.npz`` :func:`save_updates` wrote (its arrays, none else)."""
    return npz_keys(path) == _UPDATES_FILE_KEYS


def save_updates(path: str | os.PathLike, result: Disaggregation) -> Path:
    """Write the recovered ``updates``, ``participation``, ``status`` and ``residual`` as an ``.npz`` (atomic, 0600)."""
    from fedguard.io import write_atomic

    path = checks.file_path(path, "the updates file")
    if not isinstance(result, Disaggregation):
        raise InputError(f"result is {kind_of(result)}; pass the Disaggregation that disaggregate() returned")

    arrays = {
        "updates": result.updates,
        "participation": result.participation.astype(np.int8),
        "status": np.asarray(result.status, dtype=f"U{max(map(len, STATUSES))}"),
        "residual": result.residual,
    }
    return write_atomic(path, npz_bytes(arrays))


# --------------------------------------------------------------------------- the attack


def _window_projection(Y: np.ndarray, counts: np.ndarray, window: int) -> np.ndarray:
    """Project each column of ``Y`` (rounds x m) onto {0/1 vectors with these window counts}.

    The Euclidean projection sets the ``counts[j, k]`` largest entries of
    window ``k`` to one and the rest to zero. ``counts`` is m x windows.
    """
    T, m = Y.shape
    K = T // window
    blocks = Y.reshape(K, window, m)
    order = np.argsort(-blocks, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(window)[None, :, None], order.shape), axis=1)
    return (ranks < counts.T[:, None, :]).astype(np.float64).reshape(T, m)


@dataclass
class _Geometry:
    """Everything the stages share, derived once from the aggregates."""

    B: np.ndarray            # rounds x n, orthonormal basis of the signal subspace
    s: np.ndarray            # its n singular values
    M: np.ndarray            # rounds x (n - pinned): basis of {B a : window sums 0, or within the noise}
    WBpinv: np.ndarray       # n x windows: a0 = WBpinv @ c
    window: int
    sigma: float
    tol_abs: float
    swap: float              # smallest residual any one-swap change adds (see _swap_distance)
    pair_sq: np.ndarray | None = field(default=None, repr=False)  # windows x w x w: each swap's, None when sampled

    @property
    def T(self) -> int:
        return self.B.shape[0]

    @property
    def n(self) -> int:
        return self.B.shape[1]

    def anchors(self, counts: np.ndarray) -> np.ndarray:
        """A point of each ``V_u`` (rounds x m) for count rows ``counts`` (m x windows)."""
        return self.B @ (self.WBpinv @ counts.T.astype(np.float64))

    def project_V(self, R: np.ndarray, X0: np.ndarray) -> np.ndarray:
        if self.M.shape[1] == 0:
            return X0.copy()
        return X0 + self.M @ (self.M.T @ (R - X0))

    def check(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For 0/1 columns ``X``: residual to the subspace, largest ``exact`` residual, predicted noise residual.

        The prediction is first-order subspace perturbation: with noise ``E``
        (i.i.d., std sigma) the true column sits ``(I - BB^T) E g^+ e_u`` off
        the subspace, of norm ``sigma * sqrt(T - n) * ||g^+ e_u||``, and
        ``g^+ e_u = S^+ B^T p_u`` with ``S = diag(s) V^T``. Measured ratio of
        actual to predicted residual: 0.97-1.01 on average, at most 1.32
        (20-200 users, noise 0.01-0.5). The threshold is -1 (never exact)
        when a one-swap neighbour of the true column could fit as well.
        """
        A = self.B.T @ X
        residual = np.linalg.norm(X - self.B @ A, axis=0)
        if self.sigma > 0:
            predicted = self.sigma * math.sqrt(max(self.T - self.n, 1)) * np.linalg.norm(A / self.s[:, None], axis=0)
        else:
            predicted = np.zeros(X.shape[1])
        threshold = self.fits(predicted)
        # Certifiable only if no one-swap neighbour of the truth can fit this well:
        # neighbour residual >= swap - (true residual <= _RATIO_MAX * predicted).
        threshold = np.where(threshold + _RATIO_MAX * predicted < self.swaps(X), threshold, -1.0)
        return residual, threshold, predicted

    def fits(self, predicted: np.ndarray) -> np.ndarray:
        """The largest residual the noise explains for columns whose predicted noise residual is ``predicted``."""
        return np.maximum(self.tol_abs, _NOISE_FACTOR * predicted) if self.sigma > 0 else np.full(len(predicted), self.tol_abs)

    def swaps(self, X: np.ndarray) -> np.ndarray:
        """For each 0/1 column of ``X``, the smallest residual that one of *its* one-swap changes adds (a round it
        takes part in for one of the same window it does not): the truth is one swap from the column only through
        those. The smallest over every swap of every column (``swap``) had held back columns whose own swaps are
        all far: 17 of 150 small noise-free cases left a user whose column is the only one ``approximate``."""
        if self.pair_sq is None:  # windows sampled: only the bound over every swap is known
            return np.full(X.shape[1], self.swap)
        K, w = self.pair_sq.shape[:2]
        out = np.empty(X.shape[1])
        chunk = max(1, 4_000_000 // max(1, K * w * w))
        for start in range(0, X.shape[1], chunk):
            ones = X[:, start:start + chunk].T.reshape(-1, K, w) > 0.5
            pairs = ones[:, :, :, None] & ~ones[:, :, None, :]
            nearest = np.where(pairs, self.pair_sq[None], np.inf).min(axis=(1, 2, 3), initial=np.inf)
            out[start:start + chunk] = np.sqrt(np.maximum(nearest, 0.0))
        return out


def _left_singular(G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The thin SVD's ``U`` and ``s`` of ``G`` (rounds x d), without its right singular vectors.

    For wide sums (``d >= 2 x rounds``, as the exposure's four coordinates per
    user give) through ``G^T = QR``: ``G = R^T Q^T``, so the SVD of the
    rounds x rounds ``R^T`` has ``G``'s ``U`` and ``s``. Measured on 2 CPU
    cores: 1.4x to 2.9x faster than the thin SVD from 800 x 1 600 to
    3 000 x 6 000, singular values equal to 1.6e-15 of the largest; no gain
    below ``d = 2 x rounds``.
    """
    T, d = G.shape
    if d < 2 * T:
        U, s, _ = np.linalg.svd(G, full_matrices=False)
        return U, s
    R = scipy.linalg.qr(G.T, mode="r", check_finite=False)[0]
    U, s, _ = np.linalg.svd(R[:T].T)
    return U, s


def _geometry(rounds: Rounds, active: np.ndarray, notes: list[str]) -> tuple[_Geometry, bool, int]:
    G = rounds.aggregates
    T, d = G.shape
    n = int(active.sum())
    w = rounds.window
    if d < n:
        raise NotIdentifiable(
            f"aggregates has d={d} columns but {n} users took part: the sums span at most {d} dimensions, fewer "
            f"than the users, so P is not identifiable; d must be at least the number of users"
        )
    U, s = _left_singular(G)
    scale = s[0] if s.size and s[0] > 0 else 1.0
    tail = s[n:]
    exact_data = tail.size == 0 or tail[0] <= 1e-9 * scale
    sigma_hat = 0.0
    if not exact_data and min(T, d) > n:
        sigma_hat = float(math.sqrt(np.sum(tail**2) / ((T - n) * (d - n))))
    if rounds.noise_scale is not None:
        sigma = float(rounds.noise_scale)
        estimated = False
        if sigma_hat > 2 * sigma and sigma_hat > 1e-9 * scale:
            notes.append(
                f"noise_scale={sigma:.3g} but the aggregates look noisier (estimated {sigma_hat:.3g}); "
                f"thresholds use the given value"
            )
    else:
        sigma = sigma_hat
        estimated = True
    rank = int(np.sum(s > max(T, d) * np.finfo(float).eps * scale * 10))
    if n > 0 and exact_data and s[n - 1] <= 1e-9 * scale:
        raise NotIdentifiable(
            f"aggregates has rank {rank} but {n} users took part: some users' updates or participation columns "
            f"are linearly dependent, so P is not identifiable (need rounds > users, d >= users, independent updates)"
        )
    if sigma > 0 and n > 0:
        edge = sigma * (math.sqrt(T) + math.sqrt(d))
        if s[n - 1] <= edge:
            notes.append(
                f"the weakest of the {n} signal directions (singular value {s[n - 1]:.3g}) is within the noise "
                f"(edge {edge:.3g}): expect failures; more rounds or less noise separate them"
            )
    B = U[:, :n]
    K = T // w
    swap, pair_sq = _swap_distance(B, w)
    WB = B.reshape(K, w, n).sum(axis=1)
    Uw, sw, Vw = np.linalg.svd(WB, full_matrices=True)
    # The counts pin a direction B v of the subspace only where its window sums |WB v| = sw exceed what the noise
    # explains (_NOISE_FACTOR x): the estimated B v is off by sigma * sqrt(T - n) * ||S^+ v|| (first-order
    # perturbation, as in check), and that error's window sums are as large. Below it the direction is free (in M):
    # at windows = users WB is square, its smallest sw near 0 (0.007 at 20 users, 200 rounds, noise 0.5), and the
    # exact pseudo-inverse had put V_u 16 (median) from the true columns, which lie 0.64 from the subspace: 2 of 20
    # columns found (0-10 over seeds 0-2), 19-20 now. With 1 x the noise instead of 2 x, 7 columns of 9 runs
    # (160-240 rounds) were still missed.
    tol = np.full(sw.size, max(K, n) * np.finfo(float).eps * (sw[0] if sw.size else 1.0) * 10)
    if sigma > 0 and sw.size:
        tol = np.maximum(tol, _NOISE_FACTOR * sigma * math.sqrt(max(T - n, 1)) * np.linalg.norm(Vw[:sw.size] / s[:n], axis=1))
    pinned = np.flatnonzero(sw > tol) if n else np.zeros(0, np.int64)
    M = B @ np.delete(Vw, pinned, axis=0).T
    WBpinv = (Vw[pinned].T / sw[pinned]) @ Uw[:, pinned].T if n else np.zeros((0, K))
    geo = _Geometry(
        B=B, s=s[:n], M=M, WBpinv=WBpinv, window=w, sigma=sigma,
        tol_abs=_EXACT_TOL * math.sqrt(T), swap=swap, pair_sq=pair_sq,
    )
    return geo, estimated, rank


def _swap_distance(B: np.ndarray, window: int, seed: int = 0) -> tuple[float, np.ndarray | None]:
    """Smallest distance to the subspace that swapping two rounds of one window adds, and each swap's squared.

    ``||(I - BB^T)(e_i - e_j)||^2 = 2 - ||B_i - B_j||^2`` over pairs in a window:
    a candidate that fits better than this distance minus the true column's
    own residual cannot be one swap away from the truth. Exhaustive up to
    ``_SWAP_PAIRS`` work, with every pair's value (windows x window x window,
    the diagonal infinite) for :meth:`_Geometry.swaps`; a random sample of
    windows beyond, with the smallest only.
    """
    T, n = B.shape
    if window < 2 or n == 0:
        return math.sqrt(2.0), None
    K = T // window
    sampled = T * window * n > _SWAP_PAIRS
    windows = np.arange(K)
    if sampled:
        keep = max(1, _SWAP_PAIRS // (window * window * n))
        windows = np.random.default_rng(seed).choice(K, size=min(K, keep), replace=False)
    pair_sq = np.empty((len(windows), window, window))
    for at, k in enumerate(windows):
        Bw = B[k * window:(k + 1) * window]
        sq = np.einsum("ij,ij->i", Bw, Bw)
        pair_sq[at] = 2.0 - (sq[:, None] + sq[None, :] - 2.0 * (Bw @ Bw.T))
        np.fill_diagonal(pair_sq[at], np.inf)
    best = min(2.0, float(pair_sq.min())) if len(windows) else 2.0
    return math.sqrt(max(best, 0.0)), None if sampled else pair_sq


class _Book:
    """Per-user bookkeeping shared by the stages."""

    def __init__(self, counts: np.ndarray, T: int, geo: _Geometry, progress: Progress | None, total: int):
        n = counts.shape[0]
        self.counts = counts
        self.geo = geo
        self.X = np.zeros((T, n))
        self.residual = np.full(n, np.inf)
        self.threshold = np.full(n, -1.0)
        self.exact = np.zeros(n, bool)
        self.have = np.zeros(n, bool)
        self.stage = ["none"] * n
        self.progress = progress
        self.total = total
        self.settled = 0
        self.timed_out = 0
        keys = [counts[u].tobytes() for u in range(n)]
        self.group_of = keys
        self.claimed: dict[bytes, dict[bytes, int]] = {}

    def claimed_by_other(self, user: int, column: np.ndarray) -> bool:
        owner = self.claimed.get(self.group_of[user], {}).get(column.astype(np.int8).tobytes())
        return owner is not None and owner != user

    def offer(self, users: np.ndarray, X: np.ndarray, stage: str) -> np.ndarray:
        """Record candidate columns; return a mask of those accepted as exact."""
        residual, threshold, _ = self.geo.check(X)
        accepted = np.zeros(len(users), bool)
        for j, u in enumerate(users):
            column = X[:, j]
            if self.exact[u] or self.claimed_by_other(u, column):
                continue
            if residual[j] <= threshold[j]:
                accepted[j] = True
                self.exact[u] = True
                self._store(u, column, residual[j], threshold[j], stage)
                self.claimed.setdefault(self.group_of[u], {})[column.astype(np.int8).tobytes()] = u
                self.settled += 1
                if self.progress is not None:
                    self.progress(self.settled, self.total)
            elif residual[j] < self.residual[u]:
                self._store(u, column, residual[j], threshold[j], stage)
        return accepted

    def known(self, users: np.ndarray, X: np.ndarray, stage: str) -> None:
        """Record columns known without a search (the counts of one-round windows) as exact, whatever their fit."""
        residual, threshold, _ = self.geo.check(X)
        for j, u in enumerate(users):
            self._store(u, X[:, j], residual[j], max(threshold[j], residual[j]), stage)
            self.exact[u] = True
            self.settled += 1
        if self.progress is not None:
            self.progress(self.settled, self.total)

    def _store(self, u: int, column: np.ndarray, residual: float, threshold: float, stage: str) -> None:
        self.X[:, u] = column
        self.residual[u] = residual
        self.threshold[u] = threshold
        self.have[u] = True
        self.stage[u] = stage


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.perf_counter() >= deadline


def _stage_projection(book: _Book, users: np.ndarray, deadline: float | None) -> np.ndarray:
    """Convex Douglas-Rachford on box ∩ V_u for all ``users`` at once; returns the final iterates.

    Stops at ``deadline`` (between iterations), the users left open."""
    geo = book.geo
    C = book.counts[users]
    X0 = geo.anchors(C)
    Y = X0.copy()
    active = np.arange(len(users))
    final = np.zeros_like(Y)
    for it in range(1, _PROJECTION_ITERS + 1):
        box = np.clip(Y, 0.0, 1.0)
        Y = Y + geo.project_V(2.0 * box - Y, X0) - box
        if it % _CHECK_EVERY == 0 or it == _PROJECTION_ITERS:
            cand = _window_projection(Y, C[active], geo.window)
            accepted = book.offer(users[active], cand, "projection")
            keep = ~accepted
            final[:, active[accepted]] = Y[:, accepted]
            if not keep.all():
                active, Y, X0 = active[keep], Y[:, keep], X0[:, keep]
        if active.size == 0 or _past(deadline):
            break
    final[:, active] = Y
    return final


def _stage_search(book: _Book, users: np.ndarray, start: np.ndarray, rng: np.random.Generator, deadline: float | None) -> None:
    """Non-convex difference map between V_u and {0/1 with window counts} for the open ``users``, until ``deadline``."""
    geo = book.geo
    C = book.counts[users]
    X0 = geo.anchors(C)
    Y = np.clip(start, 0.0, 1.0)
    # Users with identical count rows start from the same point; split them.
    Y = Y + 0.05 * rng.standard_normal(Y.shape)
    active = np.arange(len(users))
    for it in range(1, _SEARCH_ITERS + 1):
        S = _window_projection(Y, C[active], geo.window)
        accepted = book.offer(users[active], S, "search")
        if accepted.any():
            keep = ~accepted
            active, Y, X0, S = active[keep], Y[:, keep], X0[:, keep], S[:, keep]
        if active.size == 0 or _past(deadline):
            break
        if it % _SEARCH_RESTART == 0:
            Y = X0 + 0.5 * rng.standard_normal(Y.shape)
        else:
            Y = Y + geo.project_V(2.0 * S - Y, X0) - S


# ---- MILP stage (runs in worker processes; state inherited through fork)

_MILP_STATE: dict[str, Any] = {}


def _milp_setup(geo: _Geometry) -> dict[str, Any]:
    T, n, w = geo.T, geo.n, geo.window
    Q, _ = np.linalg.qr(geo.B, mode="complete")
    K = T // w
    W = sparse.kron(sparse.eye(K), np.ones((1, w)), format="csr")
    return {"NT": np.ascontiguousarray(Q[:, n:].T), "W": W, "T": T}


def _milp_group(task: tuple) -> list[tuple[int, np.ndarray | None, float, str]]:
    """Solve one user, or users with identical counts in turn (kept on distinct columns).

    The paper's feasibility program: ``x`` binary, ``|N^T x| <= row_tol`` row by
    row (``row_tol`` from the predicted noise residual; ~1e-7 on exact data),
    window sums equal to the counts, and a no-good cut for every column
    excluded. An answer whose residual ``||N^T x||`` exceeds ``tau`` is cut off
    and the program re-solved while time is left. Returns
    ``(user, column or None, residual, outcome)`` per user.
    """
    users, counts, excluded, row_tols, taus, time_limit, deadline = task
    NT, W, T = _MILP_STATE["NT"], _MILP_STATE["W"], _MILP_STATE["T"]
    out = []
    excluded = [np.asarray(x) for x in excluded]
    for u, row_tol, tau in zip(users, row_tols, taus):
        t0 = time.perf_counter()
        best: np.ndarray | None = None
        best_res = np.inf
        outcome = "time limit"
        cuts: list[np.ndarray] = list(excluded)
        for _ in range(_MILP_TRIES):
            now = time.perf_counter()
            left = min(time_limit - (now - t0), math.inf if deadline is None else deadline - now)
            if left <= 0.05:
                break
            cons = [LinearConstraint(NT, -row_tol, row_tol), LinearConstraint(W, counts, counts)]
            for x in cuts:  # no-good cut: differ from x in at least one round
                cons.append(LinearConstraint(np.where(x > 0.5, -1.0, 1.0)[None, :], 1.0 - float((x > 0.5).sum()), np.inf))
            res = milp(np.zeros(T), constraints=cons, integrality=np.ones(T), bounds=Bounds(0.0, 1.0),
                       options={"time_limit": float(left), "disp": False})
            if res.x is None:
                outcome = "infeasible" if res.status == 2 else "time limit"
                break
            x = np.round(res.x).clip(0.0, 1.0)
            residual = float(np.linalg.norm(NT @ x))
            if residual < best_res:
                best, best_res = x, residual
            if residual <= tau:
                outcome = "solved"
                break
            outcome = "rejected"
            cuts.append(x)
        if outcome == "solved" and best is not None:
            excluded.append(best)
        out.append((u, best, best_res, outcome))
    return out


def _stage_milp(
    book: _Book, users: np.ndarray, time_limit: float, workers: int, notes: list[str], deadline: float | None
) -> None:
    geo = book.geo
    # Users whose best candidate the noise already makes uncertifiable: no program can certify them either.
    residual, threshold, predicted = geo.check(book.X[:, users])
    hopeless = threshold < 0
    if hopeless.any():
        why = ("at this noise level a one-swap error fits the aggregates as well as the truth" if geo.sigma > 0 else
               "a one-swap error fits the noise-free sums exactly (too few rounds, or users who take part too rarely)")
        notes.append(f"{int(hopeless.sum())} user(s) could not be certified, so no integer program ran for them: {why}")
    users, predicted, threshold = users[~hopeless], predicted[~hopeless], threshold[~hopeless]
    if users.size == 0 or _past(deadline):  # past it, the programs' set-up alone (a QR of rounds x rounds) would overrun
        return
    row_floor = 1e-7 * math.sqrt(geo.T)
    row_tol = np.maximum(row_floor, _ROW_FACTOR * predicted / math.sqrt(max(geo.T - geo.n, 1)))
    tau = np.maximum(threshold, geo.tol_abs)
    groups: dict[bytes, list[int]] = {}
    for j, u in enumerate(users):
        groups.setdefault(book.group_of[u], []).append(j)
    tasks = []
    for key, members in groups.items():
        excluded = [book.X[:, v].copy() for v, k in enumerate(book.group_of) if k == key and book.exact[v]]
        tasks.append((
            [int(users[j]) for j in members], book.counts[users[members[0]]].astype(np.float64), excluded,
            [float(row_tol[j]) for j in members], [float(tau[j]) for j in members], float(time_limit), deadline,
        ))
    _MILP_STATE.clear()
    _MILP_STATE.update(_milp_setup(geo))
    results: list[tuple[int, np.ndarray | None, float, float, str]] = []
    try:
        if workers > 1 and len(tasks) > 1:  # disaggregate() set workers to 1 where forking_workers() is False
            ctx = multiprocessing.get_context("fork")
            # leaving the block terminates the workers: Ctrl-C or a SIGTERM ends the command at once, not after the
            # integer programs running in them (the pool of concurrent.futures waited for those, minutes at 400 users)
            with ctx.Pool(min(workers, len(tasks)), initializer=_worker_signals) as pool:
                for group in pool.imap(_milp_group, tasks):
                    results.extend(group)
                    _milp_record(book, group)
        else:
            for task in tasks:
                group = _milp_group(task)
                results.extend(group)
                _milp_record(book, group)
    finally:
        _MILP_STATE.clear()
    timed_out = sum(1 for r in results if r[3] == "time limit")
    book.timed_out += timed_out
    if timed_out:
        limit = f"the {time_limit:g} s per-user time limit" + (" or the deadline" if deadline is not None else "")
        notes.append(f"{timed_out} integer program(s) hit {limit}")


def _worker_signals() -> None:
    """In a pool's worker: SIGTERM kills it (the pool's terminate) and Ctrl-C is the parent's alone. The handler the
    command installed raises only when the worker is back in Python, after the integer program it is solving."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _near_columns(geo: _Geometry, x: np.ndarray, tol: float) -> list[LinearConstraint]:
    """Constraints on ``[y, z]`` (rounds, then ``M``'s columns): ``y`` within ``tol`` per round of ``x + M z`` and
    with ``x``'s window counts. Every 0/1 column that fits the sums as well as ``x`` satisfies them when ``tol``
    bounds both columns' residuals to the subspace (on noisy sums the true column lies just off the estimated one)."""
    T, m = geo.M.shape
    windows = np.kron(np.eye(T // geo.window), np.ones(geo.window))
    counts = windows @ x
    return [LinearConstraint(np.hstack([np.eye(T), -geo.M]), x - tol, x + tol),
            LinearConstraint(np.hstack([windows, np.zeros((len(windows), m))]), counts, counts)]


def _only_column(geo: _Geometry, x: np.ndarray, tol: float) -> bool:
    """True when the LP relaxation proves ``x`` the only 0/1 column with its window counts within ``tol`` per round
    of the subspace (:func:`_near_columns`).

    Another such column differs from ``x`` in at least two rounds (the counts
    match), and the Hamming distance from ``x`` is linear on the box, so the
    LP proves it when its largest distance is below 2. One small LP; where the
    relaxation is tight (most users) no integer program runs. With no
    tolerance it had looked within the subspace as estimated, and on noisy
    sums had proven wrong columns (4 users, 6 rounds, noise 0.001).
    """
    T, m = geo.M.shape
    sign = np.where(x > 0.5, 1.0, -1.0)  # distance(x, y) = sign . (x - y)
    cons = _near_columns(geo, x, tol)
    A_ub = np.vstack([cons[0].A, -cons[0].A])
    b_ub = np.concatenate([cons[0].ub, -cons[0].lb])
    res = linprog(np.concatenate([sign, np.zeros(m)]), A_ub=A_ub, b_ub=b_ub, A_eq=cons[1].A, b_eq=cons[1].lb,
                  bounds=[(0.0, 1.0)] * T + [(None, None)] * m, method="highs")  # fmt: skip
    return res.status == 0 and float(sign @ x) - float(res.fun) < 2.0 - 1e-6


def _rival(geo: _Geometry, x: np.ndarray, cuts: list[np.ndarray], tol: float, seconds: float, nodes: int):
    """``milp``'s search for a 0/1 column other than every one in ``cuts`` among :func:`_near_columns`: what else
    has ``x``'s window counts and fits the sums as well. ``T`` binaries and ``M``'s columns free: a rounds x M
    program, where the paper's form (rounds x null space) took about 1 s a user at 50 users and 200 rounds."""
    T, m = geo.M.shape
    cons = _near_columns(geo, x, tol)
    for c in cuts:  # no-good cut: differ from c in at least one round
        cons.append(LinearConstraint(np.concatenate([np.where(c > 0.5, -1.0, 1.0), np.zeros(m)])[None, :],
                                     1.0 - float((c > 0.5).sum()), np.inf))  # fmt: skip
    lower, upper = np.concatenate([np.zeros(T), np.full(m, -np.inf)]), np.concatenate([np.ones(T), np.full(m, np.inf)])
    return milp(np.zeros(T + m), constraints=cons, integrality=np.concatenate([np.ones(T), np.zeros(m)]),
                bounds=Bounds(lower, upper), options={"time_limit": float(seconds), "node_limit": int(nodes), "disp": False})


def _stage_unique(book: _Book, users: np.ndarray, time_limit: float, notes: list[str], deadline: float | None) -> None:
    """Exact columns that another 0/1 column with the same counts fits as well are only approximate.

    The one-swap separation of :meth:`_Geometry.check` rules out a column's
    neighbours, not columns further away: with rounds just above users, or
    users who take part once or twice, other 0/1 columns with the same
    window counts lie in the subspace too, and ``exact`` had been claimed
    for wrong columns (20 users, 24 rounds: 7 of 20). A column stays exact
    only when :func:`_only_column`'s LP, or else an integer program
    (:func:`_rival`) within ``_RIVAL_NODES`` nodes, proves no other exists (above
    ``_UNIQUE_MAX`` the check does not run, and a note says so). Users with
    identical counts are told apart by no attacker: a rival that is another
    of them is no rival, and when one of them is not proven none of them is.
    """
    geo = book.geo
    if users.size == 0:
        return
    if geo.M.size > _UNIQUE_MAX:
        notes.append(f"exact columns are certified against one-swap changes only ({geo.T} rounds x {geo.M.shape[1]} "
                     "directions is too large to prove each the only one)")  # fmt: skip
        return
    residual, _, predicted = geo.check(book.X[:, users])
    # A rival that fits as well lies within about the noise's allowance plus the column's own residual of it (in
    # norm); i.i.d. noise spreads that over the rounds, the largest round near sqrt(2 ln 2T / T) of the norm
    # (measured 0.40-0.45 on the review's cases, T 6-40), with half as much again to spare.
    spread = min(1.0, _SPREAD_MARGIN * math.sqrt(2.0 * math.log(2.0 * geo.T) / geo.T))
    tols = np.maximum(1e-6, spread * (geo.fits(predicted) + residual))
    unproven: dict[int, str] = {}  # user: why ("rival", "search" or "time")
    checked = set(users.tolist())
    exact_by_counts: dict[bytes, list[int]] = {}  # fixed during the loop: demotions come after it
    for v in np.flatnonzero(book.exact):
        exact_by_counts.setdefault(book.group_of[v], []).append(int(v))
    for u, tol in zip(users, tols):
        t0 = time.perf_counter()
        same = exact_by_counts[book.group_of[u]]
        proven = len(same) == 1 and _only_column(geo, book.X[:, u], float(tol))
        cuts = [book.X[:, v] for v in same]
        why, nodes = "search", _RIVAL_NODES  # the user's node budget, shared by the tries
        for _ in range(0 if proven else _MILP_TRIES):  # a rival the noise does not explain is cut, and the search goes on
            left = min(time_limit - (time.perf_counter() - t0), math.inf if deadline is None else deadline - time.perf_counter())
            if left <= 0.05 or nodes < 1:
                why = "time" if left <= 0.05 else "search"
                break
            res = _rival(geo, book.X[:, u], cuts, float(tol), left, nodes)
            nodes -= max(1, int(res.get("mip_node_count") or 0))
            proven = res.status == 2  # infeasible: no other column
            if res.x is None:
                why = "time" if res.status == 1 else "search"
                break
            rival = np.round(res.x[: geo.T]).clip(0.0, 1.0)
            residual, _, predicted = geo.check(rival[:, None])
            if residual[0] <= geo.fits(predicted)[0]:  # it fits as well as the noise allows: a true rival
                why = "rival"
                break
            cuts.append(rival)
        if not proven:
            unproven.update((v, why) for v in same if v in checked)
    for u in sorted(unproven):
        book.exact[u] = False
        book.claimed.get(book.group_of[u], {}).pop(book.X[:, u].astype(np.int8).tobytes(), None)
    whys = list(unproven.values())
    if whys.count("rival"):
        notes.append(f"{whys.count('rival')} user(s) have another 0/1 column with their counts that fits the sums as "
                     "well: their columns are approximate")  # fmt: skip
    if whys.count("search"):
        notes.append(f"{whys.count('search')} user(s) could not be proven the only 0/1 column with their counts within "
                     f"a search of {_RIVAL_NODES} branch-and-bound nodes and {_MILP_TRIES} integer programs (each "
                     "cutting off a column the noise does not explain): their columns are approximate")  # fmt: skip
    if whys.count("time") and time_limit <= 0:  # no integer program run: the same users every time, on any machine
        notes.append(f"{whys.count('time')} user(s) were not proven the only 0/1 column with their counts by a linear "
                     "program, and a time limit of 0 runs no integer program to prove it: their columns are approximate")
    elif whys.count("time"):
        book.timed_out += whys.count("time")
        limit = f"the {time_limit:g} s per-user time limit" + (" or the deadline" if deadline is not None else "")
        notes.append(f"{whys.count('time')} user(s) were not proven the only 0/1 column with their counts within {limit} "
                     "(how far a proof gets depends on the machine's speed): their columns are approximate")


def _milp_record(book: _Book, group: list[tuple[int, np.ndarray | None, float, str]]) -> None:
    for u, x, _, _ in group:
        if x is not None:
            book.offer(np.array([u]), x[:, None], "milp")


def _chance_residual(geo: _Geometry, X: np.ndarray, rng: np.random.Generator, draws: int = 3) -> np.ndarray:
    """Mean residual of random 0/1 columns with the same window counts as each column of ``X``."""
    T, m = X.shape
    K = T // geo.window
    total = np.zeros(m)
    for _ in range(draws):
        keys = rng.random((K, geo.window, m))
        blocks = X.reshape(K, geo.window, m)
        shuffled = np.take_along_axis(blocks, np.argsort(keys, axis=1), axis=1).reshape(T, m)
        total += np.linalg.norm(shuffled - geo.B @ (geo.B.T @ shuffled), axis=0)
    return total / draws


def forking_workers() -> bool:
    """Whether the integer programs can run in forked workers, which read the programs' set-up forked with them:
    not on Windows (no fork) nor on macOS, where forking a process that has loaded torch and the system's
    frameworks can crash or hang the child (Python's own default there is spawn)."""
    return sys.platform != "darwin" and "fork" in multiprocessing.get_all_start_methods()


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@keyword_names
def disaggregate(
    aggregates: Any,
    counts: Any,
    window: int,
    noise_scale: float | None = None,
    time_limit: float = 60.0,
    workers: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    deadline: float | None = None,
    prove_unique: bool = True,
) -> Disaggregation:
    """Recover the participation matrix and every user's update from round sums.

    Parameters
    ----------
    aggregates : array, rounds x d
        The summed updates of each round, as secure aggregation reveals them.
    counts : array, users x (rounds / window)
        How many rounds of each window each user took part in.
    window : int
        Rounds per counting window; rounds must be a multiple of it.
    noise_scale : float, optional
        Standard deviation of noise on each aggregate entry (FedAvg drift, DP).
        Estimated from the aggregates' trailing singular values when omitted.
    time_limit : float
        Seconds per user for the integer programs (the fallback, and the
        proof that each exact column is the only one, ``prove_unique``); 0
        runs none, and a column the proof's linear program does not settle is
        then approximate.
    workers : int, optional
        Processes for the integer programs (default: the usable CPU cores); one on macOS and Windows
        (:func:`forking_workers`), which the report's settings record.
    seed : int
        Seeds the random restarts; results are deterministic for a seed
        (up to integer programs stopped by ``time_limit``).
    progress : callable, optional
        Called as ``progress(users_settled, users)`` as users are recovered.
    deadline : float, optional
        A :func:`time.perf_counter` value (a caller's overall time budget) at
        which the projection and search stages stop between iterations and no
        integer program runs on; users left open stay approximate or failed.
    prove_unique : bool
        Prove every exact column the only 0/1 column with its counts that fits
        (:func:`_stage_unique`); a caller that checks the columns against the
        truth (the exposure analysis) can leave it out.

    Returns
    -------
    Disaggregation
        Recovered participation, updates, per-user status and timings.

    Raises
    ------
    InputError
        Malformed observations (one line naming the array).
    NotIdentifiable
        The aggregates cannot determine P (rounds <= users, d < users, rank
        deficiency); the message says which.

    References
    ----------
    Lam et al., "Gradient Disaggregation: Breaking Privacy in Federated
    Learning by Reconstructing the User Participant Matrix", ICML 2021.
    """
    start = time.perf_counter()
    rounds = validate_rounds(aggregates, counts, window, noise_scale)
    if not (is_number(time_limit) and math.isfinite(time_limit) and time_limit >= 0):
        raise InputError(f"--time-limit must be a finite number of seconds >= 0, got {time_limit!r}")
    if workers is not None and not (is_whole(workers) and workers >= 1):
        raise InputError(f"workers must be a whole number >= 1 (processes for the integer programs), got {workers!r}")
    checks.seed(seed, "seed")
    if progress is not None and not callable(progress):
        raise InputError(f"progress is {kind_of(progress)}; pass a callable progress(settled, total) or None")
    if deadline is not None and not (is_number(deadline) and math.isfinite(deadline)):
        raise InputError(f"deadline is {deadline!r}; pass a time.perf_counter() value or None")
    prove_unique = checks.flag(prove_unique, "prove_unique")
    workers = (_default_workers() if workers is None else int(workers)) if forking_workers() else 1
    rng = np.random.default_rng(seed)
    notes: list[str] = []
    C = rounds.counts
    n_users = C.shape[0]
    T = rounds.n_rounds
    active = C.sum(axis=1) > 0
    by_counts = by_count_rows(C, np.flatnonzero(active))  # users who took part, grouped by their count rows
    idle = np.flatnonzero(~active)
    if idle.size:
        notes.append(f"{idle.size} user(s) never took part (all counts 0): their column is known, their update is not in the sums")
    geo, estimated, rank = _geometry(rounds, active, notes)
    book = _Book(C, T, geo, progress, n_users)
    for u in idle:
        book.exact[u] = True
        book.have[u] = True
        book.residual[u] = 0.0
        book.threshold[u] = geo.tol_abs
        book.stage[u] = "zero"
        book.settled += 1

    if rounds.window == 1:  # each window is one round, so the counts are the participation itself
        alone = np.array([g[0] for g in by_counts if len(g) == 1], dtype=np.int64)
        if alone.size:  # users who share a column are left to the search, which tells no such twins apart either
            book.known(alone, C[alone].T.astype(np.float64), "projection")
        notes.append("the counts are per round, so they are the participation itself: a column no other user shares "
                     "is known from them, whatever noise the sums hold")  # fmt: skip
    open_users = np.flatnonzero(active & ~book.exact)
    if open_users.size:
        final = _stage_projection(book, open_users, deadline)
        still = ~book.exact[open_users]
        if still.any():
            _stage_search(book, open_users[still], final[:, still], rng, deadline)
        left = open_users[~book.exact[open_users]]
        if left.size and time_limit > 0:
            _stage_milp(book, left, time_limit, workers, notes, deadline)
        if prove_unique:
            _stage_unique(book, open_users[book.exact[open_users]], time_limit, notes, deadline)
        still_open = int((~book.exact[open_users]).sum())
        if still_open and _past(deadline):
            book.timed_out += still_open
            notes.append(f"the deadline ended the search with {still_open} user(s) open")

    status = ["exact" if book.exact[u] else "failed" for u in range(n_users)]
    open_left = [u for u in range(n_users) if not book.exact[u] and book.have[u]]
    if open_left:
        chance = _chance_residual(geo, book.X[:, open_left], rng)
        for j, u in enumerate(open_left):
            if book.residual[u] < 0.5 * chance[j]:
                status[u] = "approximate"
    participation = book.X.round().astype(np.int8)
    for u in range(n_users):
        if status[u] == "failed":
            participation[:, u] = 0
            book.stage[u] = "none"
    used = [u for u in range(n_users) if status[u] != "failed" and active[u]]
    updates = np.full((n_users, rounds.dim), np.nan)
    if used:
        solution, *_ = np.linalg.lstsq(participation[:, used].astype(np.float64), rounds.aggregates, rcond=None)
        updates[used] = solution
        if len(used) < int(active.sum()):
            notes.append("the updates of users with a column (exact or approximate) are least-squares estimates with the "
                         "failed users' share left out")  # fmt: skip
    interchangeable = tuple(tuple(g) for g in by_counts if len(g) > 1)  # in user order
    if interchangeable:
        listed = "; ".join(", ".join(map(str, group)) for group in interchangeable[:10])
        notes.append(f"users with the same counts in every window ({listed}"
                     f"{'; ...' if len(interchangeable) > 10 else ''}) are recovered as a set: where their rounds "
                     "are found, so are their updates, but which is whose no attacker can tell from the counts, and "
                     "the updates file lists them in one of the possible orders")  # fmt: skip
    seconds = time.perf_counter() - start
    if progress is not None:
        progress(n_users, n_users)
    return Disaggregation(
        participation=participation,
        updates=updates,
        status=tuple(status),
        stage=tuple(book.stage),
        residual=np.where(np.isfinite(book.residual), book.residual, np.nan),
        threshold=book.threshold,
        seconds=seconds,
        window=rounds.window,
        noise_scale=float(geo.sigma),
        noise_estimated=estimated,
        rank=rank,
        notes=tuple(notes),
        interchangeable=interchangeable,
        timed_out=book.timed_out,
        settings={"time_limit": float(time_limit), "workers": workers, "seed": int(seed)},
    )


# --------------------------------------------------------------------------- scoring


def match_users(result: Disaggregation, participation: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """For each user, the true user whose column it recovered (-1 if none).

    Users with identical count rows are interchangeable to any attacker, so a
    recovered column may match any true column in the same group (one-to-one).
    """
    if not isinstance(result, Disaggregation):
        raise InputError(f"result is {kind_of(result)}; pass the Disaggregation that disaggregate() returned")
    participation, counts = as_numpy(participation, "participation"), as_numpy(counts, "counts")
    if participation.shape != result.participation.shape or counts.ndim != 2 or counts.shape[0] != len(result.status):
        raise InputError(f"participation of shape {participation.shape} and counts of shape {counts.shape} do not fit a "
                         f"result for {result.participation.shape[0]} rounds of {len(result.status)} users; pass the "
                         "federation's participation (rounds x users) and counts (users x windows)")
    if not (np.isin(participation, (0, 1)).all() and counts.dtype.kind in "biuf"):  # 0.5s had matched nothing, silently
        raise InputError("participation must hold 0s and 1s (who took part in which round) and counts numbers; pass "
                         "the federation's own")
    n = participation.shape[1]
    truth = np.asarray(participation, dtype=np.int8)
    match = np.full(n, -1)
    for members in by_count_rows(counts, range(n)):
        free = set(members)
        for u in members:
            if result.status[u] == "failed":
                continue
            column = result.participation[:, u]
            candidates = [u] + [v for v in members if v != u]
            for v in candidates:
                if v in free and np.array_equal(column, truth[:, v]):
                    match[u] = v
                    free.discard(v)
                    break
    return match


def score(result: Disaggregation, federation: Federation) -> Score:
    """Score ``result`` against the truth of ``federation`` (see :class:`Score`).

    Raises :class:`~fedguard.errors.InputError` unless ``result`` is a :class:`Disaggregation` of the rounds of
    ``federation``, a :class:`Federation`.
    """
    if not isinstance(result, Disaggregation) or not isinstance(federation, Federation):
        raise InputError(f"score takes a Disaggregation and a Federation, got {kind_of(result)} and a "
                         f"{type(federation).__name__}; pass disaggregate()'s result and simulate_federation()'s federation")  # fmt: skip
    if result.participation.shape != federation.participation.shape:
        raise InputError(f"the result is for {result.participation.shape[0]} rounds of {result.participation.shape[1]} users, "
                         f"the federation has {federation.participation.shape[0]} of {federation.participation.shape[1]}; "
                         "score a result against the federation it was disaggregated from")  # fmt: skip
    match = match_users(result, federation.participation, federation.counts)
    n = len(match)
    exact = int((match >= 0).sum())
    wrong = sum(1 for u in range(n) if result.status[u] == "exact" and match[u] < 0)
    errors = []
    num = den = 0.0
    for u in range(n):
        if not np.isfinite(result.updates[u]).all():
            continue
        v = match[u] if match[u] >= 0 else u
        true = federation.updates[v]
        diff = float(np.linalg.norm(result.updates[u] - true))
        norm = float(np.linalg.norm(true)) or 1.0
        errors.append(diff / norm)
        num += diff**2
        den += norm**2
    return Score(
        users=n,
        users_exact=exact,
        share_exact=exact / n if n else 0.0,
        matrix_exact=exact == n,
        claimed_exact_wrong=int(wrong),
        update_error_median=float(np.median(errors)) if errors else float("nan"),
        update_error=math.sqrt(num / den) if den else float("nan"),
        update_coverage=len(errors) / n if n else 0.0,
    )
