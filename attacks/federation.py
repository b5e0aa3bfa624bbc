"""A federation across rounds as a disaggregation server sees it, and as a simulation knows it.

What the server observes (:class:`Rounds`: each round's secure-aggregation
sum and how often each user took part in each window of rounds), checked and
read from or written to ``.npz`` files without unpickling; a simulated
federation with its truth (:class:`Federation`, Lam et al.'s experimental
setting); and the facts about them the attack and its scoring share (users
with one count row are interchangeable). The attack is
:mod:`fedguard.attacks.disaggregation`.

References
----------
Lam, M., Wei, G.-Y., Brooks, D., Reddi, V. J., Mitzenmacher, M. "Gradient
Disaggregation: Breaking Privacy in Federated Learning by Reconstructing the
User Participant Matrix." ICML 2021.
"""

from __future__ import annotations

import io
import math
import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fedguard import checks
from fedguard.checks import is_number, is_whole
from fedguard.errors import InputError, keyword_names, kind_of

__all__ = [
    "MAX_AGGREGATE",
    "MAX_SIMULATED_ELEMENTS",
    "ROUNDS_ARRAYS",
    "ROUNDS_EXTRAS",
    "Federation",
    "NotIdentifiable",
    "Rounds",
    "as_numpy",
    "by_count_rows",
    "finite_or_none",
    "is_simulation_file",
    "load_rounds",
    "npz_bytes",
    "npz_keys",
    "save_rounds",
    "simulate_federation",
    "simulated_elements",
    "validate_rounds",
]


class NotIdentifiable(InputError):
    """The aggregates cannot determine the participation matrix (rank deficiency)."""


# --------------------------------------------------------------------------- observations


@dataclass(frozen=True)
class Rounds:
    """What the server observes: ``aggregates`` (rounds x d), ``counts`` (users x windows)."""

    aggregates: np.ndarray
    counts: np.ndarray
    window: int
    noise_scale: float | None = None

    @property
    def n_rounds(self) -> int:
        return int(self.aggregates.shape[0])

    @property
    def dim(self) -> int:
        return int(self.aggregates.shape[1])


@dataclass(frozen=True)
class Federation:
    """A simulated federation: what the server sees plus the truth to score against.

    ``noise_scale`` is the standard deviation of the Gaussian noise on each
    aggregate entry, in units of an individual update's RMS entry (which is 1:
    the ``--noise`` of the CLI).
    """

    aggregates: np.ndarray
    counts: np.ndarray
    window: int
    participation: np.ndarray
    updates: np.ndarray
    noise_scale: float

    @property
    def rounds(self) -> Rounds:
        return Rounds(self.aggregates, self.counts, self.window, self.noise_scale or None)


def finite_or_none(value: float) -> float | None:
    """``value`` as a float, or None when it is NaN or infinite (JSON has neither)."""
    return float(value) if math.isfinite(value) else None


# --------------------------------------------------------------------------- validation and files


def as_numpy(value: Any, name: str) -> np.ndarray:
    """``value`` as a numpy array, not copied where it is one; a torch tensor is detached and moved to the CPU
    (bfloat16, which numpy lacks, as float32). :class:`~fedguard.errors.InputError` naming ``name`` otherwise."""
    torch = sys.modules.get("torch")  # a tensor means torch is imported; this module does not need it otherwise
    if torch is not None and isinstance(value, torch.Tensor):
        if value.is_meta or value.layout != torch.strided:
            raise InputError(f"{name} is a {value.layout} tensor on {value.device}; pass a dense tensor with values")
        value = value.detach().cpu()
        return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} is not an array; give an array of numbers") from None


#: Largest magnitude of an aggregate entry: squares of about 1e154 overflow float64, and the SVD sums many of them.
MAX_AGGREGATE = 1e150


def _as_float_array(value: Any, name: str, ndim: int) -> np.ndarray:
    array = as_numpy(value, name)
    if array.dtype.kind not in "biuf":
        raise InputError(f"{name} has dtype {array.dtype}, not numbers; give a numeric {ndim}-D array")
    if array.ndim != ndim:
        raise InputError(f"{name} has shape {array.shape}, expected {ndim}-D; fix the array")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise InputError(f"{name} has {bad} non-finite value(s) (NaN or inf); remove or fix them")
    return array


