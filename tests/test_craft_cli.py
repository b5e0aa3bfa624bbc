"""``fedguard craft``: every crafter's model, written for every built-in architecture, is caught by ``fedguard inspect``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fedguard.architectures import ARCHITECTURES
from fedguard.attacks.craft import CRAFTERS
from fedguard.cli import main
from fedguard.loading import load_model_file

#: Every built-in architecture (the test crafts every attack for each).
ARCHES = tuple(ARCHITECTURES.names())


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("attack", CRAFTERS.names())
def test_crafted_model_round_trips_and_is_caught(tmp_path, attack, arch):
    out = tmp_path / f"{attack}.pt"
    res = _run("craft", attack, "--arch", arch, "-o", out)
    assert res.exit_code == 0, res.output
    assert out.stat().st_mode & 0o777 == 0o600
    report = tmp_path / "report.json"
    res = _run("inspect", out, "--arch", arch, "--format", "json", "-o", report)
    assert res.exit_code == 1, res.output
    doc = json.loads(report.read_text())
    assert doc["verdict"] == "malicious", (attack, arch, [f["rule_id"] for f in doc["findings"]])


def _documented_rules() -> dict[tuple[str, str], set[str]]:
    """docs/craft.md's table of the rules ``inspect`` reports on each default craft: (crafter, arch) -> rule IDs."""
    lines = open("docs/craft.md", encoding="utf-8").read().split("| crafter | `lenet`", 1)[1].splitlines()
    arches = ["lenet", *(cell.strip(" `") for cell in lines[0].strip().strip("|").split("|"))]
    table = {}
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        name, *cells = (cell.strip(" `") for cell in line.strip().strip("|").split("|"))
        for arch, cell in zip(arches, cells, strict=True):
            same = cell.removeprefix("same as `")
            table[name, arch] = table[name, same] if same in arches else set(cell.split(", "))
    return table


DOCUMENTED_RULES = _documented_rules()


@pytest.mark.parametrize(("attack", "arch"), sorted(DOCUMENTED_RULES))
def test_the_documented_rules_per_crafter_are_what_inspect_reports(tmp_path, attack, arch):
    from fedguard.attacks.craft import READS_DATA

    out = tmp_path / f"{attack}.pt"
    data = ("--data", "digits") if attack in READS_DATA else ()
    assert _run("craft", attack, "--arch", arch, *data, "-o", out).exit_code == 0
    res = _run("inspect", out, "--arch", arch, "--format", "json")
    doc = json.loads(res.stdout)
    assert doc["verdict"] == "malicious"
    assert {f["rule_id"] for f in doc["findings"]} == DOCUMENTED_RULES[attack, arch], "re-measure docs/craft.md's table"


def test_the_documented_table_covers_every_crafter():
    assert {attack for attack, _ in DOCUMENTED_RULES} == set(CRAFTERS.names())


def test_the_suggested_check_is_one_that_runs_as_crafted(tmp_path):
    """The hint names the crafted input shape and classes: without them, inspect reads the model as drift."""
    import shlex

    out = tmp_path / "fish.pt"
    res = _run("craft", "class_fishing", "--arch", "lenet5", "--input-shape", "3,32,32", "--num-classes", "4", "-o", out)
    hint = res.stderr.strip().split("check it with: ")[1]
    assert hint == f"fedguard inspect {shlex.quote(str(out))} --arch lenet5 --input-shape 3,32,32 --num-classes 4"
    res = _run(*shlex.split(hint)[1:], "--format", "json")
    assert res.exit_code == 1
    assert {f["rule_id"] for f in json.loads(res.stdout)["findings"]}.isdisjoint({"FG701"})


