"""Measuring what an attack rebuilt against the true private batch.

Reconstructions come back in arbitrary order, so each is first matched to a
true example by the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``)
so as to maximise the total PSNR (the pairing most favourable to the server); then, per matched pair, PSNR (data range
1), SSIM (``skimage.metrics.structural_similarity`` in its default form: Wang
et al. 2004's index with a uniform 7x7 window, or the largest odd window the
image allows, and sample covariances, not the paper's Gaussian window of
sigma 1.5, which an 8x8 image cannot hold; data range 1) and MSE, and
whether the label the attack gave it is right. Label attacks are scored on
their per-class counts.

Leakage levels, per example; an attack's level is the worst over the
examples of the batch (one rebuilt example is already a leak), each rebuilt
image also scored against the true example closest to it where the pairing
put it elsewhere; the audit's the worst over attacks. A criterion counts only
when the reconstruction beats what the server knows *without* the update
(:class:`NoUpdateGuess`) -- the best of the mean image of its public data
(mid-grey without it) and the mean images of the classes the batch holds,
which the label counts an update gives away make guesses too -- by a
margin: 3 dB of PSNR or 0.10 of SSIM (a flat image is "rebuilt" at 25 dB by
a grey square; at 8x8 an example's class mean image alone reaches SSIM 0.80
against most digits). A reconstruction that is itself flat (:data:`FLAT`)
shows nothing of an example and reads none. A label
attack's accuracy counts only above what guessing the public data's class
shares gets: its mean plus two standard deviations over batches drawn from
them (about 0.82 for a batch of 8 digits), at most one example short of
every count right. An image attack that reads its labels off the update
(DLG's optimised labels) takes the label level of those too.

=========  ===================================================  ================================
level      image attacks (and beating the baseline)             label-only attacks
=========  ===================================================  ================================
high       PSNR >= 25 dB or SSIM >= 0.80                        --
medium     PSNR >= 18 dB or SSIM >= 0.50                        the label of a one-example batch
low        PSNR >= baseline + 3 dB or SSIM >= 0.25              label accuracy >= 0.5 (counts), and
                                                               above the class-share guess
none       otherwise                                            otherwise
=========  ===================================================  ================================

The numbers come from ``benchmarks/leakage_thresholds.py`` (``docs/audit.md``
has the table): examples of digits (upsampled to 32x32) degraded by noise or
blur to 25 dB have SSIM ~0.9 and are re-identified among 64 candidates 100 %
of the time (noisy photographs too; blurred, overlapping photograph crops
67 %, 14 of 64 of which no blur brings down to 25 dB); at 18 dB digits are still re-identified 100 % of the time and keep
their class 91-97 %; the mean image alone scores a median 13.6 dB (digits) and
14.8 dB (photographs), so a reconstruction must beat it before it counts.

Verdict: ``block`` when the level is at or above ``--fail-on`` (default
``high``), ``warn`` one level below it (if that is at least ``low``),
``pass`` otherwise.

References
----------
Wang, Z., Bovik, A. C., Sheikh, H. R. & Simoncelli, E. P. "Image quality
assessment: from error visibility to structural similarity." IEEE TIP 13(4), 2004.
Kuhn, H. W. "The Hungarian method for the assignment problem." Naval Research
Logistics Quarterly 2, 1955.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedguard.types import AttackOutcome, AuditVerdict, LeakageLevel, Reconstruction, SampleLeak

__all__ = [
    "THRESHOLDS",
    "PSNR_CAP",
    "psnr",
    "ssim",
    "match",
    "baseline_psnr",
    "NoUpdateGuess",
    "score",
    "image_level",
    "label_level",
    "verdict_for",
    "recovered_fraction",
    "class_image_scores",
]

#: A reconstruction at or above either counts as recovered (see :func:`recovered_fraction`).
RECOVERED_PSNR, RECOVERED_SSIM = 30.0, 0.9
#: Batches drawn from the public class shares to measure what guessing them gets (:class:`NoUpdateGuess`).
GUESS_DRAWS = 2000
#: Where the class shares' guess gets every count right in at most this share of the draws, a label attack that gets
#: them all right beats it (:meth:`NoUpdateGuess.label_accuracy_bound`): above a coin's flip, so that one example of
#: two classes counts whether they are exactly balanced (0.5) or not (digits' 178/182 split had made it 0.506 and an
#: exact label read none, medium at 180/180), and below the 66-95 % at which exact counts tell the server little
#: (shares 0.9/0.1 at four examples, 0.95/0.05 at one, 0.99/0.01 at eight).
GUESS_RIGHT_CAP = 0.6
#: PSNR of an exact reconstruction is infinite; reported values are capped here.
PSNR_CAP = 100.0
#: How far below a margin over the guess (:func:`image_level`) a difference still reaches it: float rounding.
MARGIN_ROUNDING = 1e-9
#: A reconstruction whose every channel varies by less than this (standard deviation, on the data range [0, 1]) is
#: flat: it shows nothing of an example but its mean intensity, and reads none. A grey square (or a reconstruction
#: that diverged to NaN, scored as grey) had read high against low-contrast photograph crops by SSIM (24 dB and SSIM
#: 0.93 where the public mean image gave 0.80: 6 of 40 batches of 8), and a flat image at each example's own mean
#: medium on 15 of 40 (an independent review). Putting the flat image nearest each example among the guesses instead
#: was tried and taken back: that guess knows the example's mean, and it lowered noisy copies of low-contrast crops
#: (noise 0.03 at a third of the contrast, 30.5 dB) from high to none on 12 of 40 (a second review).
FLAT = 0.01

THRESHOLDS: dict[str, float] = {
    "high_psnr": 25.0,
    "high_ssim": 0.80,
    "medium_psnr": 18.0,
    "medium_ssim": 0.50,
    "low_psnr_over_baseline": 3.0,
    "low_ssim": 0.25,
    "ssim_over_baseline": 0.10,
    "low_label_accuracy": 0.5,
}


def _same_shape(a: np.ndarray, b: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``a`` and ``b`` as float64 arrays of one shape; ValueError naming both shapes otherwise (no broadcasting)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"{what} of images of shapes {a.shape} and {b.shape}; pass two images of one shape")
    return a, b


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1] (capped at :data:`PSNR_CAP`)."""
    a, b = _same_shape(a, b, "PSNR")
    mse = float(np.mean((a - b) ** 2))
    if not math.isfinite(mse):  # an infinite pixel: no signal at all; a NaN one: nothing to say
        return -math.inf if mse == math.inf else math.nan
    if mse <= 10 ** (-PSNR_CAP / 10):
        return PSNR_CAP
    return 10.0 * math.log10(1.0 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two ``C,H,W`` images in [0, 1] (channels first; a uniform window, see the module's note); NaN when an
    image is smaller than 3x3."""
    from skimage.metrics import structural_similarity

    a, b = _same_shape(a, b, "SSIM")
    if a.ndim != 3:
        raise ValueError(f"SSIM of images of shape {a.shape}; pass C,H,W images (channels first)")
    side = min(a.shape[-2:])
    win = min(7, side if side % 2 else side - 1)
    if win < 3:
        return float("nan")
    return float(
        structural_similarity(a, b, data_range=1.0, channel_axis=0, win_size=win)
    )


def match(true: torch.Tensor, rebuilt: torch.Tensor) -> list[tuple[int, int]]:
    """Pairs ``(true index, rebuilt index)`` maximising the total PSNR (Hungarian algorithm on the capped log-MSE).

    The pairing most favourable to the server, so that an exact reconstruction is always credited: the
    pairing of least total MSE had put two exact rebuilds of a class-fishing attack on other examples (their
    errors there were smaller than those of the blurred rebuilds it then paired with the two true ones).
    Identical true examples all take the best rebuild any of them was paired with: one exact rebuild of an
    image the batch holds twice had been credited to one copy (the other scored against a leftover, 23 dB).
    """
    from scipy.optimize import linear_sum_assignment

    t = torch.as_tensor(true).detach().cpu().reshape(len(true), -1).double()
    r = torch.as_tensor(rebuilt).detach().cpu().reshape(len(rebuilt), -1).double()
    if tuple(true.shape[1:]) != tuple(rebuilt.shape[1:]):
        raise ValueError(f"cannot match images of shape {tuple(true.shape[1:])} to images of shape {tuple(rebuilt.shape[1:])}")
    mse = torch.cdist(t, r).pow(2) / t.shape[1]
    rows, cols = linear_sum_assignment(mse.clamp_min(10 ** (-PSNR_CAP / 10)).log10().numpy())
    pairs = {int(i): int(j) for i, j in zip(rows, cols)}
    copies: dict[bytes, list[int]] = {}
    for i in range(len(t)):
        copies.setdefault(t[i].numpy().tobytes(), []).append(i)
    for members in copies.values():  # identical examples: the server that rebuilt one holds every copy
        got = [pairs[i] for i in members if i in pairs]
        if len(members) > 1 and got:
            best = min(got, key=lambda j: float(mse[members[0], j]))
            pairs.update(dict.fromkeys(members, best))
    return sorted(pairs.items())


@dataclass(frozen=True)
class NoUpdateGuess:
    """What the server holds without the update, which a leak must beat: the mean image of its public data
    (mid-grey when None), each class's mean image (the label counts an update gives away name the classes a batch
    holds, and so their mean images), and the classes' shares of its public examples (uniform when None).

    Build it from the server's public examples with :meth:`from_public`.
    """

    image: torch.Tensor | None = None
    class_images: dict[int, torch.Tensor] = field(default_factory=dict)
    class_shares: np.ndarray | None = None

    @classmethod
    def from_public(cls, x: torch.Tensor, y: torch.Tensor | None, num_classes: int) -> "NoUpdateGuess":
        """From the server's public examples ``x`` and their labels ``y`` (None: the mean image alone)."""
        x = x.detach().float().cpu()
        if y is None:
            return cls(image=x.mean(0))
        y = torch.as_tensor(y).long().cpu()
        present = [c for c in range(num_classes) if bool((y == c).any())]
        shares = torch.bincount(y[(y >= 0) & (y < num_classes)], minlength=num_classes).double().numpy()
        return cls(image=x.mean(0), class_images={c: x[y == c].mean(0) for c in present},
                   class_shares=shares / max(shares.sum(), 1.0))  # fmt: skip

    def image_scores(self, true_x: torch.Tensor, true_y: torch.Tensor | None = None) -> list[tuple[float, float]]:
        """Per true example, the best PSNR and the best SSIM of the guesses: the mean image, and, when ``true_y`` is
        given, the mean image of every class the batch holds (the label counts an update gives away name them)."""
        true_x = torch.as_tensor(true_x).detach().float().cpu()
        mean = (self.image.detach().float().cpu() if self.image is not None else torch.full_like(true_x[0], 0.5)).numpy()
        held = sorted({int(c) for c in true_y} & set(self.class_images)) if true_y is not None else []
        guesses = [mean] + [self.class_images[c].detach().float().cpu().numpy() for c in held]
        out = []
        for x in true_x.numpy():
            best_ssim = _max([ssim(g, x) for g in guesses])  # None where the images are too small for SSIM
            out.append((max(psnr(g, x) for g in guesses), math.nan if best_ssim is None else best_ssim))
        return out

    def label_counts(self, batch_size: int, num_classes: int) -> np.ndarray:
        """The counts the server guesses for a batch of ``batch_size``: its class shares in whole examples (Hamilton's
        method)."""
        from fedguard.attacks.label_counts import round_counts

        return round_counts(self._shares(num_classes), batch_size)

    def label_accuracy_bound(self, batch_size: int, num_classes: int, true_counts: torch.Tensor | None = None) -> float:
        """The label accuracy (as counts) a label attack must beat: the mean plus two standard deviations of what
        :meth:`label_counts` gets over :data:`GUESS_DRAWS` batches drawn from the class shares, but no more than one
        example short of every count right where the guess gets every count right in at most :data:`GUESS_RIGHT_CAP`
        of the draws. On random batches of digits (2-64 examples, 400 each) the guess alone beats it in 1-4 % of
        them; the plain 0.5 it had been held to, in 20 % (2 examples), 83 % (8) and all from 32 on. Uncapped, it had
        been 1.5 for one example of two balanced classes and 1.09 for eight, so that no label attack could count on a
        two-class task (iDLG's exact label read none); capped wherever the guess was ever wrong, a guess right in
        92-95 % of the draws (shares 0.99/0.01 at eight examples, 0.95/0.05 at one) had been beaten by exact counts
        that tell the server next to nothing (a review).

        Where the bound is that of a guess nearly always right (1 or more: no label result could beat it), and the
        batch's ``true_counts`` are given and the guess gets them wrong, it is what the guess gets on this batch: the
        one client that holds a rare class is the one the label tells on (a review: a batch of the rare class of
        two, split 348/12, and a class missing from the public data, had read none with the label exact)."""
        shares = self._shares(num_classes)
        guess = self.label_counts(batch_size, num_classes)
        draws = np.random.default_rng(0).multinomial(batch_size, shares, size=GUESS_DRAWS)
        accuracy = np.minimum(draws, guess).sum(axis=1) / max(batch_size, 1)
        bound = float(accuracy.mean() + 2 * accuracy.std())
        if (accuracy >= 1.0).mean() <= GUESS_RIGHT_CAP:
            return min(bound, 1.0 - 1.0 / max(batch_size, 1))
        if true_counts is not None and bound >= 1.0:
            here = float(np.minimum(np.asarray(true_counts), guess).sum()) / max(batch_size, 1)
            return min(bound, here)
        return bound

    def _shares(self, num_classes: int) -> np.ndarray:
        if self.class_shares is None or len(self.class_shares) != num_classes:
            return np.full(num_classes, 1.0 / num_classes)
        return self.class_shares


def _as_guess(prior: NoUpdateGuess | torch.Tensor | None) -> NoUpdateGuess:
    return prior if isinstance(prior, NoUpdateGuess) else NoUpdateGuess(image=prior)


def baseline_psnr(true: torch.Tensor, prior: NoUpdateGuess | torch.Tensor | None = None, labels: torch.Tensor | None = None) -> float:
    """Mean PSNR of the server's guess without the update: ``prior`` (a :class:`NoUpdateGuess`, or one image; mid-grey
    when None), with the mean images of the classes ``labels`` hold as guesses too when they are given."""
    return float(np.mean([p for p, _ in _as_guess(prior).image_scores(true, labels)]))


def image_level(
    psnr_value: float | None,
    ssim_value: float | None,
    baseline_psnr_value: float | None = None,
    baseline_ssim_value: float | None = None,
) -> LeakageLevel:
    """Leakage level of one reconstructed example (see the module docstring)."""
    t = THRESHOLDS
    p = -math.inf if psnr_value is None or math.isnan(psnr_value) else psnr_value
    s = -math.inf if ssim_value is None or math.isnan(ssim_value) else ssim_value
    bp = -math.inf if baseline_psnr_value is None or math.isnan(baseline_psnr_value) else baseline_psnr_value
    bs = -math.inf if baseline_ssim_value is None or math.isnan(baseline_ssim_value) else baseline_ssim_value
    # nothing measured is no leak, also where no guess was measured either (-inf against -inf); the margins are
    # compared to within rounding (SSIM 0.30 over a guess of 0.20 had read none: 0.2 + 0.1 is 0.30000000000000004)
    p_ok = p > -math.inf and p - bp >= t["low_psnr_over_baseline"] - MARGIN_ROUNDING
    s_ok = s > -math.inf and s - bs >= t["ssim_over_baseline"] - MARGIN_ROUNDING
    if (p_ok and p >= t["high_psnr"]) or (s_ok and s >= t["high_ssim"]):
        return LeakageLevel.HIGH
    if (p_ok and p >= t["medium_psnr"]) or (s_ok and s >= t["medium_ssim"]):
        return LeakageLevel.MEDIUM
    if p_ok or (s_ok and s >= t["low_ssim"]):
        return LeakageLevel.LOW
    return LeakageLevel.NONE


def label_level(label_accuracy: float | None, batch_size: int, baseline_accuracy: float = 0.0) -> LeakageLevel:
    """A label attack's level (table above): medium for the one label of a one-example batch, low for counts with
    accuracy at least ``THRESHOLDS["low_label_accuracy"]``; none otherwise, when nothing was measured, or when the
    accuracy is not above ``baseline_accuracy``, what the server's guess without the update gets
    (:meth:`NoUpdateGuess.label_accuracy_bound`)."""
    if (label_accuracy is None or label_accuracy < THRESHOLDS["low_label_accuracy"]
            or label_accuracy <= baseline_accuracy):  # fmt: skip
        return LeakageLevel.NONE
    if batch_size == 1 and label_accuracy >= 1.0:
        return LeakageLevel.MEDIUM
    return LeakageLevel.LOW


def recovered_fraction(samples, batch_size: int) -> float:
    """Share of the batch rebuilt "exactly": PSNR >= :data:`RECOVERED_PSNR` dB or SSIM >= :data:`RECOVERED_SSIM`.

    30 dB / 0.9 is where a reconstruction is the example for every purpose
    (``benchmarks/leakage_thresholds.py``: SSIM 0.88-0.97, 100 % re-identified). Like the levels, it counts only
    reconstructions that beat the server's guess without the update (level high): on a batch of identical
    images the public mean is already exact, and 100 % had been "recovered" at level none.
    """
    hits = sum(1 for s in samples if s.level >= LeakageLevel.HIGH
               and (s.psnr >= RECOVERED_PSNR or (s.ssim == s.ssim and s.ssim >= RECOVERED_SSIM)))  # fmt: skip
    return hits / max(int(batch_size), 1)


def class_image_scores(
    images: torch.Tensor, labels: torch.Tensor, true_x: torch.Tensor, true_y: torch.Tensor
) -> tuple[list[float], list[float]]:
    """SSIM and PSNR of every true example against the reconstruction labelled with its class.

    The protocol of class-wise attacks' papers (MKOR, Wang et al., WACV 2024):
    one image per class stands for all its examples; an example whose class
    has no reconstruction scores 0.
    """
    per_class = {int(c): images[i].numpy() for i, c in enumerate(labels)}
    pairs = [(per_class.get(int(c)), true_x[i].numpy()) for i, c in enumerate(true_y)]
    return ([ssim(r, t) if r is not None else 0.0 for r, t in pairs],
            [psnr(r, t) if r is not None else 0.0 for r, t in pairs])


def verdict_for(level: LeakageLevel | str, fail_on: LeakageLevel | str, conclusive: bool = True) -> AuditVerdict:
    """block at or above ``fail_on``; warn one level below it (when that is at least low), or when the audit is not
    ``conclusive`` (no attack ran, one could not run or was stopped, or the update read in is not the batch's:
    nothing measured is not a pass); else pass.
    Levels may be given by name (``"low"``)."""
    level, fail_on = (v if isinstance(v, LeakageLevel) else LeakageLevel.parse(str(v)) for v in (level, fail_on))
    if level >= fail_on:
        return AuditVerdict.BLOCK
    if (level >= LeakageLevel.LOW and int(level) == int(fail_on) - 1) or not conclusive:
        return AuditVerdict.WARN
    return AuditVerdict.PASS


@dataclass(frozen=True)
class _ImageScores:
    samples: tuple[SampleLeak, ...]
    ordered: torch.Tensor  # reconstructions in true-batch order
    nearest: tuple[tuple[float, float, LeakageLevel], ...]  # PSNR, SSIM, level of rebuilt images matched elsewhere

    @property
    def level(self) -> LeakageLevel:
        return max([s.level for s in self.samples] + [level for _, _, level in self.nearest], default=LeakageLevel.NONE)


def _score_images(
    images: torch.Tensor, labels: torch.Tensor | None, true_x: torch.Tensor, true_y: torch.Tensor, base: list[tuple[float, float]]
) -> _ImageScores:
    # a NaN or infinite pixel tells the server nothing
    images = torch.nan_to_num(images.detach().float().cpu(), nan=0.5, posinf=0.5, neginf=0.5).clamp(0, 1)
    flat = (images.flatten(2).std(dim=2, correction=0).amax(dim=1) < FLAT).tolist()  # per reconstruction, [N, C, H, W]

    def level(j: int, p: float, s: float, i: int) -> LeakageLevel:
        return LeakageLevel.NONE if flat[j] else image_level(p, s, base[i][0], base[i][1])

    pairs = match(true_x, images)
    samples = []
    ordered = torch.zeros_like(true_x)
    for i, j in pairs:
        a, b = images[j].numpy(), true_x[i].numpy()
        rebuilt_label = None if labels is None or j >= len(labels) else int(labels[j])
        p, s = psnr(a, b), ssim(a, b)
        samples.append(
            SampleLeak(
                index=i,
                match=j,
                psnr=p,
                ssim=s,
                mse=float(np.mean((a.astype(np.float64) - b) ** 2)),
                label=int(true_y[i]),
                rebuilt_label=rebuilt_label,
                level=level(j, p, s, i),
                baseline_psnr=base[i][0],
                baseline_ssim=base[i][1],
            )
        )
        ordered[i] = images[j]
    # A rebuilt image scored against the true example it is closest to, where the pairing put it elsewhere (or
    # nowhere): the pairing of most total PSNR can trade one image's 25 dB for two at 24 and lower the level.
    t, r = true_x.reshape(len(true_x), -1).double(), images.reshape(len(images), -1).double()
    closest = torch.cdist(r, t).argmin(dim=1).tolist()
    partner = {j: i for i, j in pairs}
    nearest = []
    for j, i in enumerate(closest):
        if partner.get(j) != i:
            a, b = images[j].numpy(), true_x[i].numpy()
            p, s = psnr(a, b), ssim(a, b)
            nearest.append((p, s, level(j, p, s, i)))
    return _ImageScores(tuple(sorted(samples, key=lambda s: s.index)), ordered, tuple(nearest))


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else None


def _max(values) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.max(values)) if values else None