def validate_rounds(aggregates: Any, counts: Any, window: Any, noise_scale: Any = None) -> Rounds:
    """Check the server's observations and return them as a :class:`Rounds`.

    Raises :class:`~fedguard.errors.InputError` (one line naming the array)
    for wrong shapes or types, non-finite values, counts that are not integers
    in ``[0, window]``, rounds that are not ``window * counts.shape[1]``, or
    more users than the rounds allow (rounds <= users: no P is identifiable).
    """
    G = _as_float_array(aggregates, "aggregates", 2)
    if G.shape[0] < 1 or G.shape[1] < 1:
        raise InputError(f"aggregates has shape {G.shape}; it needs at least one round and one dimension")
    peak = float(np.abs(G).max())
    if peak > MAX_AGGREGATE:  # the SVD's sums of squares overflow: rank 0, which had been blamed on dependent updates
        raise InputError(f"aggregates hold values up to {peak:.3g}, beyond what float64 can square and sum (about "
                         f"{MAX_AGGREGATE:.0e}); divide them (and noise_scale) by a constant and the updates back by it")  # fmt: skip
    w_arr = np.asarray(window)
    if w_arr.size != 1 or w_arr.dtype.kind not in "iuf":
        raise InputError(f"window must be one integer (rounds per counting window), got {checks.shown(window)}")
    w_val = w_arr.reshape(()).item()  # an int as stored (through a float, 2**63 - 1 had read 2**63), or a float
    if not math.isfinite(w_val) or w_val != int(w_val) or w_val < 1:
        raise InputError(f"window must be a positive integer (rounds per counting window), got {w_val!r}")
    w = int(w_val)
    if w > 1 and as_numpy(counts, "counts").dtype.kind == "b":  # took part or not, where a count per window is asked for
        raise InputError(f"counts is boolean, but a window holds {w} rounds; give how many rounds of each window each "
                         f"user took part in (integers 0..{w}), or booleans per round with window=1")  # fmt: skip
    C = _as_float_array(counts, "counts", 2)
    if C.shape[0] < 1:
        raise InputError("counts has no users (shape[0] == 0); give one row per user")
    if C.shape[1] < 1:
        raise InputError("counts has no windows (shape[1] == 0); give one column per counting window")
    if np.any(C != np.round(C)):
        raise InputError("counts has non-integer values; participation counts are whole numbers of rounds")
    if C.min() < 0:
        raise InputError(f"counts has negative values (min {C.min():g}); counts are rounds taken part in")
    if C.max() > w:
        raise InputError(
            f"counts has a value of {C.max():g} but a window holds only {w} rounds; "
            f"counts per window cannot exceed window={w}"
        )
    T = G.shape[0]
    if w > T:
        raise InputError(f"window={w} is longer than the {T} rounds aggregates holds; give the rounds per counting "
                         "window (a divisor of the rounds) or more rounds")
    if T % w:
        raise InputError(
            f"aggregates has {T} rounds, not a multiple of window={w}: counts cover whole windows of {w} rounds; "
            f"drop the last {T % w} round(s) or fix window"
        )
    if C.shape[1] != T // w:
        raise InputError(
            f"counts has {C.shape[1]} windows but {T} rounds / window {w} = {T // w}; "
            f"counts must have one column per window of {w} rounds"
        )
    if not C.any() and G.any():  # nobody took part, yet the sums hold something: the counts are not these rounds'
        raise InputError("counts are 0 for every user, yet the aggregates are not zero; pass the counts of these rounds")
    sigma: float | None = None
    if noise_scale is not None:
        s_arr = np.asarray(noise_scale)
        if s_arr.size != 1 or s_arr.dtype.kind not in "iuf":  # True had been read as a noise of 1
            raise InputError(f"noise_scale must be one number (noise std per aggregate entry), got {s_arr.tolist()!r}")
        sigma = float(s_arr.reshape(()))
        if not math.isfinite(sigma) or sigma < 0:
            raise InputError(f"noise_scale must be a finite number >= 0, got {sigma!r}")
    active = int((C.sum(axis=1) > 0).sum())
    if T <= active and w == 1:  # the counts are P itself: nothing to identify, and no subspace to find it in
        raise NotIdentifiable(
            f"window is 1, so counts are the participation matrix itself: nothing to disaggregate (the updates, "
            f"where {T} rounds for {active} users determine them, are its pseudo-inverse times the sums, which "
            f"fedguard does not compute); pass counts per window of several rounds"
        )
    if active > 1 and (C[C.sum(axis=1) > 0] == w).all():  # P is all ones: its columns are alike, nothing to tell apart
        spread = float(np.ptp(G, axis=0).max())
        raise NotIdentifiable(
            f"counts say all {active} users who took part did so in every round (window={w} of {w} throughout), so "
            f"every round sums the same updates and none can be told apart"
            + (f"; yet the rounds' sums differ by up to {spread:.3g} (values up to {peak:.3g}): unless noise explains "
               "that, the counts are not these rounds'" if spread > 1e-9 * peak else "")
        )
    if T <= active:
        raise NotIdentifiable(
            f"counts has {active} users who took part but aggregates has only {T} rounds: with rounds <= users every "
            f"0/1 vector fits, so P is not identifiable; the attack needs more rounds than users"
        )
    return Rounds(G, C.astype(np.int64), w, sigma)