@pytest.mark.parametrize("suffix", [".safetensors", ".npz", ".pth"])
def test_formats_and_determinism(tmp_path, suffix):
    a, b = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
    for path in (a, b):
        assert _run("craft", "imprint", "--arch", "convnet", "--data", "digits", "--seed", "3", "-o", path).exit_code == 0
    ta, tb = load_model_file(a).tensors, load_model_file(b).tensors
    assert list(ta) == list(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert any(k.startswith("imprint.") for k in ta)
    res = _run("inspect", a, "--format", "json")
    assert res.exit_code == 1 and json.loads(res.output)["verdict"] == "malicious"


def test_options_and_seeds_change_the_model(tmp_path):
    res = _run("craft", "mkor", "--arch", "lenet", "--list-options")
    assert res.exit_code == 0 and "noise=0.0" in res.output
    plain, noisy = tmp_path / "plain.pt", tmp_path / "noisy.pt"
    assert _run("craft", "mkor", "--arch", "lenet", "-o", plain).exit_code == 0
    assert _run("craft", "mkor", "--arch", "lenet", "--set", "noise=0.01", "-o", noisy).exit_code == 0
    p, n = load_model_file(plain).tensors, load_model_file(noisy).tensors
    assert any(not torch.equal(p[k], n[k]) for k in p)
    for spelling in ("true", "True"):  # as shells and YAML spell a flag, and as Python does
        out = tmp_path / f"trap-{spelling}.pt"
        assert _run("craft", "trap_weights", "--arch", "lenet", "--set", f"pass_through_convs={spelling}", "-o", out).exit_code == 0


def test_from_given_weights(tmp_path):
    from fedguard.architectures import build_model

    torch.manual_seed(5)
    base = tmp_path / "global.pt"
    torch.save(build_model("lenet5").state_dict(), base)
    out = tmp_path / "evil.npz"
    assert _run("craft", "class_fishing", "--arch", "lenet5", "--model", base, "-o", out).exit_code == 0
    with np.load(out) as arrays:
        assert set(arrays.files) == set(load_model_file(base).tensors)


@pytest.mark.parametrize(
    "args, message",
    [
        (["craft", "no_such_attack", "--arch", "lenet", "-o", "x.pt"], "Invalid value for 'ATTACK'"),
        (["craft", "mkor", "--arch", "lenet"], "give -o/--output, the file to write the crafted model to (.pt, .pth, .safetensors or .npz)"),
        (["craft", "mkor", "--arch", "lenet", "-o", "x.onnx"], "use one of .pt, .pth, .safetensors, .npz"),
        (["craft", "mkor", "--arch", "lenet", "--set", "bogus=1", "-o", "x.pt"], "mkor has no option 'bogus'"),
        (["craft", "mkor", "--arch", "lenet", "--set", "noise", "-o", "x.pt"], "is not KEY=VALUE"),
        (["craft", "mkor", "--arch", "lenet", "--set", "=0.01", "-o", "x.pt"], "'=0.01' is not KEY=VALUE"),  # no key
        (["craft", "mkor", "--arch", "lenet", "--set", "noise=1", "--set", "noise=2", "-o", "x.pt"], "--set noise is given twice (1 and 2)"),
        (["craft", "mkor", "--arch", "no_such_net", "-o", "x.pt"], "no_such_net"),
        (["craft", "mkor", "--arch", "lenet", "--model", "missing.pt", "-o", "x.pt"], "does not exist"),
        (["craft", "mkor", "--arch", "lenet", "--model", ".", "-o", "x.pt"], "--model . is a directory; pass the global model's file"),
        (["craft", "mkor", "-o", "x.pt"], "give --arch"),
        (["craft", "mkor", "--arch", "lenet", "--num-classes", "0", "-o", "x.pt"], "--num-classes': 0 is not in the range x>=1"),
        (["craft", "mkor", "--arch", "lenet", "-o", ""], "Invalid value for '-o' / '--output': the path is empty; name a file"),
        (["craft", "imprint", "--arch", "lenet", "--set", "num_bins=-1", "-o", "x.pt"], "num_bins=-1 must be at least 1"),
        (["craft", "imprint", "--arch", "lenet", "--set", "gain=nan", "-o", "x.pt"], "gain='nan' is not a number"),
        (["craft", "mkor", "--arch", "lenet", "--set", "bn=bogus", "-o", "x.pt"], "bn='bogus' is not 'identity' or 'keep'"),
        (["craft", "feature_fishing", "--arch", "lenet", "--set", "quantile=2", "-o", "x.pt"], "strictly between 0 and 1"),
        (["craft", "oversized_fc", "--arch", "lenet", "--set", "width=100000000", "-o", "x.pt"], "GiB), above the limit of 1,073,741,824; lower width"),
        # refused before the bins are computed: these ran for minutes and were killed for memory
        (["craft", "imprint", "--arch", "lenet", "--set", "num_bins=1000000000", "-o", "x.pt"], "lower num_bins"),
        (["craft", "loki", "--arch", "lenet", "--set", "num_bins=1000000000", "-o", "x.pt"], "lower num_bins"),
        (["craft", "trap_weights", "--arch", "lenet", "--set", "mode=block", "--set", "num_neurons=100000000", "-o", "x.pt"], "lower num_neurons"),
        (["craft", "mkor", "--arch", "lenet", "--seed", "99999999999999999999", "-o", "x.pt"], "--seed"),
        # options that would do nothing
        (["craft", "mkor", "--arch", "lenet", "--data", "digits", "-o", "x.pt"], "--data is read only by the crafters feature_fishing, imprint, loki (mkor crafts the same model without it); craft one of those, or drop --data"),
        (["craft", "feature_fishing", "--arch", "lenet", "--set", "quantile=0.9", "-o", "x.pt"], "add --data (the server's public inputs), or drop --set quantile=0.9"),
        (["craft", "trap_weights", "--arch", "mlp", "--set", "pass_through_convs=true", "-o", "x.pt"], "cannot craft this mlp: pass_through_convs=True"),
    ],
)
def test_bad_input_is_one_line(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    res = _run(*args)
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedguard: error:") and message in lines[0], res.output
    assert not (tmp_path / "x.pt").exists()


def test_what_the_arch_code_prints_goes_to_stderr(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "chatty_craft.py").write_text(
        "from fedguard.architectures import build_model\n"
        "print('importing')\n"
        "input_shape = (1, 8, 8)\n\n"
        "def net(num_classes=10, input_shape=(1, 8, 8)):\n"
        "    print('building')\n"
        "    return build_model('mlp', num_classes, input_shape)\n"
    )
    res = _run("craft", "mkor", "--arch", "chatty_craft:net", "-o", "x.pt")
    assert res.exit_code == 0 and res.stdout == "" and "building" in res.stderr, res.output


def test_reads_data_names_exactly_the_crafters_that_read_it_and_data_is_refused_elsewhere():
    """READS_DATA decides where data is refused as doing nothing (--data, and craft(data=...) from Python): every
    other crafter, called directly, must craft the same model without it."""
    import torch

    from fedguard.architectures import build_model
    from fedguard.attacks.craft import READS_DATA, craft
    from fedguard.data import load_data
    from fedguard.errors import InputError

    data = load_data("digits", input_shape=(1, 28, 28), limit=64)[0]
    model = build_model("lenet5")
    for name in CRAFTERS.names():
        crafter = CRAFTERS.get(name)
        with_data, without = (crafter(model, input_shape=(1, 28, 28), num_classes=10, data=d, seed=0).state_dict()
                              for d in (data, None))  # fmt: skip
        same = with_data.keys() == without.keys() and all(torch.equal(with_data[k], without[k]) for k in without)
        assert same == (name not in READS_DATA), name
        if name not in READS_DATA:
            with pytest.raises(InputError, match=f"^{name} reads no public data"):
                craft(name, model, input_shape=(1, 28, 28), num_classes=10, data=data)


def test_list_options_needs_no_arch():
    res = _run("craft", "imprint", "--list-options")
    assert res.exit_code == 0 and "num_bins=128" in res.output


def test_list_options_checks_and_shows_a_set_option():
    res = _run("craft", "imprint", "--list-options", "--set", "num_bins=8")
    assert res.exit_code == 0 and "num_bins=8 (--set)" in res.output and "num_bins=128" not in res.output
    res = _run("craft", "imprint", "--list-options", "--set", "num_bins=abc")
    assert res.exit_code == 2 and "not an integer" in res.output


def test_force_never_overwrites_an_input(tmp_path):
    data = tmp_path / "public.npz"
    np.savez(data, x=np.zeros((4, 3, 32, 32), np.float32), y=np.arange(4))
    before = data.read_bytes()
    res = _run("craft", "imprint", "--arch", "lenet", "--data", data, "-o", data, "--force")
    assert res.exit_code == 2 and "also an input" in res.output
    assert data.read_bytes() == before


def test_never_overwrites_without_force(tmp_path):
    out = tmp_path / "evil.pt"
    out.write_bytes(b"mine")
    res = _run("craft", "mkor", "--arch", "lenet", "-o", out)
    assert res.exit_code == 2 and "--force" in res.output
    assert out.read_bytes() == b"mine"
    assert _run("craft", "mkor", "--arch", "lenet", "-o", out, "--force").exit_code == 0
    assert out.read_bytes() != b"mine"


def test_a_crafted_model_written_is_exit_0_even_when_stderr_is_full(tmp_path):
    """The closing line on a full stderr had turned a written model into exit 2."""
    import subprocess
    import sys
    from pathlib import Path

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "fedguard", "craft", "mkor", "--arch", "mlp", "-o", "m.pt"],
                              stderr=full, cwd=tmp_path, timeout=300)  # fmt: skip
    assert done.returncode == 0 and (tmp_path / "m.pt").stat().st_size > 0


