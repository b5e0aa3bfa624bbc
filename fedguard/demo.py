"""``fedguard demo``: craft malicious and benign global models, inspect each, write a summary page.

Everything runs offline on built-in real data (scikit-learn's digits, upscaled
to 28×28): one honest LeNet-5 trained for two epochs, the same architecture
crafted by six published attacks, an MLP with a Robbing-the-Fed imprint
block saved as safetensors, a Flower-style ``.npz``, and a pickle that would
run code when loaded. Each is inspected as a client would (``--arch lenet5
--data digits`` where the architecture is known), and the verdicts are
printed and written to ``summary.html`` plus one JSON report per model.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import nn

from fedguard.errors import InputError
from fedguard.reports.base import printable
from fedguard.types import InspectionReport, Verdict

ARCH, SHAPE = "lenet5", (1, 28, 28)
#: Digits the behavioural checks take as the client's data.
CLIENT_EXAMPLES = 64
#: The published attacks crafted on the honest LeNet-5, with their descriptions.
CRAFTED = [
    ("mkor", "MKOR averaging + pass-through parameters (Wang et al., WACV 2024)"),
    ("mkor_inconspicuous", "MKOR's inconspicuous form: opposite row pairs, noisy shuffled filters (Wang et al., WACV 2024)"),
    ("class_fishing", "class fishing (Wen et al., ICML 2022)"),
    ("feature_fishing", "feature fishing (Wen et al., ICML 2022)"),
    ("trap_weights", "trap weights (Boenisch et al., EuroS&P 2023)"),
    ("oversized_fc", "oversized FC layer"),
]
#: The summary page's title, which also marks a summary.html as an earlier demo's.
TITLE = "fedguard demo: inspected global models"
#: Every model file the demo writes under ``models/``; each gets a JSON report ``<stem>.json`` beside summary.html.
MODEL_FILES = ("benign-lenet5.pt", *(f"{attack}-lenet5.pt" for attack, _ in CRAFTED),
               "imprint-mlp.safetensors", "flower-benign-lenet5.npz", "trojan-lenet5.pt")  # fmt: skip


class DemoModel(NamedTuple):
    """A model the demo writes: what it is, where, the options a client inspects it with, and the verdict an
    inspection must give it (clean for the honest ones)."""

    description: str
    path: Path
    options: dict
    expected: Verdict


class _PrintsWhenUnpickled:
    """A harmless stand-in for a malicious payload: unpickling it would call print()."""

    def __reduce__(self):
        return (print, ("fedguard demo: this line means the pickle executed code",))


def _train_benign(inputs: torch.Tensor, labels: torch.Tensor, seed: int) -> nn.Module:
    """The honest LeNet-5: two epochs of SGD on the digits, on one thread, so that the demo writes the same models
    whatever the machine's cores (on two threads the sums of the products had rounded otherwise, two epochs had
    carried that into other weights, and a crafted model built on them had one finding more: a reproducibility
    review). 0.3-0.5 s either way."""
    from fedguard.architectures import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        model = build_model(ARCH, num_classes=10, input_shape=SHAPE)
        optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        for _ in range(2):
            for batch in torch.randperm(len(inputs)).split(64):
                optimiser.zero_grad()
                loss_fn(model(inputs[batch]), labels[batch]).backward()
                optimiser.step()
    finally:
        torch.set_num_threads(threads)
    return model


def _write_models(folder: Path, inputs: torch.Tensor, labels: torch.Tensor) -> list[DemoModel]:
    """Save the demo's models (atomically, mode 0600, as craft writes) and return them."""
    from fedguard.attacks.craft import READS_DATA, craft, craft_model
    from fedguard.craft_cli import serialise
    from fedguard.io import write_atomic

    folder.mkdir(parents=True, exist_ok=True)
    client = {"arch": ARCH, "data": (inputs[:CLIENT_EXAMPLES], labels[:CLIENT_EXAMPLES])}
    benign = _train_benign(inputs, labels, seed=0)
    models = []

    path = folder / "benign-lenet5.pt"
    write_atomic(path, serialise(benign.state_dict(), path.suffix))
    models.append(DemoModel("honest LeNet-5, trained 2 epochs on digits", path, client, Verdict.CLEAN))

    for attack, description in CRAFTED:
        public = inputs[:256] if attack in READS_DATA else None  # the crafters that calibrate on the server's data
        crafted = craft(attack, benign, input_shape=SHAPE, num_classes=10, data=public, seed=1)
        path = folder / f"{attack}-lenet5.pt"
        write_atomic(path, serialise(crafted.state_dict(), path.suffix))
        models.append(DemoModel(description, path, client, Verdict.MALICIOUS))

    imprinted = craft_model("imprint", "mlp", input_shape=SHAPE, data=inputs[:256], seed=2)
    path = folder / "imprint-mlp.safetensors"
    write_atomic(path, serialise(imprinted.state_dict(), path.suffix))
    models.append(DemoModel("Robbing the Fed imprint block in front of an MLP (safetensors)", path, {}, Verdict.MALICIOUS))

    path = folder / "flower-benign-lenet5.npz"
    flower = io.BytesIO()
    np.savez(flower, *[v.numpy() for v in benign.state_dict().values()])
    write_atomic(path, flower.getvalue())
    models.append(DemoModel("honest LeNet-5 as a Flower list of ndarrays (.npz)", path, {"arch": ARCH}, Verdict.CLEAN))

    path = folder / "trojan-lenet5.pt"
    trojan = io.BytesIO()  # a torch checkpoint as torch.save writes it (byte-identical between runs), payload inside
    torch.save({**benign.state_dict(), "payload": _PrintsWhenUnpickled()}, trojan)
    write_atomic(path, trojan.getvalue())
    models.append(DemoModel("state_dict with a code-executing pickle payload", path, {}, Verdict.MALICIOUS))
    return models


