"""Speed and memory of ``fedguard inspect`` (static checks) against a plain ``torch.load``.

Generates, at run time, a ResNet-50-size (98 MiB) and a VGG16-size (528 MiB)
float32 state_dict with the real layer shapes, then times, in the same run,

* baseline: ``python -c "import torch; torch.load(f, weights_only=True)"``
* fedguard: ``fedguard inspect f --format json --quiet``

and prints one line per model: wall-time ratio (target ≤ 1.5) and the peak
memory each process needed beyond a bare ``import torch`` (target ≤ 2× the
file size for fedguard). Best time and highest peak of three runs each, every
process with the OpenMP setting the ``fedguard`` command makes
(:func:`fedguard.__main__.yielding_openmp`; without it a busy machine had
read 3.3x here against 1.4x with it).

fedguard's modules are compiled to bytecode first, as ``pip install`` does and
as Python does on the first run anywhere bytecode can be written: torch comes
compiled with its wheel, and a machine that sets ``PYTHONDONTWRITEBYTECODE``
would otherwise compile fedguard's modules on every timed run (0.13 s of the
imports on two idle cores).

The timed processes import fedguard from the checkout this script is in, as this process does.

Usage: ``python benchmarks/inspect_speed.py [--keep DIR]``
"""

from __future__ import annotations

import argparse
import compileall
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedguard.__main__ import yielding_openmp  # noqa: E402

yielding_openmp()  # before torch loads, here and in the timed processes, which inherit it

import torch  # noqa: E402

from _args import new_parser  # noqa: E402

RUNS = 3
#: The timed processes' environment: fedguard from this checkout, the rest as inherited.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
# VmHWM, not ru_maxrss: the latter survives fork+exec and would report this (large) parent's peak.
PEAK = (
    "import sys; hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0]; "
    "print('PEAK_KB', hwm, file=sys.stderr)"
)


def resnet50_shapes() -> dict[str, tuple[int, ...]]:
    """Parameter and buffer shapes of torchvision's resnet50 (25.6 M parameters)."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}
    shapes.update(_bn("bn1", 64))
    in_ch = 64
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            shapes[f"{p}.conv1.weight"] = (width, in_ch, 1, 1)
            shapes.update(_bn(f"{p}.bn1", width))
            shapes[f"{p}.conv2.weight"] = (width, width, 3, 3)
            shapes.update(_bn(f"{p}.bn2", width))
            shapes[f"{p}.conv3.weight"] = (width * 4, width, 1, 1)
            shapes.update(_bn(f"{p}.bn3", width * 4))
            if b == 0:
                shapes[f"{p}.downsample.0.weight"] = (width * 4, in_ch, 1, 1)
                shapes.update(_bn(f"{p}.downsample.1", width * 4))
            in_ch = width * 4
    shapes["fc.weight"], shapes["fc.bias"] = (1000, 2048), (1000,)
    return shapes


def _bn(prefix: str, n: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{k}": (n,) for k in ("weight", "bias", "running_mean", "running_var")}


def vgg16_shapes() -> dict[str, tuple[int, ...]]:
    """Parameter shapes of torchvision's vgg16 (138 M parameters)."""
    from fedguard.architectures import build_model

    with torch.device("meta"):
        model = build_model("vgg16", num_classes=1000, input_shape=(3, 224, 224))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def write_state_dict(shapes: dict[str, tuple[int, ...]], path: Path) -> int:
    gen = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in shapes.items():
        fan_in = max(1, int(torch.tensor(shape[1:]).prod())) if len(shape) > 1 else 1
        state[name] = torch.randn(shape, generator=gen) / fan_in**0.5 if len(shape) > 1 else torch.rand(shape, generator=gen)
    torch.save(state, path)
    return path.stat().st_size


def timed(code: str) -> tuple[float, int]:
    """Best wall time and peak RSS (KiB) of ``python -c code`` over RUNS runs."""
    best, peak = float("inf"), 0
    for _ in range(RUNS):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code + "\n" + PEAK], capture_output=True, text=True, env=ENV)
        best = min(best, time.perf_counter() - start)
        line = [l for l in done.stderr.splitlines() if l.startswith("PEAK_KB")]
        if done.returncode or not line:
            raise SystemExit(f"benchmark command failed:\n{done.stderr[-2000:]}")
        peak = max(peak, int(line[-1].split()[1]))
    return best, peak


def compile_fedguard() -> None:
    """Write the bytecode of fedguard's packages (``__pycache__`` beside them, which git ignores)."""
    import fedguard
    from fedguard import attacks, detectors, reports

    for package in (fedguard, attacks, detectors, reports):
        compileall.compile_dir(Path(package.__file__).parent, quiet=1)


def keep_folder(text: str) -> Path:
    """A folder to keep the generated files in: one that exists, or a new one."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a folder")
    return path


def main() -> None:
    parser = new_parser(__doc__, "It takes about a minute and has no quicker settings.")
    parser.add_argument("--keep", type=keep_folder, help="folder to keep the generated files in (default: a temporary "
                                                    "folder, removed at the end)")
    args = parser.parse_args()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        measure(args.keep, keep=True)
    else:
        with tempfile.TemporaryDirectory(prefix="fedguard-bench-") as tmp:  # removed on failure and Ctrl-C too
            measure(Path(tmp), keep=False)


def measure(folder: Path, keep: bool) -> None:
    """Write each model's file in ``folder`` and print its line; ``keep`` False removes each file once timed."""
    compile_fedguard()
    _, bare_kb = timed("import torch")
    for label, shapes in (("resnet50-size", resnet50_shapes()), ("vgg16-size", vgg16_shapes())):
        path = folder / f"{label}.pt"
        size = write_state_dict(shapes, path)
        base_s, base_kb = timed(f"import torch; torch.load({str(path)!r}, weights_only=True)")
        fg_s, fg_kb = timed(
            "import sys\nfrom fedguard.cli import main\n"
            f"sys.argv = ['fedguard', 'inspect', {str(path)!r}, '--format', 'json', '--quiet']\n"
            "try:\n    main()\nexcept SystemExit as exit:\n"
            "    if exit.code not in (0, 1, None):  # 0 or 1: a verdict; anything else: inspect failed, not timed\n"
            "        raise"
        )
        mb = size / 2**20
        print(
            f"{label}: {mb:.0f} MiB  torch.load {base_s:.2f} s  fedguard inspect {fg_s:.2f} s  "
            f"ratio {fg_s / base_s:.2f} (target <= 1.5)  extra memory: torch.load "
            f"{(base_kb - bare_kb) / 1024 / mb:.2f}x, fedguard {(fg_kb - bare_kb) / 1024 / mb:.2f}x file size (target <= 2)"
        )
        if not keep:
            path.unlink()  # before the next file: one at a time on the disk


if __name__ == "__main__":
    main()