def load_rounds(path: str | os.PathLike) -> Rounds:
    """Read a rounds ``.npz`` (``aggregates``, ``counts``, ``window``, optional ``noise_scale``).

    Never unpickles: object arrays are refused. Raises
    :class:`~fedguard.errors.InputError` naming the file or the array.
    """
    from fedguard.io import read_npz

    path = checks.file_path(path, "the rounds file")
    arrays = read_npz(path, "save aggregates, counts and window with numpy.savez")
    missing = [key for key in ("aggregates", "counts", "window") if key not in arrays]
    if missing and any(str(name).endswith("data.pkl") for name in arrays):  # its zip entries had been listed as arrays
        raise InputError(f"{path} is a torch checkpoint (a model, which fedguard inspect reads), not the rounds' sums; "
                         "save aggregates (rounds x d), counts (users x windows) and window with numpy.savez")
    if missing:
        raise InputError(
            f"{path} lacks {', '.join(missing)} (has {', '.join(sorted(arrays)) or 'nothing'}); "
            f"save aggregates (rounds x d), counts (users x windows) and window"
        )
    return validate_rounds(arrays["aggregates"], arrays["counts"], arrays["window"], arrays.get("noise_scale"))


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """``arrays`` as the bytes of a compressed ``.npz``."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def save_rounds(path: str | os.PathLike, rounds: Rounds | Federation) -> Path:
    """Write what the server observes as an ``.npz``, atomically, mode 0600.

    A :class:`Federation` also stores its truth (``participation``,
    ``updates``) under ``true_participation`` / ``true_updates``; the attack
    never reads them.
    """
    from fedguard.io import write_atomic

    path = checks.file_path(path, "the rounds file")
    if not isinstance(rounds, (Rounds, Federation)):
        raise InputError(f"rounds is {kind_of(rounds)}; pass the Rounds (validate_rounds) or the Federation "
                         "(simulate_federation) to save")
    arrays: dict[str, np.ndarray] = {
        "aggregates": np.asarray(rounds.aggregates, dtype=np.float64),
        "counts": np.asarray(rounds.counts, dtype=np.int64),
        "window": np.asarray(int(rounds.window)),
    }
    if rounds.noise_scale:
        arrays["noise_scale"] = np.asarray(float(rounds.noise_scale))
    if isinstance(rounds, Federation):
        arrays["true_participation"] = rounds.participation.astype(np.int8)
        arrays["true_updates"] = rounds.updates
    return write_atomic(path, npz_bytes(arrays))


#: The arrays a rounds file holds, and those it may hold besides (a simulation's truth; the attack never reads it).
ROUNDS_ARRAYS = frozenset({"aggregates", "counts", "window"})
ROUNDS_EXTRAS = frozenset({"noise_scale", "true_participation", "true_updates"})
_SIMULATION_FILE_KEYS = ROUNDS_ARRAYS | (ROUNDS_EXTRAS - {"noise_scale"})


def npz_keys(path: str | os.PathLike) -> set[str]:
    """The array names of the ``.npz`` at ``path`` (none when it is no readable zip archive)."""
    path = checks.file_path(path, "the .npz")
    try:
        with zipfile.ZipFile(path) as archive:
            return {Path(name).stem for name in archive.namelist()}
    except (OSError, zipfile.BadZipFile):
        return set()


def is_simulation_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is an ``.npz`` :func:`save_rounds` wrote for a simulation (it holds the truth, which no
    observed rounds file has)."""
    return npz_keys(path) - {"noise_scale"} == _SIMULATION_FILE_KEYS