def score(
    rec: Reconstruction,
    true_x: torch.Tensor,
    true_y: torch.Tensor,
    num_classes: int,
    *,
    title: str,
    reference: str,
    kind: str,
    prior: NoUpdateGuess | torch.Tensor | None = None,
) -> AttackOutcome:
    """Measure ``rec`` against the true batch; see the module docstring for the levels.

    ``prior`` is the server's guess without the update, a :class:`NoUpdateGuess` (from its public data), or one
    image (the mean image alone); mid-grey and uniform class shares when None.
    """
    true_x = true_x.detach().float().cpu()
    true_y = true_y.detach().long().cpu()
    guess = _as_guess(prior)
    base = guess.image_scores(true_x, true_y)
    B = len(true_y)
    true_counts = torch.bincount(true_y, minlength=num_classes)
    samples: tuple[SampleLeak, ...] = ()
    image_leak, nearest = LeakageLevel.NONE, ()
    ordered = None
    psnrs: list[float] = []
    ssims: list[float] = []
    mses: list[float] = []
    label_accuracy = over_batch = None
    count_error = None
    counts_exact = None
    details: dict[str, Any] = dict(rec.details)
    starts = None
    success_rate = None

    if rec.images is not None and len(rec.images) > 0:
        scored = _score_images(rec.images, rec.labels, true_x, true_y, base)
        samples, ordered = scored.samples, scored.ordered
        psnrs = [s.psnr for s in samples]
        ssims = [s.ssim for s in samples]
        mses = [s.mse for s in samples]
        image_leak, nearest = scored.level, scored.nearest
        if rec.labels is not None and len(rec.labels) > 0:  # the labels it holds, as counts: pairing them through
            # the image match made them as good as the images (0.25 for labels the server was given, on poor images)
            labels = torch.as_tensor(rec.labels).long().cpu()
            valid = labels[(labels >= 0) & (labels < len(true_counts))]  # a label outside the classes is wrong
            held = torch.bincount(valid, minlength=len(true_counts))
            right = float(torch.minimum(held, true_counts).sum())
            label_accuracy = right / len(labels)  # over the labels it gave, as reported
            over_batch = right / max(B, len(labels))  # what its level takes: MKOR's one class of a batch of 8 had read
            # 1.0 there (low), where the same label as a label attack reads 0.125
        if rec.candidates is not None:
            per_start = []
            for cand in rec.candidates:
                cs = _score_images(cand, None, true_x, true_y, base)
                per_start.append((_mean([s.psnr for s in cs.samples]), cs.level))
            starts = len(per_start)
            success_rate = float(np.mean([lv >= LeakageLevel.HIGH for _, lv in per_start]))
            details["start_psnr_mean"] = [round(p, 2) if p is not None else None for p, _ in per_start]
    if rec.label_counts is not None:
        counts = torch.as_tensor(rec.label_counts).long().cpu()
        count_error = int((counts - true_counts).abs().sum())
        counts_exact = float((counts == true_counts).double().mean())
        details["true_counts"] = true_counts.tolist()
        details["recovered_counts"] = counts.tolist()
        if rec.images is None:  # over the batch, or over the counts where they add up to more (8 in every class
            # of a batch of 8 had read 1.0)
            label_accuracy = float(torch.minimum(counts, true_counts).sum()) / max(B, int(counts.sum()), 1)
    elif rec.labels is not None and rec.images is None:
        counts = torch.bincount(torch.as_tensor(rec.labels).long().cpu(), minlength=num_classes)
        label_accuracy = float(torch.minimum(counts, true_counts).sum()) / max(B, int(counts.sum()), 1)

    # the best rebuilt image, against its match or the true example it is closest to
    psnr_max, ssim_max = _max(psnrs + [p for p, _, _ in nearest]), _max(ssims + [s for _, s, _ in nearest])
    def labelled(accuracy: float | None) -> LeakageLevel:  # the guess's bound drawn only where labels are judged
        return label_level(accuracy, B, guess.label_accuracy_bound(B, len(true_counts), true_counts))

    if kind == "images" and rec.images is not None:  # and the labels it read off the update: DLG's on a model whose
        # head is no Linear layer (no label attack runs there) had been right 6 of 6 times, none
        level = max(image_leak, labelled(over_batch)) if rec.labels_from_update else image_leak
    else:
        level = labelled(label_accuracy)
    return AttackOutcome(
        name=rec.attack,
        title=title,
        reference=reference,
        kind=kind,
        level=level,
        psnr_mean=_mean(psnrs),
        psnr_max=psnr_max,
        ssim_mean=_mean(ssims),
        ssim_max=ssim_max,
        mse_mean=_mean(mses),
        label_accuracy=label_accuracy,
        label_count_error=count_error,
        label_counts_exact=counts_exact,
        samples=samples,
        iterations=int(rec.iterations),
        seconds=float(rec.seconds),
        stopped=rec.stopped,
        starts=starts,
        start_success_rate=success_rate,
        recovered_fraction=recovered_fraction(samples, B) if kind == "images" and rec.images is not None else None,
        details=details,
        images=ordered,
    )
