"""The audit and its attacks on a CUDA GPU reach the quality they reach on the CPU.

Skipped where PyTorch sees no GPU (CI has none); run on a GPU machine with
``pytest tests/test_cuda.py``. The thresholds are the CPU tests' own
(``tests/test_attacks.py``): the GPU path must not lose what the CPU finds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fedguard.attacks.base import Budget
from fedguard.attacks.dlg import DLG
from fedguard.attacks.inverting_gradients import InvertingGradients
from fedguard.audit import audit
from fedguard.data import load_data
from fedguard.defenses import DPSGD, GaussianNoise
from fedguard.exposure import FederationSettings
from fedguard.types import LeakageLevel
from fedguard.update import compute_update

from .helpers import lenet8, measure, one_per_class, server_view

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("defense", [DPSGD(1e-9, max_grad_norm=0.5), GaussianNoise(1e-9)])
def test_a_defended_update_on_the_gpu_is_the_cpu_update(digits, defense):
    """Opacus' per-example clipping, and noise (negligible here), give on the GPU the update they give on the CPU."""
    x, y = digits[0][:8], digits[1][:8]
    cpu = compute_update(lenet8(0), x, y, defense=defense)
    gpu = compute_update(lenet8(0).cuda(), x.cuda(), y.cuda(), defense=defense)
    for name, tensor in cpu.tensors.items():
        assert gpu.tensors[name].is_cuda
        torch.testing.assert_close(gpu.tensors[name].cpu(), tensor, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize(("protocol", "steps", "lr"), [("fedsgd", 1, None), ("fedavg", 3, 0.1)])
def test_the_update_on_the_gpu_is_the_cpu_update(digits, protocol, steps, lr):
    x, y = digits[0][:16], digits[1][:16]
    cpu = compute_update(lenet8(0), x, y, protocol=protocol, local_steps=steps, local_lr=lr)
    gpu = compute_update(lenet8(0).cuda(), x.cuda(), y.cuda(), protocol=protocol, local_steps=steps, local_lr=lr)
    for name, tensor in cpu.tensors.items():
        assert gpu.tensors[name].is_cuda
        torch.testing.assert_close(gpu.tensors[name].cpu(), tensor, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("engine", ["vmap", "loop"])
def test_dlg_and_inverting_gradients_rebuild_digits_on_the_gpu(digits, engine):
    index = one_per_class(digits[1])[[2, 8]]
    view, bx, by = server_view(lenet8(1), digits, index, known_labels=True, seed=1, device="cuda")
    rec = InvertingGradients(tv=0.0, engine=engine).run(view, Budget(200))
    assert rec.images.device.type == "cpu" and rec.details["engine"] == engine
    assert measure(rec, bx, by).psnr_mean >= 30.0  # CPU: 43-99 dB
    view, bx, by = server_view(lenet8(0), digits, index[:1], device="cuda")
    out = measure(DLG(engine=engine).run(view, Budget(50)), bx, by)
    assert out.psnr_mean >= 40.0 and out.label_accuracy == 1.0  # CPU: 56-82 dB


def test_default_audit_with_exposure_runs_on_the_gpu():
    report = audit(arch="lenet", data="digits", batch_size=8, device="cuda", seed=0, time_budget=20,
                   federation=FederationSettings())  # fmt: skip
    cpu = audit(arch="lenet", data="digits", batch_size=8, device="cpu", seed=0, attacks=["label_counts"])
    assert report.config["device"].startswith("cuda")
    assert {"label_counts", "dlg", "inverting_gradients"} <= {a.name for a in report.attacks}
    assert report.outcome("label_counts").label_accuracy == cpu.outcome("label_counts").label_accuracy == 1.0
    assert report.exposure is not None


@pytest.mark.parametrize(
    ("arch", "shape", "batch", "attack", "recovered"),
    # the CPU tests' figures: imprint >= 60 % of 64 exact, fishing one example of 16/32 at 100 dB
    [("lenet", None, 64, "imprint", 0.6), ("mlp", (1, 8, 8), 16, "class_fishing", 1 / 16),
     ("mlp", (1, 8, 8), 32, "feature_fishing", 1 / 32)],  # fmt: skip
)
def test_malicious_server_emulators_run_on_the_gpu(arch, shape, batch, attack, recovered):
    report = audit(arch=arch, input_shape=shape, data="digits", batch_size=batch, attacks=["label_counts", attack],
                   device="cuda", seed=0)  # fmt: skip
    out = report.outcome(attack)
    assert out.recovered_fraction >= recovered and out.level == LeakageLevel.HIGH


def test_mkor_rebuilds_class_means_on_the_gpu():
    from fedguard.architectures import build_model
    from fedguard.attacks.craft import craft
    from fedguard.attacks.mkor import MKOR
    from fedguard.metrics import class_image_scores

    data = load_data("digits", (1, 28, 28))
    index = np.random.default_rng(0).permutation(len(data[1]))[:100]
    torch.manual_seed(0)
    evil = craft("mkor", build_model("lenet5_stride2", input_shape=(1, 28, 28)), input_shape=(1, 28, 28), num_classes=10, seed=0)
    view, bx, by = server_view(evil, data, index, seed=0, device="cuda")
    rec = MKOR().run(view, Budget(150))
    ssim, _ = class_image_scores(rec.images, rec.labels, bx, by)
    assert float(np.mean(ssim)) >= 0.6  # CPU: 0.68


def test_audit_command_on_the_gpu(tmp_path):
    from fedguard.cli import main

    out = tmp_path / "audit.json"
    result = CliRunner().invoke(main, ["audit", "--arch", "lenet", "--data", "digits", "--device", "cuda", "--max-iterations",
                                       "30", "--format", "json", "-o", str(out), "-q"])  # fmt: skip
    assert result.exit_code in (0, 1), result.output
    import json

    doc = json.loads(out.read_text())
    assert doc["config"]["device"].startswith("cuda")


def test_a_model_on_the_gpu_is_audited_and_crafted():
    """A module already on the GPU, handed in from Python: the audit copies it where the data are (its forward on
    CPU inputs had been refused as data that do not fit), and every crafter crafts it as it crafts the same model on
    the CPU and hands it back on the GPU."""
    from fedguard.attacks.craft import CRAFTERS, READS_DATA, craft

    model = lenet8(0).cuda()
    report = audit(model, arch="lenet", input_shape=(1, 8, 8), data="digits", batch_size=4, device="cuda",
                   attacks=["dlg"], max_iterations=5)  # fmt: skip
    assert report.outcome("dlg") is not None and next(model.parameters()).is_cuda
    data = load_data("digits")[0][:64]
    for name in CRAFTERS.names():
        public = data if name in READS_DATA else None
        on_cpu = craft(name, lenet8(0), input_shape=(1, 8, 8), data=public).state_dict()
        on_gpu = craft(name, model, input_shape=(1, 8, 8), data=None if public is None else public.cuda()).state_dict()
        assert on_gpu.keys() == on_cpu.keys() and all(on_gpu[k].is_cuda for k in on_gpu), name
        for key, tensor in on_cpu.items():
            torch.testing.assert_close(on_gpu[key].cpu(), tensor, msg=f"{name}: {key}")


def test_an_audit_that_starts_cuda_leaves_its_generator_as_the_callers_first_use_finds_it():
    """The caller's CUDA generator, not yet started, is not left at the audit's seed."""
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from fedguard.audit import audit\n"
        "torch.manual_seed(123)\n"
        "audit(arch='lenet', data='digits', batch_size=2, device='cuda', attacks=['dlg'], max_iterations=2)\n"
        "after = torch.cuda.get_rng_state()\n"
        "torch.cuda.manual_seed_all(123)\n"
        "print(bool(torch.equal(after, torch.cuda.get_rng_state())))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "True"
