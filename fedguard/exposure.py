"""Exposure to gradient disaggregation: after how many rounds does secure aggregation stop hiding *your* update?

Lam et al. (ICML 2021) rebuild each user's individual update from the sums of
many securely aggregated rounds plus published participation counts (see
:mod:`fedguard.attacks.disaggregation`). Whether that works against a client
depends on the federation, not on the client's data: how many users share a
round, how often each joins, how coarsely counts are published, how much noise
is on the sums, and how many rounds the client's update stays (nearly) the same.

:func:`exposure` places an update among simulated peers with those settings and
attacks growing prefixes of the rounds; :func:`client_exposure` does that for
the client's own update under the federation as configured and under the
defenses that change the answer (noise on the sums, coarser counts, less
frequent participation), so a report can say "exposed after 60 rounds; with
noise 1.0 on the sums, not within 200".

What is simulated: each user joins each round independently with probability
``participation``; peers' updates are i.i.d. Gaussian at the scale of the
client's; noise is i.i.d. Gaussian relative to that scale. The client's update
enters as a seeded sample of ``dim`` of its coordinates: the participation
matrix is identified from any ``dim >= users`` coordinates, and a real server
holding all of them averages noise over more, so the figures are, if
anything, optimistic for the client.

References
----------
Lam, M., Wei, G.-Y., Brooks, D., Reddi, V. J., Mitzenmacher, M. "Gradient
Disaggregation: Breaking Privacy in Federated Learning by Reconstructing the
User Participant Matrix." ICML 2021.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from fedguard import checks
from fedguard.attacks.disaggregation import disaggregate, match_users, score
from fedguard.attacks.federation import (
    MAX_SIMULATED_ELEMENTS,
    Federation,
    NotIdentifiable,
    as_numpy,
    finite_or_none,
    simulate_federation,
    simulated_elements,
)
from fedguard.checks import is_number, is_whole
from fedguard.errors import InputError, kind_of

if TYPE_CHECKING:
    import torch

__all__ = [
    "ClientExposure",
    "Exposure",
    "ExposurePoint",
    "FederationSettings",
    "Scenario",
    "TOO_FEW_VALUES",
    "TooLarge",
    "client_exposure",
    "exposure",
    "what_ifs",
]

#: Why a client's update cannot be singled out whatever the rounds: the reports say so rather than blame the rounds.
TOO_FEW_VALUES = "the update has too few non-zero values"
#: Relative error below which a recovered update counts as the client's update.
TARGET_ERROR = 0.05
#: The most users per round and stable rounds a federation is described with (far beyond what it can simulate:
#: the simulation's size is checked on its own, see :data:`~fedguard.attacks.federation.MAX_SIMULATED_ELEMENTS`).
MAX_FEDERATION_SIZE = 10**7


@dataclass(frozen=True)
class FederationSettings:
    """The federation the client takes part in, as far as disaggregation cares.

    ``users_per_round`` clients are aggregated per round on average, each joining
    a round with probability ``participation`` (so the population is
    ``users_per_round / participation``); counts are published per ``window``
    rounds; ``stable_rounds`` is how many rounds the client's update stays
    (nearly) the same, the horizon the server has; ``noise`` is the standard
    deviation of Gaussian noise on each aggregate entry relative to an
    update's RMS entry (DP on the sum, or FedAvg drift).

    Parameters
    ----------
    users_per_round : int
        Clients summed per round on average (default 10).
    participation : float
        Probability a client joins a round, in ``(0, 1]`` (default 0.5).
    window : int
        Rounds per published participation count (default 10).
    stable_rounds : int
        Rounds the server has to attack over (default 200).
    noise : float
        Noise on the sums relative to an update's RMS entry, ``>= 0`` (default 0).

    Raises
    ------
    InputError
        For a value out of its range.
    """

    users_per_round: int = 10
    participation: float = 0.5
    window: int = 10
    stable_rounds: int = 200
    noise: float = 0.0

    def __post_init__(self):
        if not (is_whole(self.users_per_round) and 1 <= self.users_per_round <= MAX_FEDERATION_SIZE):
            raise InputError(f"users_per_round must be a whole number from 1 to {MAX_FEDERATION_SIZE:,}, got {checks.shown(self.users_per_round)}")
        if not (is_number(self.participation) and 0 < self.participation <= 1):
            raise InputError(f"participation must be a number in (0, 1], got {self.participation!r}")
        if not (is_whole(self.window) and 1 <= self.window <= MAX_FEDERATION_SIZE):
            raise InputError(f"window must be a whole number of rounds from 1 to {MAX_FEDERATION_SIZE:,}, got {checks.shown(self.window)}")
        if not (is_number(self.noise) and math.isfinite(self.noise) and self.noise >= 0):
            raise InputError(f"noise must be a finite number >= 0, got {self.noise!r}")
        if not (is_whole(self.stable_rounds) and 1 <= self.stable_rounds <= MAX_FEDERATION_SIZE):
            raise InputError(f"stable_rounds must be a whole number from 1 to {MAX_FEDERATION_SIZE:,}, got {checks.shown(self.stable_rounds)}")
        for name, kind in (("users_per_round", int), ("participation", float), ("window", int), ("stable_rounds", int), ("noise", float)):
            object.__setattr__(self, name, kind(getattr(self, name)))  # numpy numbers as Python's, for the JSON

    @property
    def users(self) -> int:
        return max(1, int(round(self.users_per_round / self.participation)))

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "users": self.users}


@dataclass(frozen=True)
class ExposurePoint:
    """One attacked prefix of the simulated rounds."""

    rounds: int
    identifiable: bool
    share_exact: float
    client_status: str
    client_error: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "identifiable": self.identifiable,
            "share_exact": self.share_exact,
            "client_status": self.client_status,
            "client_error": finite_or_none(self.client_error),
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class Exposure:
    """After how many rounds the client's individual update becomes recoverable.

    ``rounds_to_exposure`` is the first tested number of rounds at which the
    client's update was recovered to within ``target_error`` relative error
    (its participation column certified or not); None when that never happened
    within ``max_rounds``. ``points`` are the prefixes tested (ascending).
    ``complete`` is False when a deadline cut the search short: a
    ``rounds_to_exposure`` found is then an upper bound, a None undecided.
    """

    users: int
    users_per_round: float
    participation: float
    window: int
    dim: int
    noise: float
    max_rounds: int
    target_error: float
    rounds_to_exposure: int | None
    points: tuple[ExposurePoint, ...]
    seed: int
    seconds: float
    complete: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "complete": self.complete,
            "users": self.users,
            "users_per_round": self.users_per_round,
            "participation": self.participation,
            "window": self.window,
            "dim": self.dim,
            "noise": self.noise,
            "max_rounds": self.max_rounds,
            "target_error": self.target_error,
            "rounds_to_exposure": self.rounds_to_exposure,
            "seed": self.seed,
            "seconds": self.seconds,
            "points": [p.to_dict() for p in self.points],
        }


class TooLarge(InputError):
    """The federation asked for is too large to simulate."""


def _with_client(fed: Federation, client: int, update: np.ndarray) -> Federation:
    """``fed`` with user ``client``'s update replaced (same participation, same noise draw).

    The sums change by the client's column of the participation times the
    change of its update (a rank-one correction; summing again was 7.5 s of a
    50 s exposure at 3 000 users).
    """
    updates = fed.updates.copy()
    updates[client] = update
    aggregates = fed.aggregates + np.outer(fed.participation[:, client], update - fed.updates[client])
    return dataclasses.replace(fed, aggregates=aggregates, updates=updates)


def _client_vector(update: Any) -> np.ndarray:
    """``update`` (a numpy array, a torch tensor or nested sequences of numbers, any shape) as a flat real array,
    not copied where it already is one (see :func:`~fedguard.attacks.federation.as_numpy`).

    Raises :class:`~fedguard.errors.InputError` for anything that is not a non-empty, finite, real-valued array,
    so that no bad update reads as "not exposed".
    """
    if update is None:
        raise InputError("the update is None; pass the client's update (an array or a tensor of any shape)")
    array = as_numpy(update, "the update")
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InputError(f"the update is {type(update).__name__} of {array.dtype}, not real numbers; pass the client's update as an array or a tensor")
    flat = array.reshape(-1)
    if flat.size == 0:
        raise InputError("the update is empty; pass the client's update (an array or a tensor of any shape)")
    if not np.isfinite(flat).all():
        raise InputError("the update has non-finite values (NaN or inf); fix the training step before auditing it")
    return flat


def _informative(flat: np.ndarray) -> np.ndarray:
    """The non-zero coordinates of the flat update (``flat`` itself when it has no zero).

    Coordinates a client leaves at zero (frozen layers, pruned weights) are zero in every peer's update of the same
    model too: they carry nothing a server could disaggregate, so they are not sampled.
    """
    nonzero = int(np.count_nonzero(flat))
    if nonzero == 0:
        raise InputError("the update is all zeros (no parameter changed); check the training step before auditing it")
    return flat if nonzero == flat.size else flat[flat != 0]


def _client_sample(values: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """``dim`` seeded entries of ``values``, as float64 scaled to RMS 1 (the attack is scale-free)."""
    idx = np.random.default_rng(seed).choice(values.size, size=dim, replace=False) if values.size > dim else np.arange(values.size)
    sample = values[idx].astype(np.float64)
    sample = sample / float(np.abs(sample).max())  # first to 1 at most: squares of 1e300 (or 1e-300) had overflowed
    return sample / float(np.sqrt(np.mean(sample**2)))


def exposure(
    users_per_round: float = 10,
    rounds: int = 400,
    window: int = 10,
    dim: int | None = None,
    noise: float = 0.0,
    participation: float = 0.5,
    seed: int = 0,
    client: int = 0,
    client_update: np.ndarray | None = None,
    target_error: float = TARGET_ERROR,
    time_limit: float = 5.0,
    workers: int | None = None,
    deadline: float | None = None,
    progress: Callable[[ExposurePoint], None] | None = None,
) -> Exposure:
    """After how many rounds does a client's individual update become recoverable?

    Simulates a federation whose rounds aggregate ``users_per_round`` clients
    on average, each joining a round with probability ``participation``
    (population ``round(users_per_round / participation)``), with counts
    published per ``window`` rounds and Gaussian noise ``noise`` (relative to
    an update's RMS entry) on each aggregate. ``client_update``, when given,
    is the client's own update (any shape; ``dim`` of its coordinates are
    used, default ``max(4 * users, 128)``, at most its non-zero entries). The server attacks the first ``t``
    rounds for growing ``t`` (multiples of ``window``); the client is exposed
    at the first ``t`` where its update is recovered to within ``target_error``
    relative error, its participation column certified ``exact`` or not (a
    server uses an estimate that near either way; certifying had been
    required, and updates 3 % off read as not exposed). A client alone in the
    federation (one user) hides behind nothing: it is exposed once the mean
    of the rounds it takes part in is within ``target_error`` of its update,
    after ``(noise / target_error)² / participation`` rounds, at least one. Prefixes are tested by doubling
    then bisection, assuming more rounds never help the client. No new
    prefix is attacked after ``deadline`` (a :func:`time.perf_counter` value)
    and no integer program runs past it; the result then says ``complete=False``
    unless the client was already found exposed.

    References
    ----------
    Lam et al., ICML 2021 (gradient disaggregation).
    """
    start = time.perf_counter()
    users_per_round = checks.finite(users_per_round, "users_per_round", positive=True)
    if users_per_round > MAX_FEDERATION_SIZE:
        raise InputError(f"bad users_per_round {users_per_round:.3g}; give a number up to {MAX_FEDERATION_SIZE:,}")
    if not (is_number(participation) and 0 < participation <= 1):
        raise InputError(f"bad participation {participation!r}; give a number in (0, 1]")
    participation = float(participation)
    rounds = checks.whole(rounds, "rounds", 1, MAX_FEDERATION_SIZE)
    window = checks.whole(window, "window", 1, MAX_FEDERATION_SIZE)
    noise = checks.finite(noise, "noise", positive=False)
    seed = checks.seed(seed, "seed")
    target_error = checks.finite(target_error, "target_error", positive=True)
    time_limit = checks.finite(time_limit, "time_limit", positive=False)
    if workers is not None:
        workers = checks.whole(workers, "workers")
    if deadline is not None and not (is_number(deadline) and math.isfinite(deadline)):
        raise InputError(f"bad deadline {deadline!r}; give a time.perf_counter() value or None")
    if progress is not None and not callable(progress):
        raise InputError(f"progress is {kind_of(progress)}; pass a callable progress(point) or None")
    users = max(1, int(round(users_per_round / participation)))
    client = checks.whole(client, "client", 0, users - 1)
    values = None if client_update is None else _informative(_client_vector(client_update))
    if dim is None:
        dim = max(4 * users, 128) if values is None else min(max(4 * users, 128), values.size)
    dim = checks.whole(dim, "dim")
    if dim < users:
        raise NotIdentifiable(f"{dim} coordinates are fewer than the {users} users; the attack needs d >= users"
                              + (" (give a larger dim)" if values is None else f" ({TOO_FEW_VALUES})"))
    if users == 1:  # nobody to hide among: every round's sum it takes part in is its update, plus the noise
        # The mean of the rounds it took part in (a share `participation` of them, told apart by the sums' size or
        # the window counts) errs by noise / sqrt(participation * t) (noise is relative to an update's RMS entry).
        needed = max(1, math.ceil((noise / target_error) ** 2 / participation))
        t = min(needed, int(rounds))
        point = ExposurePoint(t, True, float(t == needed), "exact" if t == needed else "approximate",
                              noise / math.sqrt(participation * t), time.perf_counter() - start)  # fmt: skip
        return Exposure(
            users=1, users_per_round=float(users_per_round), participation=float(participation), window=int(window),
            dim=dim, noise=float(noise), max_rounds=int(rounds), target_error=float(target_error),
            rounds_to_exposure=needed if t == needed else None, points=(point,), seed=int(seed),
            seconds=time.perf_counter() - start, complete=True,
        )  # fmt: skip
    rounds = (rounds // window) * window
    if rounds <= users:
        raise NotIdentifiable(
            f"{rounds} rounds (whole windows of {window}) do not exceed the {users} users (users per round / "
            f"participation): the server cannot identify who took part; no exposure to simulate with these settings "
            f"(more rounds, or a window that leaves more whole windows in them, make one)"
        )
    if simulated_elements(users, rounds, dim) > MAX_SIMULATED_ELEMENTS:
        raise TooLarge(f"{users:,} users over {rounds:,} rounds are too many to simulate (more than "
                       f"{MAX_SIMULATED_ELEMENTS * 8 / 2**30:g} GiB); lower the users per round or the rounds")  # fmt: skip
    # nested: another stable_rounds extends the same federation (one stream had given 30/40/40 rounds at 100/200/400,
    # and at noise 0.3 exposed at 190 of 200 rounds but not within 400)
    fed = simulate_federation(users, rounds, dim, window, participation, noise, seed, nested=True)
    if values is not None:
        fed = _with_client(fed, client, _client_sample(values, dim, seed))

    tested: dict[int, ExposurePoint] = {}
    timed_out: set[int] = set()

    def attack(t: int) -> ExposurePoint:
        if t in tested:
            return tested[t]
        k = t // window
        sub = dataclasses.replace(
            fed, aggregates=fed.aggregates[:t], counts=fed.counts[:, :k], participation=fed.participation[:t],
        )
        t0 = time.perf_counter()
        try:
            result = disaggregate(sub.aggregates, sub.counts, window, noise_scale=sub.noise_scale or None,
                                  time_limit=time_limit, workers=workers, seed=seed, deadline=deadline,
                                  prove_unique=False)  # each column is checked against the truth below
        except NotIdentifiable:
            point = ExposurePoint(t, False, 0.0, "failed", float("nan"), time.perf_counter() - t0)
        else:
            match = match_users(result, sub.participation, sub.counts)
            err = float("nan")
            if np.isfinite(result.updates[client]).all():
                true = fed.updates[match[client] if match[client] >= 0 else client]
                err = float(np.linalg.norm(result.updates[client] - true) / (np.linalg.norm(true) or 1.0))
            status = result.status[client]
            if status == "exact" and match[client] < 0:
                status = "wrong"
            point = ExposurePoint(t, True, score(result, sub).share_exact, status, err, time.perf_counter() - t0)
            if result.timed_out and not exposed(point):  # with more time this prefix may have exposed the client
                timed_out.add(t)
        tested[t] = point
        if progress is not None:
            progress(point)
        return point

    def exposed(p: ExposurePoint) -> bool:  # certified or not: a server uses an estimate that near either way
        return math.isfinite(p.client_error) and p.client_error <= target_error

    def late() -> bool:
        return deadline is not None and bool(tested) and time.perf_counter() >= deadline

    grid = [t for t in range(window, rounds + 1, window) if t > users]
    found: int | None = None
    complete = True
    if grid:
        # Doubling over the grid, then bisection between the last miss and the first hit.
        lo, i, step, hi = -1, 0, 1, None
        while True:
            if late():
                complete = False
                break
            if exposed(attack(grid[i])):
                hi = i
                break
            lo = i
            if i == len(grid) - 1:
                break
            i = min(len(grid) - 1, i + step)
            step *= 2
        if hi is not None:
            while hi - lo > 1:
                if late():
                    complete = False
                    break
                mid = (lo + hi) // 2
                if exposed(attack(grid[mid])):
                    hi = mid
                else:
                    lo = mid
            found = grid[hi]
        if found is None and late():  # the deadline cut an integer program short: "not exposed" is not shown
            complete = False
        if any(found is None or t < found for t in timed_out):  # a miss the time limits decided: an upper bound
            complete = False
    return Exposure(
        users=users, users_per_round=float(users_per_round), participation=float(participation),
        window=int(window), dim=dim, noise=float(noise), max_rounds=rounds, target_error=float(target_error),
        rounds_to_exposure=found, points=tuple(tested[t] for t in sorted(tested)), seed=int(seed),
        seconds=time.perf_counter() - start, complete=complete,
    )


@dataclass(frozen=True)
class Scenario:
    """One federation setting and the exposure it gives.

    ``outcome`` is ``exposed`` (recovered within ``stable_rounds``),
    ``not exposed`` (attacked, never recovered), ``not identifiable`` (these
    settings leave the server too few rounds for the users: the defense
    holds by construction), ``cut short`` (the time budget ended it part of
    the way: not exposed up to the rounds it reached, ``exposure`` says how
    far) or ``not run`` (time budget spent or stopped before it started).
    """

    label: str
    change: str
    settings: FederationSettings
    outcome: str
    exposure: Exposure | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "change": self.change,
            "settings": self.settings.to_dict(),
            "outcome": self.outcome,
            "rounds_to_exposure": None if self.exposure is None else self.exposure.rounds_to_exposure,
            "note": self.note,
            "detail": None if self.exposure is None else self.exposure.to_dict(),
        }


@dataclass(frozen=True)
class ClientExposure:
    """The client's update under the configured federation (first scenario) and under what-if defenses."""

    scenarios: tuple[Scenario, ...]
    target_error: float
    seconds: float

    @property
    def configured(self) -> Scenario:
        return self.scenarios[0]

    def to_dict(self) -> dict[str, Any]:
        first = self.configured.to_dict()
        return {
            "method": "gradient disaggregation (Lam et al., ICML 2021) on simulated peers",
            "settings": first["settings"],
            "outcome": first["outcome"],
            "rounds_to_exposure": first["rounds_to_exposure"],
            "target_error": self.target_error,
            "seconds": self.seconds,
            "scenarios": [s.to_dict() for s in self.scenarios],
        }