def _demo_wrote(path: Path, mark: str) -> bool:
    """Whether ``path`` is a report an earlier demo wrote: a fedguard report that holds ``mark`` (the summary's title,
    or the demo's model file a JSON report inspected). Any fedguard report had passed, so that the user's own
    ``inspect -o summary.html`` was replaced."""
    from fedguard.io import is_fedguard_report, read_head

    return is_fedguard_report(path) and mark in read_head(path, 65536).decode("utf-8", "ignore")


def _demo_files(output_dir: Path) -> list[tuple[Path, Path]]:
    """Each model file the demo writes in ``output_dir`` with its JSON report."""
    return [(output_dir / "models" / name, output_dir / f"{Path(name).stem}.json") for name in MODEL_FILES]


def _demo_model(model_file: Path, report_file: Path) -> bool:
    """Whether ``model_file`` is the model an earlier demo wrote: the demo's JSON report beside it inspected this
    very file (its SHA-256). A file of yours put in its place, even beside the demo's summary, is not."""
    import json

    from fedguard.loading import sha256_of

    if not model_file.is_file() or not report_file.is_file() or not _demo_wrote(report_file, f"models/{model_file.name}"):
        return False
    try:
        recorded = json.loads(report_file.read_text(encoding="utf-8")).get("sha256")
    except (OSError, ValueError, AttributeError):
        return False
    return recorded == sha256_of(model_file)


