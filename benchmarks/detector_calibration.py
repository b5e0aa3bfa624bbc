"""The benign measurements behind the detectors' thresholds.

For every weight layer of every benign model in ``tests/zoo.py`` this prints
the largest value each static statistic reaches over the rows its rule scores,
next to the threshold the detector uses; and, for benign models with a known
architecture, the largest D-SNR and transmit-SNR on a batch of digits and, over
every Linear layer, the share of rarely reached units and the most units in
groups that measure one quantity (FG804) on six random batches of 64 digits (in eval mode and, for models with
BatchNorm or dropout, as training runs them), and the batches whose examples reach the head as one (FG805).
``docs/detectors.md`` quotes these figures. Run from the repository root:

    python benchmarks/detector_calibration.py [--limit N] [--static-only]

It prints the figures of the table's rows on magnitudes, outlier weights, the largest |cosine|, the trap ratios'
spread, constant and one-sign rows, and the behavioural rows (D-SNR, transmit-SNR, FG803-FG805). The rows on negative
cosines (FG104), muted rows' biases (FG201), rows sharing one ratio (FG401) and groups at |cosine| 0.95 (FG301) were
measured with the detectors' own exclusions (a zero-sum head, copies of one row); their modules' docstrings say how.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedguard.detectors import (  # noqa: E402
    constant_rows, fishing, gradient_snr, imprint, linear_passes, magnitude, passthrough, responses, silenced, trap_weights,
)
from fedguard.detectors.rows import SAME_BIAS, live_rows  # noqa: E402
from fedguard.modelview import ModelView  # noqa: E402
from tests.zoo import benign_entries, digits  # noqa: E402

from _args import new_parser, positive_int  # noqa: E402


def layer_figures(layer) -> dict[str, float]:
    """Each statistic over what its rule scores: dense rows (at least half non-zero; a pruned row's one survivor
    is an outlier of nothing), trap ratios below 1 and not balanced (Weight Standardization's zero-mean rows), z
    also without N(0, 1) fills (an embedding, which FG502 leaves out), duplicate groups with distinct
    biases (an imprint's bins; a zero-initialised head's untrained rows are equal, biases too)."""
    s = layer.stats
    peak = float(s.peak.max())
    bias = layer.bias
    density = (layer.rows(torch.arange(s.rows)) != 0).float().mean(dim=1)
    dense = density >= 0.5
    both = (s.positive > 0) & (s.negative > 0)
    ratio = s.positive[both] / s.negative[both]
    spread = math.inf
    if ratio.numel() >= 4 and float(ratio.median()) < 1 - trap_weights.BALANCED:  # rows that take more than they give
        spread = float((ratio - ratio.median()).abs().max() / ratio.median())
    live = (live_rows(layer) & dense).nonzero()[:, 0][:512]
    cos = 0.0
    if layer.fan_in >= 16 and live.numel() >= 2:
        unit = torch.nn.functional.normalize(layer.rows(live), dim=1)
        gram = (unit @ unit.T).abs().fill_diagonal_(0)
        cos = float(gram.max())
    z = peak * math.sqrt(layer.fan_in)
    groups = imprint._groups(layer) if layer.fan_in >= 16 else []
    distinct = [g for g in groups
                if bias is not None and float(bias[g].float().std()) > SAME_BIAS * float(bias[g].float().abs().max())]
    magnitude_mean = s.l1 / s.fan_in
    one_sign = live_rows(layer) & ((s.minimum > 0) | (s.maximum < 0)) & (magnitude_mean > 0)
    variation = (s.l2sq / s.fan_in - magnitude_mean.square()).clamp_min(0).sqrt() / magnitude_mean.clamp_min(1e-30)
    return {
        "z = max|w|·sqrt(fan_in)": z,
        "z, N(0, 1) fills left out": 0.0 if magnitude._unit_gaussian_fill(layer) else z,
        "max |bias|": float(bias.float().abs().max()) if bias is not None else 0.0,
        "max |w| / RMS(rest of row), dense rows": float(s.peak_to_rest[dense].max()) if layer.fan_in > 8 and dense.any() else 0.0,
        "max |cosine| between dense rows (fan_in >= 16)": cos,
        "trap: min spread of Σw+/Σ|w-| < 1 (fan_in >= 8)": spread if layer.fan_in >= 8 else math.inf,
        "dense duplicate row groups, distinct biases": float(len(distinct)),
        "one-sign rows: min |w| variation (fan_in >= 16)": (float(variation[one_sign].min())
                                                           if layer.fan_in >= 16 and one_sign.any() else math.inf),
    }


THRESHOLDS = {
    "z = max|w|·sqrt(fan_in)": f">= {magnitude.Z_LIMIT:g} (and |w| >= {magnitude.ABS_WEIGHT_LIMIT:g})",
    "z, N(0, 1) fills left out": f">= {magnitude.Z_LIMIT:g} (and |w| >= {magnitude.ABS_WEIGHT_LIMIT:g}; FG502)",
    "max |bias|": f">= {magnitude.BIAS_LIMIT:g} (FG502), >= {fishing.HUGE_BIAS:g} on a muted unit inside the network (FG201)",
    "max |w| / RMS(rest of row), dense rows": f">= {fishing.OUTLIER_RATIO:g} (FG202), >= {passthrough.DOMINANCE:g} pass-through candidate",
    "max |cosine| between dense rows (fan_in >= 16)": ">= 0.999 in groups, distinct biases (FG301; next rows)",
    "trap: min spread of Σw+/Σ|w-| < 1 (fan_in >= 8)": f"<= {trap_weights.REL_TOL:g} (FG401)",
    "dense duplicate row groups, distinct biases": "any (FG301)",
    "one-sign rows: min |w| variation (fan_in >= 16)": f"<= {constant_rows.NEAR_CV:g} (FG101 near tier)",
}


def main() -> None:
    parser = new_parser(__doc__, "Quick run: --limit 5 --static-only (seconds).")
    parser.add_argument("--limit", type=positive_int, help="only the first N benign models (a quick check; docs/detectors.md's "
                                                  "figures are over all of them)")
    parser.add_argument("--static-only", action="store_true", help="leave out the figures measured on digits")
    args = parser.parse_args()
    worst: dict[str, tuple[float, str]] = {}
    entries = benign_entries()[: args.limit]
    for entry in entries:
        for layer in ModelView.from_state_dict(entry.state_dict).weight_layers():
            if not layer.stats.finite:
                continue
            for key, value in layer_figures(layer).items():
                better = min if key.startswith(("trap", "one-sign")) else max
                if key not in worst or better(value, worst[key][0]) != worst[key][0]:
                    worst[key] = (value, f"{entry.label}:{layer.name}")
    print(f"benign zoo: {len(entries)} models")
    for key, (value, where) in worst.items():
        if math.isinf(value):  # no benign layer has such rows (e.g. no one-sign row of 16 inputs or more)
            print(f"  {key:<46} benign extreme {'none':>10}  threshold {THRESHOLDS[key]:<40} (no benign layer has one)")
        else:
            print(f"  {key:<46} benign extreme {value:10.4g}  threshold {THRESHOLDS[key]:<40} at {where}")
    if args.static_only:
        return
    dsnr, muted, tsnr, rare, same, silent, merged = (0.0, ""), (0.0, ""), (0.0, ""), (0.0, ""), (0.0, ""), (0.0, ""), []
    for entry in entries:
        if entry.module is None or entry.arch is None:
            continue
        x, y = digits(entry.input_shape)
        module = entry.module.float()
        with torch.no_grad():
            classes = module.eval()(x[:1]).shape[1]
        x, y = x[y < classes], y[y < classes]  # a two-class head gets the digits 0 and 1
        batch = (x[: gradient_snr.BATCH], y[: gradient_snr.BATCH])
        norms = gradient_snr.per_example_gradient_norms(module, *batch)
        norms = {name: n for name, n in norms.items() if float(n.max()) > 0}
        score = max(gradient_snr.dsnr(n) for n in norms.values())
        quiet = [float((n <= gradient_snr.SILENT * n.max()).float().mean()) for n in norms.values()]
        muted = max(muted, (sum(q >= gradient_snr.SILENT_SHARE for q in quiet) / len(quiet), entry.label))
        first = next(m for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
        with torch.no_grad():
            t = float(gradient_snr.transmit_snr(first, batch[0]).max())
        dsnr = max(dsnr, (score, entry.label))
        tsnr = max(tsnr, (t, entry.label))
        for seed in range(6):
            pick = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:64]
            if silenced.discarding_layers(module, x[pick], y[pick]) is not None:
                merged.append(entry.label)
            in_eval = linear_passes.linear_layers_seen(module, x[pick], y[pick])
            for seen in in_eval + linear_passes.layers_in_training(module, x[pick], y[pick], lambda: in_eval):
                where = f"{entry.label}:{seen.name}{' (training)' if seen.as_in_training else ''}"
                share, rare_units, _ = responses.rare_share(responses.reach_rates(seen.reach_counts()))
                if int(rare_units.sum()) >= responses.MIN_GROUP:
                    rare = max(rare, (share, where))
                if isinstance(seen, linear_passes.TokenwiseSeen):  # FG803 alone reads the layers applied per token
                    continue
                dead, units = silenced.silent_units(seen)
                if not seen.as_in_training and bool((seen.grad != 0).any()):  # a head at zero passes no gradient back (FG805 reads no such model)
                    silent = max(silent, (dead / units, where))
                grouped = sum(len(group.units) for group in responses.binning_groups(seen))
                same = max(same, (grouped, where))
    print(f"  {'D-SNR on 16 digits':<46} benign max {dsnr[0]:10.4g}  threshold >= {gradient_snr.DSNR_LIMIT:g}  at {dsnr[1]}")
    print(f"  {'tensors with >= half of 16 digits silent':<46} benign max {muted[0]:10.4g}  threshold >= {gradient_snr.SILENT_TENSORS:g} of tensors (FG801)  at {muted[1]}")
    print(f"  {'transmit-SNR, first layer':<46} benign max {tsnr[0]:10.4g}  threshold >= {gradient_snr.TSNR_LIMIT:g} on {gradient_snr.TSNR_FRACTION:.0%} of units  at {tsnr[1]}")
    print(f"  {'Linear layers: units reached by <= 1/8 of 64':<46} benign max {rare[0]:10.4g}  threshold >= {responses.RARE_SHARE:g} of reached units (FG803)  at {rare[1]}")
    print(f"  {'Linear layers: units silent on 64 digits':<46} benign max {silent[0]:10.4g}  threshold >= {silenced.DEAD_SHARE:g} of {silenced.MIN_UNITS}+ units (FG805)  at {silent[1]}")
    print(f"  {'head input the same for all of 64 digits':<46} benign {len(merged)} of the batches  (FG805)  in {sorted(set(merged))}")
    print(f"  {'Linear layers: units in groups at |r| >= 0.999':<46} benign max {same[0]:10.4g}  threshold >= {responses.MIN_SAME_UNITS} units in groups of {responses.MIN_GROUP}+ units and thresholds (FG804)  at {same[1]}")


if __name__ == "__main__":
    main()
