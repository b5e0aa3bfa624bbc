"""Gradient disaggregation: speed and exactness of ``fedguard disaggregate`` against the issue's targets.

Prints one line per figure:

* ``reference`` -- the paper's README case (50 users, 200 rounds, d = 200,
  counts per 10 rounds, participation 0.5): fedguard vs a plain loop of one
  ``scipy.optimize.milp`` feasibility problem per user (the paper's integer
  program with HiGHS in place of Gurobi), measured in the same run; fedguard
  runs with one worker, as serial as the loop. Target: P exact, >= 4x faster.
* ``scale`` -- 200 users / 800 rounds / d = 400 and 500 / 2000 / 1000.
  Target: exact; the second within 5 minutes.
* ``noise`` -- Gaussian noise at 0.05 ... 1.0 of the update scale on the
  reference case. Target: >= 90 % of users exact at 0.05; shows where it breaks.

Every line gives the time per user and in total, so growth with users and
rounds is visible.

BLAS threads (numpy's, scipy's) are pinned with ``--threads`` (default 1): on
a busy 2-core machine two BLAS threads had made the reference speed-up 2.6x
instead of 6.5x. The ``noise`` section is slow: 2-3 minutes a level and seed
on the reference case (seven levels, ``--seeds 3``: about 45 minutes).

Usage: ``python benchmarks/disaggregation.py [--only reference,scale,noise] [--seeds 3] [--threads 1]``
(``--only reference --seeds 1`` is a quick run).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp
from threadpoolctl import threadpool_limits  # installed with scikit-learn, a dependency of fedguard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedguard.attacks.disaggregation import disaggregate, score  # noqa: E402
from fedguard.attacks.federation import simulate_federation  # noqa: E402

from _args import listed, new_parser, one_line_errors, one_of, positive_int  # noqa: E402


SECTIONS = ("reference", "scale", "noise")


def baseline_milp_loop(aggregates: np.ndarray, counts: np.ndarray, window: int) -> np.ndarray:
    """The plain attack: for each user, one MILP ``x`` binary, ``N^T x = 0``, window sums = counts.

    ``N`` spans the orthogonal complement of the aggregates' column space (SVD,
    rank = users); equality is relaxed to 1e-6 for floating point. No
    parallelism, no warm starts, no relaxation first.
    """
    T = aggregates.shape[0]
    n = counts.shape[0]
    U, _, _ = np.linalg.svd(aggregates, full_matrices=True)
    NT = U[:, n:].T
    W = sparse.kron(sparse.eye(T // window), np.ones((1, window)), format="csr")
    columns = np.zeros((T, n), dtype=np.int8)
    for u in range(n):
        res = milp(
            np.zeros(T),
            constraints=[LinearConstraint(NT, -1e-6, 1e-6), LinearConstraint(W, counts[u], counts[u])],
            integrality=np.ones(T),
            bounds=Bounds(0, 1),
        )
        if res.x is not None:
            columns[:, u] = np.round(res.x).astype(np.int8)
    return columns


def _run(users, rounds, dim, noise=0.0, seed=0, window=10):
    fed = simulate_federation(users, rounds, dim, window, 0.5, noise, seed)
    result = disaggregate(fed.aggregates, fed.counts, window, noise_scale=fed.noise_scale or None, seed=seed)
    return fed, result, score(result, fed)


def _line(label, result, sc):
    stages = ", ".join(f"{k} {v}" for k, v in result.stage_counts().items() if v)
    return (
        f"{label:<34} exact {sc.users_exact:>4}/{sc.users:<4} P exact {str(sc.matrix_exact):<5} "
        f"wrong-claimed {sc.claimed_exact_wrong}  {result.seconds:8.2f} s total "
        f"{1000 * result.seconds / sc.users:7.1f} ms/user  [{stages}]"
    )


def reference(seeds: int) -> None:
    print("== reference case: 50 users, 200 rounds, d = 200, window 10, participation 0.5; both serial")
    ratios = []
    for seed in range(seeds):
        fed = simulate_federation(50, 200, 200, 10, 0.5, 0.0, seed)
        t0 = time.perf_counter()
        base = baseline_milp_loop(fed.aggregates, fed.counts, 10)
        t_base = time.perf_counter() - t0
        base_exact = int(sum(np.array_equal(base[:, u], fed.participation[:, u]) for u in range(50)))
        result = disaggregate(fed.aggregates, fed.counts, 10, seed=seed, workers=1)  # serial, as the loop
        sc = score(result, fed)
        ratios.append(t_base / result.seconds)
        print(_line(f"fedguard seed {seed}, 1 worker", result, sc))
        print(f"{'plain milp loop seed ' + str(seed):<34} exact {base_exact:>4}/50   {t_base:8.2f} s total "
              f"{1000 * t_base / 50:7.1f} ms/user   speed-up {t_base / result.seconds:.1f}x (target >= 4x)")
    print(f"speed-up over the plain loop: min {min(ratios):.1f}x, median {float(np.median(ratios)):.1f}x")


def scale() -> None:
    print("== scale (participation 0.5, window 10, exact aggregates)")
    for users, rounds, dim in ((200, 800, 400), (500, 2000, 1000)):
        _, result, sc = _run(users, rounds, dim)
        target = " (target: exact within 300 s)" if users == 500 else " (target: exact)"
        print(_line(f"{users} users / {rounds} rounds / d={dim}", result, sc) + target)


def noise(seeds: int) -> None:
    print("== noise on the aggregates, relative to an update's scale (50 users, 200 rounds, d = 200)")
    for level in (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0):
        shares, errs, wrong, secs = [], [], 0, 0.0
        for seed in range(seeds):
            _, result, sc = _run(50, 200, 200, noise=level, seed=seed)
            shares.append(sc.share_exact)
            errs.append(sc.update_error_median)
            wrong += sc.claimed_exact_wrong
            secs += result.seconds
        target = "  (target >= 90 %)" if level == 0.05 else ""
        print(f"noise {level:<5} users exact {100 * np.mean(shares):5.1f} % (min {100 * min(shares):5.1f} %)  "
              f"median update error (mean over seeds) {np.nanmean(errs):.3f}  wrongly claimed exact {wrong}  "
              f"{secs / seeds:6.2f} s/run{target}")


def main() -> None:
    parser = new_parser(__doc__, "Quick run: --only reference --seeds 1 (about half a minute); the scale section takes "
                                 "minutes, the noise section 2-3 minutes a level and seed.")
    parser.add_argument("--only", type=listed(one_of(*SECTIONS)), default=",".join(SECTIONS),
                        help=f"comma-separated sections to run, out of {', '.join(SECTIONS)}")
    parser.add_argument("--seeds", type=positive_int, default=3, help="federations of the reference and noise sections")
    parser.add_argument("--threads", type=positive_int, default=1, help="BLAS threads of numpy and scipy")
    args = parser.parse_args()
    threadpool_limits(args.threads)
    with one_line_errors(parser):
        if "reference" in args.only:
            reference(args.seeds)
        if "scale" in args.only:
            scale()
        if "noise" in args.only:
            noise(args.seeds)


if __name__ == "__main__":
    main()