def run_demo(output_dir: str | Path, echo: Callable[[str], None] = print) -> list[tuple[DemoModel, InspectionReport]]:
    """Craft, inspect and report; returns each model the demo wrote with its inspection report."""
    if not str(output_dir).strip():
        raise InputError("--output-dir is empty; name a folder for the demo's models and reports, e.g. demo-output")
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"--output-dir {output_dir} exists and is not a folder; choose another path")
    summary = output_dir / "summary.html"
    for own in (summary, *(file for pair in _demo_files(output_dir) for file in pair)):
        if own.is_dir():  # the demo writes a file there (the message of the output check had named the folder)
            raise InputError(f"--output-dir {output_dir} holds a folder {own} where the demo writes a file; choose "
                             "another --output-dir or move the folder")  # fmt: skip
    if summary.is_file() and not _demo_wrote(summary, TITLE):
        raise InputError(f"--output-dir {output_dir} holds a summary.html no earlier demo wrote; choose another --output-dir")
    for model_file, report_file in _demo_files(output_dir):
        if model_file.is_symlink() or model_file.exists() and not _demo_model(model_file, report_file):
            raise InputError(f"--output-dir {output_dir} already holds {model_file}, which no earlier demo wrote; "
                             f"choose another --output-dir or move the file")  # fmt: skip
        if report_file.is_symlink() or report_file.exists() and not _demo_wrote(report_file, f"models/{model_file.name}"):
            raise InputError(f"--output-dir {output_dir} holds {report_file}, which no earlier demo wrote; "
                             f"choose another --output-dir or move the file")  # fmt: skip
    if (output_dir / "models").exists() and not (output_dir / "models").is_dir():
        raise InputError(f"--output-dir {output_dir} holds a file named models where the demo puts its models folder; "
                         "choose another --output-dir or move the file")  # fmt: skip
    made = [f for f in (output_dir / "models", *(output_dir / "models").parents) if not f.exists()]  # deepest first
    try:
        (output_dir / "models").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        if output_dir.is_dir():  # it exists: its models/ folder could not be made in it
            raise InputError(f"--output-dir {output_dir} takes no new files ({why}); choose another --output-dir or fix its permissions") from None
        raise InputError(f"cannot create --output-dir {output_dir} ({why}); choose another path") from None
    try:
        return _demo(output_dir, echo)
    except BaseException:  # Ctrl-C or an error: what this run wrote and did not report on, and the folders it made
        for model_file, report_file in _demo_files(output_dir):  # every model there before passed _demo_model:
            if model_file.is_file() and not model_file.is_symlink() and not _demo_model(model_file, report_file):  # this run's
                model_file.unlink()
        for folder in made:
            try:
                folder.rmdir()
            except OSError:  # not empty (the models written so far), or gone
                pass
        raise


def _demo(output_dir: Path, echo: Callable[[str], None]) -> list[tuple[DemoModel, InspectionReport]]:
    """The demo's work in ``output_dir``, whose ``models`` folder exists."""
    from fedguard.data import load_data
    from fedguard.inspect import inspect_model, rules
    from fedguard.io import check_output_path, write_atomic
    from fedguard.reports import render
    from fedguard.reports.html import render_summary

    for folder in (output_dir, output_dir / "models"):  # writable folders; the demo replaces its own files
        check_output_path(folder / "summary.html", option="--output-dir", force=True)
    start = time.perf_counter()
    inputs, labels = load_data("digits", input_shape=SHAPE)
    echo(f"fedguard demo: {len(inputs)} real handwritten digits (scikit-learn), upscaled to 28x28")
    models = _write_models(output_dir / "models", inputs, labels)
    all_rules = rules()
    reports = []
    echo(f"\n{'verdict':<11} {'findings':>8}  model")
    for model in models:
        report = inspect_model(model.path, **model.options)
        reports.append(report)
        ids = ", ".join(sorted({f.rule_id for f in report.findings})) or "-"
        echo(f"{str(report.verdict).upper():<11} {len(report.findings):>8}  {model.path.name}: {model.description} [{ids}]")
        write_atomic(output_dir / f"{model.path.stem}.json", render("json", report, all_rules))
    summary = output_dir / "summary.html"
    honest = sum(model.expected is Verdict.CLEAN for model in models)
    unexpected = [(model, report) for model, report in zip(models, reports) if report.verdict != model.expected]
    outcome = ([f"not as expected: {model.path.name} reads {report.verdict}, where it should read {model.expected}"
                for model, report in unexpected]
               or [f"Every verdict as expected: the {honest} honest models clean, the {len(models) - honest} others malicious."])  # fmt: skip
    introduction = (
        f"fedguard inspected {len(models)} global models a federated-learning client might receive: {honest} honest "
        f"and {len(models) - honest} that a malicious server could send, crafted as the papers named beside them "
        f"describe. The behavioural checks ran the LeNet-5s on {CLIENT_EXAMPLES} real handwritten digits "
        "(scikit-learn) as the client's data. Each honest model should read CLEAN and every other MALICIOUS; each "
        "model's section gives its findings per layer with their evidence, and the rules that fired are explained "
        f"at the end. Outcome: {' '.join(outcome)}"
    )
    page = render_summary(reports, all_rules, title=TITLE, descriptions=[model.description for model in models],
                          introduction=introduction)  # fmt: skip
    write_atomic(summary, page)
    echo(f"\nHTML summary: {printable(str(summary))}  (JSON reports beside it; {time.perf_counter() - start:.1f} s)")
    for line in outcome:
        echo(line)
    return list(zip(models, reports))
