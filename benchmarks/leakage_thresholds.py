"""Where the audit's leakage thresholds come from: what a reconstruction at a given PSNR / SSIM gives away.

For shipped data (digits 8x8 upsampled to 32x32, the scikit-image photographs
at 3x32x32) it degrades every example of a pool of 64 to a target quality and
prints, per target:

* ``reid`` -- re-identification: how often the degraded example's nearest
  neighbour (smallest MSE) among the 64 originals is its own original. A
  server that can tell whose record it rebuilt has a leak.
* ``ssim`` -- the SSIM that degradation leaves (for the SSIM thresholds).
* ``class`` -- digits only: how often a nearest-neighbour classifier over the
  rest of the dataset still gives the right digit.

Two degradations: additive Gaussian noise (a noisy reconstruction) and
Gaussian blur (an over-smoothed one, as total variation gives), each solved
per example for the target PSNR, the noise after clipping to [0, 1]. Where
an example cannot be degraded that far (blur of width 20 leaves a
photograph near 20 dB), the row says the target was not reached and how
many examples fell short, and its figures are for what was reached. Also printed: the PSNR and SSIM
of the mean image of the data (the server's guess without any update), the
floor a reconstruction has to beat.

Usage: ``python benchmarks/leakage_thresholds.py``; deterministic (seed 0).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from scipy.optimize import brentq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedguard.data import load_data  # noqa: E402
from fedguard.metrics import psnr, ssim  # noqa: E402

TARGETS_DB = (12.0, 15.0, 18.0, 21.0, 25.0, 30.0)
POOL = 64


#: The widest Gaussian blur and the largest noise (standard deviations) tried to reach a target.
MAX_BLUR = 20.0
MAX_NOISE = 10.0
#: A degraded example within this many dB of the target has reached it.
REACHED_DB = 0.05


def _solved(degrade, x: np.ndarray, target: float, low: float, high: float) -> np.ndarray:
    """``degrade(x, s)`` at the strength ``s`` in ``[low, high]`` whose PSNR is ``target`` (PSNR falls as ``s`` grows);
    at ``high`` where even that stays above the target."""

    def gap(s: float) -> float:
        return psnr(degrade(x, s), x) - target

    if gap(high) > 0:
        return degrade(x, high)
    if gap(low) <= 0:  # the weakest degradation already reaches it
        return degrade(x, low)
    return degrade(x, brentq(gap, low, high, xtol=1e-6))


def _noisy(x: np.ndarray, target: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(x.shape)  # one draw, scaled until the clipped result has the target PSNR
    return _solved(lambda a, s: np.clip(a + s * noise, 0, 1), x, target, 1e-9, MAX_NOISE)


def _blurred(x: np.ndarray, target: float) -> np.ndarray:
    return _solved(lambda a, s: gaussian_filter(a, sigma=(0, s, s)), x, target, 1e-3, MAX_BLUR)


def _reid(degraded: np.ndarray, pool: np.ndarray) -> float:
    d = ((degraded[:, None] - pool[None]) ** 2).reshape(len(degraded), len(pool), -1).mean(-1)
    return float(np.mean(d.argmin(1) == np.arange(len(pool))))


def _classify(degraded: np.ndarray, labels: np.ndarray, rest_x: np.ndarray, rest_y: np.ndarray) -> float:
    d = ((degraded[:, None] - rest_x[None]) ** 2).reshape(len(degraded), len(rest_x), -1).mean(-1)
    return float(np.mean(rest_y[d.argmin(1)] == labels))


def report(name: str, x: torch.Tensor, y: torch.Tensor) -> None:
    rng = np.random.default_rng(0)
    idx = rng.choice(len(x), size=min(POOL, len(x)), replace=False)
    rest = np.setdiff1d(np.arange(len(x)), idx)
    pool, labels = x[idx].numpy().astype(np.float64), y[idx].numpy()
    rest_x, rest_y = x[rest].numpy().astype(np.float64), y[rest].numpy()
    mean = (rest_x.mean(0) if len(rest) else pool.mean(0))
    base_p = [psnr(mean, p) for p in pool]
    base_s = [ssim(mean, p) for p in pool]
    print(f"== {name}: pool of {len(pool)}, shape {tuple(pool.shape[1:])}")
    print(f"mean image (no update): PSNR median {np.median(base_p):.1f} dB (10-90 %: "
          f"{np.percentile(base_p, 10):.1f}-{np.percentile(base_p, 90):.1f}), SSIM median {np.median(base_s):.2f}")
    for target in TARGETS_DB:
        for kind in ("noise", "blur"):
            if kind == "noise":
                deg = np.stack([_noisy(p, target, rng) for p in pool])
            else:
                deg = np.stack([_blurred(p, target) for p in pool])
            reid = _reid(deg, pool)
            ssims = [ssim(a, b) for a, b in zip(deg, pool)]
            psnrs = [psnr(a, b) for a, b in zip(deg, pool)]
            short = sum(p > target + REACHED_DB for p in psnrs)
            reached = f"target {target:4.0f} dB" if not short else f"target {target:4.0f} dB NOT reached by {short} of {len(psnrs)}"
            line = (f"{kind:<5} {reached}: PSNR median {np.median(psnrs):5.1f}  SSIM median {np.median(ssims):.2f}"
                    f"  re-identified {100 * reid:5.1f} %")
            if len(rest) and name == "digits":
                line += f"  class kept {100 * _classify(deg, labels, rest_x, rest_y):5.1f} %"
            print(line)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help, nothing else
    torch.manual_seed(0)
    x, y = load_data("digits")
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1)
    report("digits", x, y)
    x, y = load_data("images", input_shape=(3, 32, 32))
    report("scikit-image photographs (3x32x32)", x, y)


if __name__ == "__main__":
    main()