def test_an_upper_case_suffix_names_the_same_format(tmp_path):
    """M.NPZ is an .npz, as a model's extension is read anywhere else: refusing it as no known suffix would be wrong."""
    out = tmp_path / "M.NPZ"
    res = _run("craft", "mkor", "--arch", "mlp", "-o", out)
    assert res.exit_code == 0, res.output
    with np.load(out) as arrays:
        assert set(arrays.files) == set(load_model_file(out).tensors)


def test_the_demo_inspects_each_lenet5_as_a_client_would(tmp_path, monkeypatch):
    """The demo's page says the LeNet-5s are inspected with --arch lenet5 on 64 of the client's digits: without the
    data the behavioural checks would not run, without the arch the Flower .npz's layers would go unchecked."""
    import fedguard.attacks.craft as craft_module
    import fedguard.demo as demo
    from fedguard.architectures import build_model

    # the models themselves do not matter here, only how the demo inspects them: no training, no crafting
    monkeypatch.setattr(demo, "_train_benign", lambda inputs, labels, seed: build_model(demo.ARCH))
    monkeypatch.setattr(craft_module, "craft", lambda attack, model, **kwargs: model)
    monkeypatch.setattr(craft_module, "craft_model", lambda attack, arch, input_shape, **kwargs: build_model(arch, input_shape=input_shape))
    inputs, labels = torch.rand(100, *demo.SHAPE), torch.arange(100) % 10
    options = {model.path.name: model.options for model in demo._write_models(tmp_path, inputs, labels)}
    assert sorted(options) == sorted(demo.MODEL_FILES)
    client = ["benign-lenet5.pt", *(f"{attack}-lenet5.pt" for attack, _ in demo.CRAFTED)]
    for name in client:
        x, y = options[name]["data"]
        assert options[name]["arch"] == "lenet5" and torch.equal(x, inputs[:64]) and torch.equal(y, labels[:64]), name
    assert options["flower-benign-lenet5.npz"] == {"arch": "lenet5"}  # a list of arrays names no layers: the arch does


def test_the_demo_refuses_a_folder_named_summary_html_before_any_work(tmp_path):
    """A folder where the demo's page goes is refused before any work: else the demo crafts and inspects every model,
    then fails writing the page."""
    from fedguard.demo import run_demo
    from fedguard.errors import InputError

    (tmp_path / "out" / "summary.html").mkdir(parents=True)
    with pytest.raises(InputError, match="holds a folder .*summary.html where the demo writes a file"):
        run_demo(tmp_path / "out", echo=lambda line: None)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["summary.html"]  # no models, no reports