def what_ifs(settings: FederationSettings) -> list[tuple[str, str, FederationSettings]]:
    """``(label, change, settings)``: the configured federation, then one defense at a time."""
    rows = [("as configured", "", settings)]
    for sigma in (0.1, 1.0):
        if sigma > settings.noise:
            rows.append((f"noise {sigma:g} on the sums", f"noise {settings.noise:g} -> {sigma:g}",
                         dataclasses.replace(settings, noise=sigma)))
    coarse = settings.window * 5
    if coarse <= settings.stable_rounds:
        rows.append((f"counts per {coarse} rounds", f"window {settings.window} -> {coarse}",
                     dataclasses.replace(settings, window=coarse)))
    rows.append((f"participation {settings.participation / 2:g}",
                 f"participation {settings.participation:g} -> {settings.participation / 2:g} (same users per round)",
                 dataclasses.replace(settings, participation=settings.participation / 2)))
    return rows


def client_exposure(
    update: np.ndarray | torch.Tensor,
    settings: FederationSettings | None = None,
    seed: int = 0,
    time_limit: float = 0.25,
    budget: float | None = None,
    stop: Callable[[], bool] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ClientExposure:
    """Exposure of ``update`` (the client's update: an array or a tensor, any shape) under ``settings`` and what-if defenses.

    The configured federation always runs; each what-if runs while ``budget``
    seconds are left and ``stop()`` is false, else it is ``not run``.
    A what-if that runs out of ``budget`` part-way keeps what it found (an
    upper bound on the rounds, or ``cut short`` with the rounds it reached).
    ``time_limit`` caps each user's integer program: a server with more
    compute can only do better, so ``rounds_to_exposure`` is an upper bound on
    when a determined server recovers the update. Integer programs run
    in-process (``workers=1``), so this is safe to call next to torch.

    Returns
    -------
    ClientExposure
        The configured federation's scenario first, then each what-if's: rounds until the server recovers the
        update, or why it does not (``to_dict()`` is the audit report's ``exposure``).

    Raises
    ------
    InputError
        For an update that is empty, not real numbers, not finite or all zeros, settings that are not
        :class:`FederationSettings`, or a bad ``seed``, ``time_limit`` or ``budget``.
    """
    start = time.perf_counter()
    values = _informative(_client_vector(update))
    if settings is None:
        settings = FederationSettings()
    elif not isinstance(settings, FederationSettings):
        raise InputError(f"settings is {kind_of(settings)}; pass FederationSettings(...) or None for the defaults")
    seed = checks.seed(seed, "seed")
    time_limit = checks.finite(time_limit, "time_limit", positive=False)
    if budget is not None:
        budget = checks.finite(budget, "budget", positive=False)
    for name, hook in (("stop", stop), ("progress", progress)):
        if hook is not None and not callable(hook):
            raise InputError(f"{name} is {kind_of(hook)}; pass a callable or None")
    scenarios: list[Scenario] = []
    for label, change, what in what_ifs(settings):
        first = not scenarios
        if not first and stop is not None and stop():
            scenarios.append(Scenario(label, change, what, "not run", note="stopped"))
            continue
        if not first and budget is not None and time.perf_counter() - start >= budget:
            scenarios.append(Scenario(label, change, what, "not run", note=f"time budget of {budget:g} s spent"))
            continue
        if progress is not None:
            progress(label)
        try:
            result = exposure(
                users_per_round=what.users_per_round, rounds=what.stable_rounds, window=what.window,
                noise=what.noise, participation=what.participation, seed=seed, client_update=values,
                time_limit=time_limit, workers=1, deadline=None if budget is None else start + budget,
            )
        except NotIdentifiable as exc:
            scenarios.append(Scenario(label, change, what, "not identifiable", note=str(exc)))
            continue
        except TooLarge as exc:
            if first:  # the federation as configured must be measured, or the settings changed
                raise
            scenarios.append(Scenario(label, change, what, "not run", note=str(exc)))
            continue
        if result.rounds_to_exposure is not None:
            note = None if result.complete else ("upper bound: time limits cut the attack short at fewer rounds, "
                                                 "which more time (or a faster machine) may expose")  # fmt: skip
            scenarios.append(Scenario(label, change, what, "exposed", result, note))
        elif result.complete:
            scenarios.append(Scenario(label, change, what, "not exposed", result))
        else:
            tried = max(p.rounds for p in result.points)
            spent = (f"time budget of {budget:g} s spent" if budget is not None and time.perf_counter() >= start + budget
                     else "time limits cut the attack short")  # fmt: skip
            scenarios.append(Scenario(label, change, what, "cut short", result, f"{spent}; not exposed up to {tried} rounds"))
    return ClientExposure(tuple(scenarios), TARGET_ERROR, time.perf_counter() - start)