# --------------------------------------------------------------------------- simulation


#: The simulated federation's arrays (participation, updates, sums) hold at most this many float64 numbers (2 GiB).
MAX_SIMULATED_ELEMENTS = 2**28


def simulated_elements(users: int, rounds: int, dim: int) -> int:
    """The numbers a simulated federation holds: participation (rounds x users), updates (users x dim), sums."""
    return rounds * users + users * dim + rounds * dim


@keyword_names
def simulate_federation(
    users: int = 50,
    rounds: int = 200,
    dim: int = 200,
    window: int = 10,
    participation: float = 0.5,
    noise: float = 0.0,
    seed: int = 0,
    nested: bool = False,
) -> Federation:
    """A federation as in Lam et al.'s experiments, with known truth.

    Each user joins each round independently with probability
    ``participation``; each user's update is a fixed vector of i.i.d.
    standard normal entries (RMS 1); a round's aggregate is the sum of its
    participants' updates plus i.i.d. Gaussian noise of standard deviation
    ``noise`` (so ``noise=0.05`` is noise at 5 % of an individual update's
    scale, as a DP mechanism calibrated to one user's contribution adds).
    ``nested`` draws the updates, the participation and the noise from
    streams of their own, round by round, so that more rounds extend the same
    federation (its users' updates and first rounds unchanged), as
    :func:`fedguard.exposure.exposure` needs to compare horizons; by default
    one stream, whose draws the benchmarks' figures were measured on.
    """
    for name, value in (("users", users), ("rounds", rounds), ("dim", dim), ("window", window)):
        if not is_whole(value) or value < 1:
            raise InputError(f"--{name} must be a positive integer, got {value!r}")
    checks.seed(seed)
    if not (is_number(participation) and is_number(noise)):
        raise InputError(f"--participation and --noise must be numbers, got {participation!r} and {noise!r}")
    if rounds % window:
        below, above = rounds - rounds % window, rounds - rounds % window + window
        raise InputError(f"--rounds {rounds} is not a multiple of --window {window}: counts are published per whole "
                         f"window; give --rounds {above}" + (f" or {below}" if below > 0 else ""))  # fmt: skip
    if not 0 < participation <= 1:
        raise InputError(f"--participation must be in (0, 1], got {participation!r}")
    if not (math.isfinite(noise) and noise >= 0):
        raise InputError(f"--noise must be a finite number >= 0, got {noise!r}")
    if rounds <= users:
        raise NotIdentifiable(
            f"--rounds {rounds} must exceed --users {users}: with rounds <= users no attack can identify who took part"
        )
    if dim < users:
        raise NotIdentifiable(
            f"--dim {dim} is below --users {users}: the sums then span fewer dimensions than there are users; "
            f"use --dim >= --users"
        )
    elements = simulated_elements(users, rounds, dim)
    if elements > MAX_SIMULATED_ELEMENTS:
        raise InputError(
            f"a federation of {users} users, {rounds} rounds and {dim} entries would take {elements * 8 / 2**30:,.1f} GiB; "
            f"lower --users, --rounds or --dim"
        )
    if nested:
        updates, joins, noises = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    else:
        updates = joins = noises = np.random.default_rng(seed)
    P = (joins.random((rounds, users)) < participation).astype(np.float64)
    g = updates.standard_normal((users, dim))
    G = P @ g
    if noise > 0:
        G = G + noise * noises.standard_normal(G.shape)
    C = P.reshape(rounds // window, window, users).sum(axis=1).T.astype(np.int64)
    return Federation(
        aggregates=G, counts=C, window=int(window), participation=P.astype(np.int8), updates=g,
        noise_scale=float(noise),
    )


# --------------------------------------------------------------------------- users the counts cannot tell apart


def by_count_rows(counts: np.ndarray, users) -> list[list[int]]:
    """``users`` grouped by their count rows (users with one row are interchangeable to any attacker), in order."""
    groups: dict[bytes, list[int]] = {}
    for u in users:
        groups.setdefault(np.asarray(counts[u]).tobytes(), []).append(int(u))
    return list(groups.values())
