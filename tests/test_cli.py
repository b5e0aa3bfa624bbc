"""The ``fedguard`` command line: exit codes, output formats, and bad input.

Exit codes: 0 = nothing at/above ``--fail-on``, 1 = findings, 2 = usage/input
error with one line on stderr. Most tests use click's CliRunner (click 8.2+
keeps ``result.stdout`` and ``result.stderr`` apart); two run the installed
console script in a real subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shlex
import signal
import stat
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import fedguard
from fedguard.architectures import build_model
from fedguard.cli import main

from .cli_checks import assert_input_error, assert_no_crash
from .helpers import tiny_state_dict
from .payloads import ExecPayload, PopenPayload, SystemPayload, short_unicode

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "reports" / "schemas" / "inspect-report.schema.json"
ANSI = "\x1b["


# --------------------------------------------------------------------------- helpers


def invoke(*args: str, env: dict | None = None):
    return CliRunner(env=env).invoke(main, [str(a) for a in args], catch_exceptions=True)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under ``root`` with bytes, mtime and mode: nothing created, nothing touched."""
    state = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        key = str(path.relative_to(root))
        state[key] = ("dir",) if path.is_dir() else (path.read_bytes(), st.st_mtime_ns, stat.S_IMODE(st.st_mode))
    return state


@pytest.fixture
def clean_model(workdir) -> Path:
    path = workdir / "clean.pt"
    torch.save(tiny_state_dict(), path)
    return path


@pytest.fixture
def high_model(workdir) -> Path:
    """One bias of 100 in the first layer: a single HIGH finding (FG502), nothing critical."""
    sd = tiny_state_dict()
    sd["0.bias"][0] = 100.0
    path = workdir / "high.pt"
    torch.save(sd, path)
    return path


@pytest.fixture
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- basics


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert fedguard.__version__ in result.stdout


@pytest.mark.parametrize("command", [[], ["inspect"], ["rules"], ["demo"]], ids=["main", "inspect", "rules", "demo"])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help(command, flag):
    result = invoke(*command, flag)
    assert_no_crash(result)
    assert result.exit_code == 0
    assert "Usage:" in result.stdout
    assert result.stderr == ""


def test_rules_lists_every_rule_id():
    from fedguard.detectors import DETECTORS
    from fedguard.inspect import rules

    result = invoke("rules")
    assert result.exit_code == 0
    ids = set(rules())
    assert {"FG001", "FG002"} <= ids
    assert {rule.rule_id for _, detector in DETECTORS.items() for rule in detector.rules} <= ids
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.startswith("FG")}
    assert listed == ids
    listed = json.loads(invoke("rules", "--format", "json").stdout)
    assert [r["rule_id"] for r in listed] == list(rules()) and all(r["summary"] and r["reference"] for r in listed)
    assert set(listed[0]) == {"rule_id", "name", "summary", "help", "reference", "url", "detector"}
    assert "\n       https://arxiv.org/abs/2110.13057\n" in result.stdout  # where to read a rule's paper
    # which --detector reports a rule (--detector FG301 had been refused, with nothing saying it is imprint's)
    by_id = {r["rule_id"]: r["detector"] for r in listed}
    assert by_id["FG001"] is None and by_id["FG301"] == "imprint" and by_id["FG804"] == "responses"
    assert "\n       --detector imprint\n" in result.stdout and "\n       (no detector: checked on every file while loading)\n" in result.stdout


def test_clean_model_exits_zero(clean_model):
    result = invoke("inspect", clean_model)
    assert_no_crash(result)
    assert result.exit_code == 0
    # the verdict, not the file's name (clean.pt): the first line starts with it, the last line says it
    assert result.stdout.startswith("CLEAN  ") and result.stdout.splitlines()[-1].startswith("clean: no findings")
    assert result.stderr == ""


# --------------------------------------------------------------------------- formats


def test_inspect_says_each_step_as_it_starts(workdir):
    """The behavioural checks of a large model take minutes (ViT-B/16 at 224x224: 83 s): the command line shows the
    step under way on a terminal, from this callback (an independent review: nothing had shown until the report)."""
    from fedguard.inspect import inspect_model

    torch.save(build_model("lenet5").state_dict(), workdir / "m.pt")
    steps: list[str] = []
    report = inspect_model("m.pt", arch="lenet5", data="digits", progress=steps.append)
    assert steps[0] == "reading m.pt" and len(steps) == len(report.detectors_run) + 1
    assert steps[1:] == [f"{name} ({i} of {len(steps) - 1})" for i, name in enumerate(report.detectors_run, 1)]


def test_the_inspect_spinner_shows_a_path_with_brackets_as_it_is():
    """The step is shown as text, not rich markup: a file named d[/x].pt had raised inside the spinner (exit 3)."""
    import io

    from rich.console import Console

    from fedguard.cli import _status

    out = io.StringIO()
    with _status(True, Console(file=out, force_terminal=True, width=100)) as progress:
        progress("reading d[/x].pt")
    assert "reading d[/x].pt" in out.getvalue()


def test_json_validates_against_schema(clean_model, high_model, schema):
    validator = jsonschema.Draft202012Validator(schema)
    for model, code, verdict in ((clean_model, 0, "clean"), (high_model, 1, "malicious")):
        result = invoke("inspect", model, "--format", "json")
        assert result.exit_code == code
        report = json.loads(result.stdout)
        validator.validate(report)
        assert report["verdict"] == verdict
        assert report["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()


def test_sarif_is_2_1_0(high_model):
    result = invoke("inspect", high_model, "--format", "sarif")
    assert result.exit_code == 1
    sarif = json.loads(result.stdout)
    assert sarif["version"] == "2.1.0"
    assert [r["ruleId"] for r in sarif["runs"][0]["results"]] == ["FG502"]


def test_html_output_file_is_owner_only(high_model, workdir):
    out = workdir / "x.html"
    assert invoke("inspect", high_model, "--format", "html", "-o", out).exit_code == 1
    out.chmod(0o644)
    result = invoke("inspect", high_model, "--format", "html", "-o", out)  # replaces its own earlier report
    assert_no_crash(result)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"malicious: report written to {out}"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    html = out.read_text(encoding="utf-8")
    assert "<html" in html.lower() and "malicious" in html.lower()
    assert sorted(p.name for p in workdir.iterdir()) == ["high.pt", "x.html"]  # no temp file left behind


def test_reports_say_how_the_inspection_was_run(workdir, schema):
    """The data, seed, reference and --fail-on behind a verdict, so that a finding on 'your data' can be traced
    and repeated (the reports had named the model file only)."""
    np.savez(workdir / "mine.npz", x=np.random.default_rng(0).random((16, 1, 28, 28)), y=np.arange(16) % 10)
    torch.save(build_model("lenet5").state_dict(), workdir / "m.pt")
    previous = workdir / "prev.pt"  # last round's model, of the same architecture
    torch.save(build_model("lenet5").state_dict(), previous)
    args = ("inspect", "m.pt", "--arch", "lenet5", "--data", "mine.npz", "--seed", "3", "--reference", previous,
            "--fail-on", "high")  # fmt: skip
    report = json.loads(invoke(*args, "--format", "json").stdout)
    jsonschema.validate(report, schema)
    assert report["loaded"] is True and report["config"] == {
        "num_classes": None, "input_shape": None, "data": "mine.npz", "data_examples": 16, "data_shape": [1, 28, 28], "seed": 3,
        "data_sha256": hashlib.sha256((workdir / "mine.npz").read_bytes()).hexdigest(),
        "reference_sha256": hashlib.sha256(previous.read_bytes()).hexdigest(), "detectors_requested": None,
        "ignore": [], "torch": torch.__version__, "fail_on": "high",
    }  # fmt: skip
    assert report["command_line"] == ["fedguard", *map(str, args), "--format", "json"]  # as typed, to repeat it
    sarif = json.loads(invoke(*args, "--format", "sarif").stdout)
    invocation = sarif["runs"][0]["invocations"][0]
    assert invocation["properties"]["config"] == report["config"]
    assert invocation["arguments"] == [*map(str, args), "--format", "sarif"]
    assert invocation["commandLine"] == shlex.join(["fedguard", *invocation["arguments"]])
    assert "data mine.npz (16 examples as 1x28x28, seed 3)" in invoke(*args).stdout
    page = invoke(*args, "--format", "html").stdout
    assert report["config"]["data_sha256"] in page and report["config"]["reference_sha256"] in page
    assert "<code>fedguard inspect m.pt --arch lenet5 --data mine.npz --seed 3 --reference " in page
    torch.save(build_model("mlp").state_dict(), workdir / "other.pt")  # not lenet5's: FG701, no behavioural check
    other = json.loads(invoke("inspect", "other.pt", "--arch", "lenet5", "--data", "mine.npz", "--format", "json").stdout)
    assert other["findings"][0]["rule_id"] == "FG701" and other["config"]["data_examples"] is other["config"]["data_shape"] is None
    # data of another shape is fitted to --arch, and the header says as what (colour 32x32 read as 1x28x28 grey)
    np.savez(workdir / "colour.npz", x=np.random.default_rng(0).random((16, 32, 32, 3)), y=np.arange(16) % 10)
    assert "data colour.npz (16 examples as 1x28x28, seed 0)" in invoke("inspect", "m.pt", "--arch", "lenet5", "--data", "colour.npz").stdout
    # and the text and HTML say so beside the data, where the header had read as if the checks ran
    not_run = "(behavioural checks not run: the model does not fit --arch)"
    assert f"data mine.npz {not_run}" in invoke("inspect", "other.pt", "--arch", "lenet5", "--data", "mine.npz").stdout
    assert not_run in invoke("inspect", "other.pt", "--arch", "lenet5", "--data", "mine.npz", "--format", "html").stdout


def test_behavioural_checks_need_a_batch_of_16(workdir):
    """D-SNR weighs one example against the rest of a batch of 16; on 2 examples it is the ratio of two gradient
    norms, and 2 of 10 pairs of digits had made a freshly initialised LeNet malicious (FG801)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    np.savez(workdir / "few.npz", x=digits.images[:15] / 16, y=digits.target[:15])
    torch.save(build_model("lenet").state_dict(), workdir / "m.pt")
    line = assert_input_error(invoke("inspect", "m.pt", "--arch", "lenet", "--data", "few.npz"))
    assert "--data holds 15 examples" in line and "need at least 16" in line and "leave out --data" in line


def test_json_output_file(clean_model, workdir, schema):
    out = workdir / "r.json"
    result = invoke("inspect", clean_model, "--format", "json", "--output", out, "--quiet")
    assert result.exit_code == 0
    assert result.output == ""
    jsonschema.validate(json.loads(out.read_text()), schema)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_output_through_a_link_or_to_what_is_not_a_file(clean_model, workdir):
    """A symbolic link is written through (the link stays); '-', a pipe or a device is refused before any work."""
    assert invoke("inspect", clean_model, "--format", "json", "-o", workdir / "real.json").exit_code == 0
    (workdir / "link.json").symlink_to("real.json")
    assert invoke("inspect", clean_model, "--format", "json", "-o", workdir / "link.json").exit_code == 0
    assert (workdir / "link.json").is_symlink() and json.loads((workdir / "real.json").read_text())["verdict"] == "clean"
    os.mkfifo(workdir / "pipe")
    for target, expected in (("-", "--output - is not a file name"), (workdir / "pipe", "is not a regular file"),
                             ("/dev/null", "is not a regular file")):  # fmt: skip
        line = assert_input_error(invoke("inspect", clean_model, "-o", target))
        assert expected in line and "without --output, reports print on stdout" in line
    assert not (workdir / "-").exists()


def test_output_ending_with_a_slash_names_a_folder(clean_model, workdir):
    """``-o out/`` is a folder, not a file named ``out``: refused with a file name inside it to use instead."""
    for args, example in ((("inspect", clean_model), "report.json"), (("craft", "imprint", "--arch", "lenet"), "model.pt")):
        line = assert_input_error(invoke(*args, "-o", "out/"))
        assert f"out/ ends with a slash, which names a folder; name a file inside it, e.g. out/{example}" in line
    assert not (workdir / "out").exists()
    (workdir / "out").mkdir()  # an existing folder: the suggestion has the chosen format's extension
    line = assert_input_error(invoke("inspect", clean_model, "-o", "out", "--format", "sarif"))
    assert "--output out is a directory; name a file inside it, e.g. out/report.sarif" in line


def test_output_inside_a_file_or_named_as_a_folder_says_which(clean_model, workdir):
    """``-o mine.txt/x.txt`` with ``mine.txt`` a file: not "create the folder", which mkdir -p cannot; a folder as
    craft's or disaggregate's file is named as a folder before its suffix is judged."""
    (workdir / "mine.txt").write_text("precious")
    for args in (("inspect", clean_model), ("craft", "imprint", "--arch", "lenet")):
        line = assert_input_error(invoke(*args, "-o", "mine.txt/x.pt" if args[0] == "craft" else "mine.txt/x.txt"))
        assert "mine.txt is a file, not a folder; choose another --output" in line
    assert (workdir / "mine.txt").read_text() == "precious"
    (workdir / "d").mkdir()
    line = assert_input_error(invoke("craft", "imprint", "--arch", "lenet", "-o", "d"))
    assert "--output d is a directory; name a file inside it, e.g. d/model.pt" in line
    line = assert_input_error(invoke("disaggregate", "--simulate", "--users", "5", "--rounds", "40", "--dim", "10",
                                     "-o", "n.json", "--updates", "d"))  # fmt: skip
    assert "d is a directory; name a file inside it, e.g. d/updates.npz" in line


def test_an_input_error_is_one_line_and_keeps_the_spaces_of_a_name(workdir):
    """Line breaks (an embedded exception's, a wrapped template's) read as one space; other runs of spaces stay, as
    they may be a file's name: 'my  model.pt' had been named 'my model.pt', a file that does not exist."""
    from fedguard.errors import InputError

    assert str(InputError("  first\n   second \r\n third  ")) == "first second third"
    assert str(InputError("my  model.pt does not exist")) == "my  model.pt does not exist"
    line = assert_input_error(invoke("inspect", "no  such.pt"))
    assert line == "fedguard: error: no  such.pt does not exist; check the path"


def test_a_missing_output_folder_gets_a_mkdir_that_makes_it(clean_model, workdir):
    """A folder name with a line break had been quoted as 'nod ir' in the hint, a command that made another folder."""
    line = assert_input_error(invoke("inspect", clean_model, "-o", "no dir/x.txt"))
    assert line.endswith("create it first (mkdir -p 'no dir')")
    line = assert_input_error(invoke("inspect", clean_model, "-o", "nod\nir/x.txt"))
    assert line.endswith("create it first (mkdir -p $'nod\\nir')"), line


def test_an_os_error_past_the_checks_names_its_cause(monkeypatch, capsys):
    """The last resort for an OSError: a permission problem is not a full disk."""
    import errno

    import fedguard.cli
    from fedguard.__main__ import run

    for code, expected in ((errno.EACCES, "d.npz: permission denied; check its permissions"),
                           (errno.ENOSPC, "writing the output failed"), (errno.ENOTDIR, "check the path")):  # fmt: skip
        def fail(code=code):
            raise OSError(code, os.strerror(code), "d.npz")

        monkeypatch.setattr(fedguard.cli, "main", fail)
        try:
            with pytest.raises(SystemExit) as stop:
                run()
        finally:  # run() leaves Ctrl-C ignored for the process's exit
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.signal(signal.SIGINT, signal.default_int_handler)
        assert stop.value.code == 2 and expected in capsys.readouterr().err


def test_output_named_like_a_model_or_data_file_is_refused(clean_model, workdir):
    """A report in ``r.pt`` or ``r.npz`` would later be taken for a model or a data set; the updates are an .npz."""
    for name in ("r.pt", "r.npz", "r.safetensors", "r.png"):
        line = assert_input_error(invoke("inspect", clean_model, "-o", name))
        assert "has the extension of a model, data or image file, not of a report" in line and "*.json" in line
    line = assert_input_error(invoke("disaggregate", "--simulate", "--users", "5", "--rounds", "20", "--dim", "10",
                                     "-o", "d.json", "--updates", "d.txt"))  # fmt: skip
    assert "d.txt: this file is written as .npz; name it d.npz" in line
    assert sorted(p.name for p in workdir.iterdir()) == [clean_model.name]


@pytest.mark.parametrize("fmt", ["text", "json", "sarif", "html"])
def test_output_replaces_only_reports_without_force(clean_model, workdir, fmt):
    """An earlier report in any format is replaced; a file of the user's (here notes of theirs) only with --force."""
    out = workdir / f"report.{fmt}"
    for _ in range(2):
        assert invoke("inspect", clean_model, "--format", fmt, "-o", out).exit_code == 0
    victim = workdir / "victim.txt"
    victim.write_bytes(b"PK\x03\x04 a model of mine")
    line = assert_input_error(invoke("inspect", clean_model, "--format", fmt, "-o", victim))
    assert "is not a file fedguard wrote" in line and "--force" in line
    assert victim.read_bytes() == b"PK\x03\x04 a model of mine"
    assert invoke("inspect", clean_model, "--format", fmt, "-o", victim, "--force").exit_code == 0
    assert victim.read_bytes() != b"PK\x03\x04 a model of mine"


def test_sarif_json_names_a_sarif_report(clean_model, workdir):
    """``report.sarif.json`` (the other name SARIF viewers and code scanning take) is SARIF, with or without
    --format sarif; --format json there is named as a clash and the way out keeps the stem."""
    out = workdir / "report.sarif.json"
    for extra in ((), ("--format", "sarif")):
        assert invoke("inspect", clean_model, "-o", out, *extra).exit_code == 0
        assert json.loads(out.read_text())["version"] == "2.1.0"
    line = assert_input_error(invoke("inspect", clean_model, "-o", out, "--format", "json"))
    assert "has the extension of the sarif format but --format is json" in line and "report.json" in line


def test_an_htm_output_is_an_html_report(high_model, workdir):
    """``.htm`` is HTML's other extension: the page is written there, without --format, as for ``.html``."""
    result = invoke("inspect", high_model, "-o", "r.htm")
    assert_no_crash(result)
    assert result.exit_code == 1 and result.stdout == ""
    page = (workdir / "r.htm").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and '<span class="verdict v-malicious">MALICIOUS</span>' in page


def test_output_where_no_file_can_be_written_is_refused_before_any_work(clean_model, workdir):
    """A folder that takes no files (/proc passes an access() check as root) and a write-protected report are named
    up front: an audit would otherwise run to its end and fail on writing, and its grids would be left behind."""
    line = assert_input_error(invoke("inspect", clean_model, "-o", "/proc/fedguard-report.json"))
    assert "--output" in line and "/proc" in line
    report = workdir / "kept.json"
    assert invoke("inspect", clean_model, "--format", "json", "-o", report).exit_code == 0
    report.chmod(0o444)  # root may write to it anyway: the write bits decide
    line = assert_input_error(invoke("inspect", clean_model, "-o", report, "--force"))
    assert "is write-protected" in line and report.read_bytes().startswith(b"{")


def test_a_behavioural_check_the_model_code_breaks_is_one_input_error(workdir):
    """The client's --arch code raising inside a behavioural check (here: in any forward with gradients, as
    gradient_snr runs it) is one line naming the check and the exception, exit 2; it had been a traceback with
    exit 1, which scripts read as findings. Without --data the static checks still run."""
    (workdir / "grad_shy_net.py").write_text(
        "import torch\n"
        "from fedguard.architectures import build_model\n\n"
        "def net(num_classes=10, input_shape=(1, 8, 8)):\n"
        "    model = build_model('lenet', num_classes, input_shape)\n"
        "    def refuse(*_):\n"
        "        if torch.is_grad_enabled():\n"
        "            raise KeyError('no gradients here')\n"
        "    model.register_forward_hook(refuse)\n"
        "    return model\n"
    )
    from fedguard.architectures import build_model

    torch.save(build_model("lenet", 10, (1, 8, 8)).state_dict(), workdir / "global.pt")
    args = ("inspect", "global.pt", "--arch", "grad_shy_net:net", "--input-shape", "1,8,8")
    line = assert_input_error(invoke(*args, "--data", "digits"))
    assert "the gradient_snr check runs the model, which raised KeyError: 'no gradients here'" in line
    assert "drop --data" in line
    result = invoke(*args)
    assert_no_crash(result)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("fmt", ["text", "json", "sarif", "html"])
def test_quiet_prints_nothing(high_model, fmt):
    result = invoke("inspect", high_model, "--format", fmt, "--quiet")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == ""


def test_fail_on(high_model):
    assert invoke("inspect", high_model).exit_code == 1
    assert invoke("inspect", high_model, "--fail-on", "high").exit_code == 1
    assert invoke("inspect", high_model, "--fail-on", "critical").exit_code == 0
    assert invoke("inspect", high_model, "--fail-on", "critical", "-q").exit_code == 0
    result = invoke("inspect", high_model, "--fail-on", "CRITICAL", "--format", "JSON")  # as Python's Severity.parse
    assert result.exit_code == 0 and json.loads(result.stdout)["config"]["fail_on"] == "critical"


def test_no_colour_when_not_a_tty(high_model):
    env = {"FORCE_COLOR": "1", "CLICOLOR_FORCE": "1", "TERM": "xterm-256color", "NO_COLOR": None}
    for fmt in ("text", "json", "sarif"):
        result = invoke("inspect", high_model, "--format", fmt, env=env)
        assert result.exit_code == 1
        assert ANSI not in result.output
    assert ANSI not in invoke("rules", env=env).output


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_a_finding_not_an_input_error(workdir, value):
    sd = tiny_state_dict()
    sd["2.weight"][1, 2] = value
    path = workdir / "nonfinite.pt"
    torch.save(sd, path)
    result = invoke("inspect", path, "--format", "json")
    assert_no_crash(result)
    assert result.exit_code == 1
    assert result.stderr == ""
    report = json.loads(result.stdout)
    fg002 = [f for f in report["findings"] if f["rule_id"] == "FG002"]
    assert len(fg002) == 1 and fg002[0]["layer"] == "2.weight"


# --------------------------------------------------------------------------- malicious pickles


def _stack_global(target) -> bytes:
    """Protocol 4 STACK_GLOBAL whose two strings come back from the memo (BINGET)."""
    return (b"\x80\x04" + short_unicode("os") + b"\x94" + short_unicode("system") + b"\x94" + b"00h\x00h\x01\x93"
            + short_unicode(f"touch {shlex.quote(str(target))}") + b"\x85R.")


PAYLOADS = {
    "os-system": (lambda p, t: p.write_bytes(pickle.dumps(SystemPayload(t))), {"os.system", "posix.system"}),
    "subprocess-popen": (lambda p, t: p.write_bytes(pickle.dumps(PopenPayload(t))), {"subprocess.Popen"}),
    "builtins-exec": (lambda p, t: p.write_bytes(pickle.dumps(ExecPayload(t))), {"builtins.exec"}),
    "torch-zip": (lambda p, t: torch.save({"evil": SystemPayload(t), "w": torch.ones(2, 2)}, p), {"os.system", "posix.system"}),
    "stack-global-memo": (lambda p, t: p.write_bytes(_stack_global(t)), {"os.system"}),
    "protocol0-global": (lambda p, t: p.write_bytes(pickle.dumps(SystemPayload(t), protocol=0)), {"os.system", "posix.system"}),
}


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_code_importing_pickle(workdir, name):
    write, callables = PAYLOADS[name]
    target = workdir / "pwned"
    path = workdir / "evil.pt"
    write(path, target)
    before = snapshot(workdir)

    result = invoke("inspect", path, "--format", "json")
    assert_no_crash(result)
    assert not target.exists()
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["verdict"] == "malicious"
    assert report["summary"]["critical"] == 1
    (finding,) = report["findings"]
    assert finding["rule_id"] == "FG001" and finding["severity"] == "critical"
    assert callables & set(finding["evidence"]["imports"]), finding
    assert any(c in finding["message"] for c in callables)
    assert report["loaded"] is False  # its 0 parameters are not a count

    text = invoke("inspect", path)
    assert text.exit_code == 1 and "FG001" in text.stdout and "not loaded: it would run code" in text.stdout
    assert not target.exists()
    assert snapshot(workdir) == before


def test_a_code_importing_reference_is_refused_with_what_to_pass(workdir):
    target = workdir / "pwned"
    PAYLOADS["torch-zip"][0](workdir / "prev.pt", target)
    torch.save(tiny_state_dict(), workdir / "model.pt")
    line = assert_input_error(invoke("inspect", "model.pt", "--reference", "prev.pt"))
    assert "would execute code when loaded" in line and "pass last round's model as a weights-only .pt" in line
    assert not target.exists()


def test_integer_matrices_under_plain_names_are_named(workdir):
    """A file whose only matrix is int8 (names without .weight) says so, not that it holds no matrix."""
    torch.save({"w": torch.ones(10, 20, dtype=torch.int8), "b": torch.ones(3)}, workdir / "int8.pt")
    assert "its matrices are int8, not floating point: save the float model" in assert_input_error(invoke("inspect", "int8.pt"))
    torch.save({"b": torch.ones(3)}, workdir / "vector.pt")
    assert "pass the global model's state_dict" in assert_input_error(invoke("inspect", "vector.pt"))


def test_pickled_module_is_refused(workdir):
    path = workdir / "whole.pt"
    torch.save(nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)), path)
    line = assert_input_error(invoke("inspect", path))
    assert "state_dict" in line


# --------------------------------------------------------------------------- bad input


def _write_torch(name, obj):
    def make(d: Path):
        torch.save(obj, d / name)
        return [name]
    return make


def _truncated(d: Path):
    torch.save(tiny_state_dict(), d / "full.pt")
    data = (d / "full.pt").read_bytes()
    (d / "full.pt").unlink()
    (d / "half.pt").write_bytes(data[: len(data) // 2])
    return ["half.pt"]


def _corrupt(d: Path):
    torch.save(tiny_state_dict(), d / "corrupt.pt")
    data = bytearray((d / "corrupt.pt").read_bytes())
    middle = len(data) // 2
    for i in range(middle - 8, middle + 8):
        data[i] ^= 0xFF
    (d / "corrupt.pt").write_bytes(bytes(data))
    return ["corrupt.pt"]


def _random(d: Path):
    (d / "random.pt").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return ["random.pt"]


def _with_model(*extra):
    def make(d: Path):
        torch.save(tiny_state_dict(), d / "model.pt")
        return ["model.pt", *extra]
    return make


def _with_data(x: np.ndarray, y: np.ndarray):
    def make(d: Path):
        torch.save(tiny_state_dict(), d / "model.pt")
        np.savez(d / "mydata.npz", x=x, y=y)
        return ["model.pt", "--arch", "lenet5", "--data", "mydata.npz"]
    return make


def _npz_object(d: Path):
    np.savez(d / "obj.npz", w=np.array([{"a": 1}, "x"], dtype=object))
    return ["obj.npz"]


def _dir(d: Path):
    (d / "folder").mkdir()
    torch.save(tiny_state_dict(), d / "folder" / "model.pt")
    return ["folder"]


def _empty(d: Path):
    (d / "empty.pt").write_bytes(b"")
    return ["empty.pt"]


def _forged_npz(d: Path):
    """An .npz whose one member claims 10¹¹ floats and holds 16 bytes (numpy would allocate 373 GiB)."""
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (100000000000,), }"
    header += " " * (117 - len(header)) + "\n"
    with zipfile.ZipFile(d / "forged.npz", "w") as archive:
        archive.writestr("w.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + b"\0" * 16)
    return ["forged.npz"]


def _pickle_protocol_4(d: Path):
    torch.save(tiny_state_dict(), d / "p4.pt", pickle_protocol=4)
    return ["p4.pt"]


def _module_file(name: str, source: str, *args: str):
    def make(d: Path):
        torch.save(tiny_state_dict(), d / "model.pt")
        (d / f"{name}.py").write_text(source)
        return ["model.pt", *args]
    return make


_TUPLE_NET = """from torch import nn

class TupleNet(nn.Module):
    def __init__(self, num_classes=10, input_shape=(1, 8, 8)):
        super().__init__()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        return (self.fc(x.flatten(1)),)
"""
_PLAIN_NET = "from torch import nn\n\ndef net(num_classes=10, input_shape=(1, 8, 8)):\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))\n"


def _data_folder_output(d: Path):
    torch.save(tiny_state_dict(), d / "model.pt")
    (d / "photos" / "cat").mkdir(parents=True)
    return ["model.pt", "--arch", "lenet5", "--data", "photos", "-o", "photos/cat/report.json"]


BAD_INPUTS = {
    "missing-file": lambda d: ["nope.pt"],
    "directory": _dir,
    "empty-file": _empty,
    "truncated-zip": _truncated,
    "corrupt-zip": _corrupt,
    "random-bytes": _random,
    "txt-extension": _write_torch("model.txt", {"w": torch.ones(2)}),
    "npz-holding-torch": _write_torch("model.npz", {"w": torch.ones(2)}),
    "bare-tensor": _write_torch("tensor.pt", torch.ones(4, 4)),
    "string-value": _write_torch("strings.pt", {"w": torch.ones(2, 2), "note": "hello"}),
    "zero-sized-tensor": _write_torch("zero.pt", {"w": torch.ones(0, 3), "b": torch.ones(3)}),
    "nothing-to-check-list": _write_torch("list.pt", [torch.zeros(3)]),
    "stride-0-tensor": _write_torch("expanded.pt", {"w": torch.zeros(1).expand(50_000, 50_000)}),  # 4 bytes as 10 GB
    "nothing-to-check-scalar": _write_torch("scalar.pt", {"w": torch.tensor(1.0)}),
    "npz-object-array": _npz_object,
    "npz-with-no-arrays": lambda d: (np.savez(d / "empty.npz"), ["empty.npz"])[1],
    "unknown-arch": _with_model("--arch", "no_such_net"),
    "bad-input-shape": _with_model("--arch", "lenet5", "--input-shape", "3,32"),
    "zero-input-shape": _with_model("--arch", "lenet5", "--input-shape", "0,28,28"),
    "data-wrong-channels": _with_data(np.random.default_rng(0).random((4, 2, 28, 28), dtype=np.float32), np.array([0, 1, 2, 0])),
    "data-labels-too-large": _with_data(np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32), np.array([0, 1, 2, 50])),
    "data-without-arch": _with_model("--data", "digits"),
    "input-shape-without-arch": _with_model("--input-shape", "1,28,28"),
    "num-classes-without-arch": _with_model("--num-classes", "10"),
    "unknown-detector": _with_model("--detector", "no_such_detector"),
    "output-missing-folder": _with_model("-o", "missing/report.json"),
    "output-is-input": _with_model("-o", "model.pt"),
    "output-is-directory": _with_model("-o", "."),
    "reference-missing": _with_model("--reference", "prev.pt"),
    "npz-forged-shape": _forged_npz,
    "meta-tensor": _write_torch("meta.pt", {"w": torch.empty(3, 3, device="meta")}),
    "pickle-protocol-4": _pickle_protocol_4,
    "empty-arch": _with_model("--arch", ""),
    "empty-model-path": lambda d: [""],  # Path("") would be the current folder
    "empty-reference-path": _with_model("--reference", ""),
    "huge-num-classes": _with_model("--arch", "lenet5", "--num-classes", str(10**12)),
    "negative-seed": _with_model("--arch", "lenet5", "--data", "digits", "--seed", "-1"),
    "detector-without-its-data": _with_model("--detector", "gradient_snr"),
    "detector-without-its-arch": _with_model("--detector", "architecture_drift"),
    "data-of-one-example": _with_data(np.zeros((1, 1, 28, 28), np.float32), np.array([0])),
    "arch-returns-tuple": _module_file("tuplenet", _TUPLE_NET, "--arch", "tuplenet:TupleNet", "--input-shape", "1,8,8"),
    "output-is-arch-module": _module_file("plainnet", _PLAIN_NET, "--arch", "plainnet:net", "-o", "plainnet.py"),
    "output-is-data-file": lambda d: _with_data(np.zeros((4, 1, 28, 28), np.float32), np.array([0, 1, 2, 0]))(d) + ["-o", "mydata.npz"],
    "output-inside-data-folder": _data_folder_output,
}


def test_flower_list_and_named_files_compare_as_the_same_model(workdir):
    """A reference saved as a Flower list of arrays takes MODEL's names (and the other way round): no false drift."""
    sd = tiny_state_dict()
    torch.save(sd, workdir / "named.pt")
    np.savez(workdir / "flower.npz", *[v.numpy() for v in sd.values()])
    for model, reference in (("named.pt", "flower.npz"), ("flower.npz", "named.pt"), ("flower.npz", "flower.npz")):
        result = invoke("inspect", model, "--reference", reference, "--format", "json")
        assert result.exit_code == 0 and json.loads(result.stdout)["findings"] == [], (model, reference, result.output)


def test_out_of_memory_names_what_to_make_smaller_for_inspect(clean_model, monkeypatch):
    """A small compressed file can declare tensors of many GiB: the advice is about the file, not an audit's batch."""
    def allocator_fails(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 14400000000 bytes.")

    monkeypatch.setattr("fedguard.inspect.load_model_file", allocator_fails)
    line = assert_input_error(invoke("inspect", clean_model))
    assert line.startswith("fedguard: error: out of memory") and "the file's tensors (as it declares them" in line
    assert "--batch-size" not in line


def test_a_fault_in_fedguard_is_one_line_and_exit_3_not_a_verdict(clean_model, monkeypatch):
    """A detector that raised (finite 3e38 weights had overflowed the fishing check) printed a traceback and exited 1,
    which a gate reads as findings; FEDGUARD_DEBUG=1 keeps the traceback for a report."""
    def broken(*args, **kwargs):
        raise ZeroDivisionError("float division by zero\nsecond line")

    monkeypatch.setattr("fedguard.inspect.run_detectors", broken)
    monkeypatch.delenv("FEDGUARD_DEBUG", raising=False)
    result = invoke("inspect", clean_model)
    assert result.exit_code == 3 and result.stdout == "", result.output
    assert result.stderr.splitlines() == ["fedguard: internal error: ZeroDivisionError: float division by zero; a fault in "
                                          "fedguard, not a verdict: rerun with FEDGUARD_DEBUG=1 for the traceback and "
                                          "report it"]  # fmt: skip
    monkeypatch.setenv("FEDGUARD_DEBUG", "1")
    assert isinstance(invoke("inspect", clean_model).exception, ZeroDivisionError)


def test_a_compressed_npz_that_unpacks_beyond_memory_is_refused_up_front(workdir, monkeypatch):
    """14 MB of compressed zeros can declare 14 GB: refused from the headers, before numpy allocates."""
    np.savez_compressed(workdir / "bomb.npz", w=np.zeros((1024, 1024), np.float32))  # 4 MiB that packs to 4 KiB
    monkeypatch.setattr("fedguard.io.physical_memory", lambda: 2**20)  # a machine of 1 MiB
    line = assert_input_error(invoke("inspect", workdir / "bomb.npz"))
    assert "bomb.npz unpacks to 0.0 GiB of arrays, more than this machine's memory" in line


def test_a_reference_with_a_nan_layer_is_refused_not_skipped(workdir):
    """A layer FG702 cannot compare would let a replaced one pass as clean against that reference."""
    sd = tiny_state_dict()
    torch.save(sd, workdir / "model.pt")
    name = next(k for k, v in sd.items() if v.dim() == 2)
    torch.save({**sd, name: torch.full_like(sd[name], float("nan"))}, workdir / "prev.pt")
    line = assert_input_error(invoke("inspect", "model.pt", "--reference", "prev.pt"))
    assert f"reference prev.pt holds NaN or infinite values in {name}" in line


def test_a_reference_of_another_architecture_than_arch_is_the_users_error_not_the_servers(workdir):
    """The model fits --arch and last round's file does not: FG702 had blamed the server (malicious, exit 1); a model
    that does not fit --arch either is still reported, as FG701 and FG702."""
    from fedguard.architectures import build_model

    torch.save(build_model("mlp").state_dict(), workdir / "model.pt")
    torch.save(build_model("lenet5").state_dict(), workdir / "prev.pt")
    line = assert_input_error(invoke("inspect", "model.pt", "--arch", "mlp", "--reference", "prev.pt"))
    assert line.startswith("fedguard: error: reference prev.pt does not fit --arch mlp (6 missing: 1.weight, 1.bias")
    assert line.endswith("while the model does; pass last round's model of this architecture")
    result = invoke("inspect", "model.pt", "--arch", "lenet5", "--reference", "prev.pt", "--format", "json")
    assert result.exit_code == 1 and {"FG701", "FG702"} <= {f["rule_id"] for f in json.loads(result.stdout)["findings"]}
    # a server that resized the head: --arch reads the class count off the received model, so only the reference
    # differs, in shape, not in names; that is FG702's to report, not the user's error
    same = invoke("inspect", "model.pt", "--arch", "mlp", "--reference", "model.pt")  # had been clean without a word
    assert same.exit_code == 0 and same.stderr.startswith("fedguard: note: --reference model.pt has the same contents as ")
    torch.save(build_model("lenet5", num_classes=12).state_dict(), workdir / "resized.pt")
    torch.save(build_model("lenet5").state_dict(), workdir / "prev.pt")
    result = invoke("inspect", "resized.pt", "--arch", "lenet5", "--reference", "prev.pt", "--format", "json")
    assert result.exit_code == 1 and "FG702" in {f["rule_id"] for f in json.loads(result.stdout)["findings"]}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input(workdir, case):
    args = BAD_INPUTS[case](workdir)
    if "-o" not in args:
        args += ["-o", "report.json"]
    before = snapshot(workdir)
    line = assert_input_error(invoke("inspect", *args))
    assert len(line) < 600
    assert snapshot(workdir) == before  # no report written, no temp file, inputs untouched


@pytest.mark.parametrize("args, expected", [
    (["--seed", "5"], "--seed seeds the sample of --data, which is not given; add --data, or drop --seed"),
    (["--force"], "--force replaces an existing --output, which is not given; add -o FILE, or drop --force"),
], ids=["seed-without-data", "force-without-output"])
def test_options_that_would_do_nothing_are_refused(clean_model, args, expected):
    """Accepted in silence before, each doing nothing: no --data to sample, no --output to replace."""
    assert assert_input_error(invoke("inspect", clean_model, *args)) == f"fedguard: error: {expected}"


@pytest.mark.parametrize("command, args, expected", [
    ("inspect", ["--arch", "lenet5", "--arch", "mlp"], "--arch is given twice ('lenet5' and 'mlp')"),
    ("inspect", ["--arch=lenet5", "--arch", "mlp"], "--arch is given twice ('lenet5' and 'mlp')"),
    ("inspect", ["-o", "a.json", "--output", "b.json"], "--output is given twice ('a.json' and 'b.json')"),
    ("audit", ["--arch", "lenet5", "--batch-size", "2", "--batch-size", "3"], "--batch-size is given twice ('2' and '3')"),
    ("craft", ["mkor", "--arch", "lenet5", "-o", "x.pt", "--seed", "1", "--seed", "2"], "--seed is given twice ('1' and '2')"),
    ("disaggregate", ["--simulate", "--workers", "1", "--workers", "2"], "--workers is given twice ('1' and '2')"),
    ("inspect", ["-oa.json", "-o", "b.json"], "-o is given twice ('a.json' and 'b.json')"),  # click's short forms
    ("inspect", ["-qo", "c.json", "-o", "d.json"], "-o is given twice ('c.json' and 'd.json')"),
    ("audit", ["--arch", "lenet5", "--seed", "-1", "--seed", "2"], "--seed is given twice ('-1' and '2')"),
], ids=["inspect", "inspect-equals", "inspect-short-and-long", "audit", "craft", "disaggregate", "attached", "grouped",
        "negative-value"])
def test_an_option_of_one_value_given_twice_is_refused(clean_model, workdir, command, args, expected):
    """click keeps the last value in silence: ``--arch lenet5 --arch mlp`` had judged a LeNet-5 file against an MLP
    (FG701, malicious). Repeatable options (--ignore, --attack) stay repeatable."""
    before = snapshot(workdir)
    line = assert_input_error(invoke(command, *([clean_model] if command == "inspect" else []), *args))
    assert line.startswith(f"fedguard: error: {expected}; give it once; see '") and line.endswith(f" {command} --help'")
    assert snapshot(workdir) == before
    result = invoke("inspect", clean_model, "--ignore", "FG301", "--ignore", "FG101", "--detector", "magnitude",
                    "--detector", "constant_rows")  # fmt: skip
    assert result.exit_code == 0, result.output
    # a repeatable option's value is a value, whatever it looks like; --help wins; nothing after -- counts
    line = assert_input_error(invoke("inspect", "--ignore", "--arch", clean_model, "--arch", "lenet5"))
    assert "unknown rule '--arch'" in line
    assert invoke("inspect", clean_model, "--arch", "a", "--arch", "b", "--help").stdout.startswith("Usage:")
    assert "unexpected extra argument" in assert_input_error(invoke("inspect", clean_model, "--arch", "mlp", "--", "--arch"))


def test_unknown_format_is_a_usage_error(clean_model, workdir):
    before = snapshot(workdir)
    result = invoke("inspect", clean_model, "--format", "yaml", "-o", "r.yaml")
    assert_no_crash(result)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "--format" in result.stderr and "yaml" in result.stderr
    assert snapshot(workdir) == before


def test_unknown_fail_on_is_a_usage_error(clean_model):
    result = invoke("inspect", clean_model, "--fail-on", "severe")
    assert_no_crash(result)
    assert result.exit_code == 2


# --------------------------------------------------------------------------- end to end, real process


def _fedguard_command() -> list[str]:
    script = Path(sys.executable).with_name("fedguard")
    return [str(script)] if script.exists() else [sys.executable, "-m", "fedguard.cli"]


def _run(args, cwd):
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE")}
    return subprocess.run(_fedguard_command() + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_end_to_end_malicious_pickle(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "global.pt"
    torch.save({"payload": SystemPayload(target), "fc.weight": torch.ones(2, 2)}, path)
    proc = _run(["inspect", str(path), "--format", "json"], tmp_path)
    assert not target.exists()
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == ""
    report = json.loads(proc.stdout)
    assert [f["rule_id"] for f in report["findings"]] == ["FG001"]


def test_a_stdout_in_a_legacy_encoding_gets_ascii_look_alikes(high_model, tmp_path):
    """Windows writes a redirected stdout in its code page (cp1252) with strict errors: the table's rules and a
    rule's '≥' had ended the command with exit 3 and no report."""
    env = {**os.environ, "PYTHONIOENCODING": "cp1252"}
    rules = subprocess.run([sys.executable, "-m", "fedguard", "rules"], env=env, capture_output=True, timeout=120)
    assert rules.returncode == 0 and rules.stderr == b"", rules.stderr
    assert "(D-SNR >= 2)" in rules.stdout.decode("cp1252")
    report = subprocess.run([sys.executable, "-m", "fedguard", "inspect", str(high_model)], env=env,
                            capture_output=True, timeout=120)  # fmt: skip
    assert report.returncode == 1 and report.stderr == b"", report.stderr
    text = report.stdout.decode("cp1252")
    assert text.startswith("MALICIOUS") and "-" * 40 in text and "FG502" in text
    page = subprocess.run([sys.executable, "-m", "fedguard", "inspect", str(high_model), "--format", "html"], env=env,
                          capture_output=True, timeout=120)  # fmt: skip
    assert page.returncode == 1 and "<meta charset=\"utf-8\">" in page.stdout.decode("utf-8")  # the page as it declares
    assert "fedguard inspect \u2014 high.pt" in page.stdout.decode("utf-8")
    named = tmp_path / "\u6a21\u578b \u00fc.pt"  # a name cp1252 cannot write in full: escaped, not '?'
    named.write_bytes(high_model.read_bytes())
    text = subprocess.run([sys.executable, "-m", "fedguard", "inspect", str(named)], env=env, capture_output=True,
                          timeout=120).stdout.decode("cp1252")  # fmt: skip
    assert "\\u6a21\\u578b \u00fc.pt" in text.splitlines()[0] and "?" not in text.splitlines()[0]


def test_end_to_end_input_error(tmp_path):
    (tmp_path / "trunc.pt").write_bytes(b"PK\x03\x04" + b"\0" * 60)
    proc = _run(["inspect", "trunc.pt"], tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("fedguard: error: "), proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["inspect", "model.pt", "--format", "bogus"], "Invalid value for '--format'"),
        (["audit", "--data", "digits"], "Missing option '--arch'"),
        (["disaggregate", "--users", "many"], "Invalid value for '--users'"),
        (["no-such-command"], "No such command"),
        (["--bogus"], "No such option '--bogus'"),
        (["--version=3"], "does not take a value"),
    ],
)
def test_option_errors_are_one_line(args, message):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedguard: error: ") and message in lines[0]
    assert "--help'" in lines[0]


def test_names_from_the_model_file_cannot_drive_the_terminal(workdir):
    """A tensor name with a newline, ESC sequences or a bidi override is shown escaped in the text report."""
    evil = "fc\n\x1b[2J\x1b]0;owned\x07\u202e\u2028.weight"
    torch.save({evil: torch.full((3, 4), float("nan")), "fc.bias": torch.zeros(3)}, workdir / "names.pt")  # FG002 names it
    result = invoke("inspect", workdir / "names.pt")
    assert_no_crash(result)
    assert not any(c in result.output for c in "\x1b\u202e\x07\u2028")
    assert "\\x1b[2J" in result.output  # shown, not acted on
    assert not any(line.startswith("\x1b[2J") or line.startswith(".weight") for line in result.output.splitlines())
    for fmt in ("json", "sarif"):  # read with `jq -r` and shown by CI logs: their strings are shown escaped too
        strings = json.dumps(json.loads(invoke("inspect", workdir / "names.pt", "--format", fmt).stdout), ensure_ascii=False)
        assert not any(c in strings for c in "\x1b\u202e\x07\u2028") and "\\\\x1b[2J" in strings, fmt
    page = invoke("inspect", workdir / "names.pt", "--format", "html").stdout  # the name reads as in the text report
    assert "fc\\n\\x1b[2J" in page and "fc\n" not in page


def test_a_detector_named_twice_runs_once(high_model):
    report = json.loads(invoke("inspect", high_model, "--detector", "magnitude", "--detector", "magnitude", "--format", "json").stdout)
    assert report["detectors_run"] == ["magnitude"] and len(report["findings"]) == len({f["layer"] for f in report["findings"]})


def test_ctrl_c_while_the_command_line_loads_exits_130_without_a_traceback(clean_model):
    """Importing torch takes about a second; a Ctrl-C then is a clean stop, like one during the work."""
    import signal
    import time

    process = subprocess.Popen([sys.executable, "-m", "fedguard", "inspect", str(clean_model)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert "Traceback" not in err, err
    assert process.returncode in (0, 130) and (process.returncode == 0 or "interrupted" in err)


def test_sigterm_while_writing_leaves_no_temporary_file_and_is_not_taken_for_the_models_own_exit(workdir, monkeypatch):
    """SIGTERM (timeout, systemd, docker stop) had ended the process by the signal's default, leaving an 879 MB
    temporary file of a crafted model behind. The console script's handler raises Terminated: every cleanup runs, and
    the guards that turn a model's own sys.exit() into an input error let it through."""
    import fedguard.io
    from fedguard.__main__ import _terminated
    from fedguard.attacks import craft as craft_module
    from fedguard.errors import Terminated

    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        monkeypatch.setattr(fedguard.io.os, "fsync", lambda fd: os.kill(os.getpid(), signal.SIGTERM))
        with pytest.raises(Terminated):
            fedguard.io.write_atomic(workdir / "model.pt", b"x" * 1024)
        assert list(workdir.iterdir()) == []

        def terminated(model, **kwargs):
            os.kill(os.getpid(), signal.SIGTERM)

        monkeypatch.setattr(craft_module, "get_crafter", lambda name: terminated)
        with pytest.raises(Terminated):
            craft_module.craft("mkor", nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), input_shape=(1, 2, 2), num_classes=2)
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_demo_names_a_folder_it_cannot_write_into(workdir, monkeypatch):
    """An existing folder that takes no files (read-only, immutable) is named as such, not as one to create."""
    (workdir / "locked").mkdir()

    def refused(self, *args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(Path, "mkdir", refused)
    line = assert_input_error(invoke("demo", "--output-dir", workdir / "locked"))
    assert "locked takes no new files (Operation not permitted)" in line and "fix its permissions" in line


def test_demo_names_a_file_where_its_models_folder_goes(workdir):
    (workdir / "out").mkdir()
    (workdir / "out" / "models").write_text("my notes")
    line = assert_input_error(invoke("demo", "--output-dir", workdir / "out"))
    assert "holds a file named models" in line and (workdir / "out" / "models").read_text() == "my notes"


@pytest.mark.parametrize("name", ["summary.html", "imprint-mlp.json", "models/trojan-lenet5.pt"])
def test_demo_names_a_folder_where_it_writes_a_file(workdir, name):
    """The output check had named the folder as the --output-dir and asked for a file inside it."""
    (workdir / "out" / name).mkdir(parents=True)
    line = assert_input_error(invoke("demo", "--output-dir", workdir / "out"))
    assert line.endswith(f"--output-dir {workdir / 'out'} holds a folder {workdir / 'out' / name} where the demo writes "
                         "a file; choose another --output-dir or move the folder")  # fmt: skip


def test_an_interrupted_demo_leaves_no_empty_folders_it_made(workdir, monkeypatch):
    import fedguard.demo

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(fedguard.demo, "_write_models", interrupted)
    for folder in ("fresh/nested", "kept"):
        (workdir / "kept").mkdir(exist_ok=True)
        with pytest.raises(KeyboardInterrupt):
            fedguard.demo.run_demo(folder, echo=lambda line: None)
    assert not (workdir / "fresh").exists() and (workdir / "kept").is_dir() and not (workdir / "kept" / "models").exists()


def test_demo_leaves_a_page_it_did_not_write(workdir):
    """The demo replaces its own summary.html on a rerun, never one of yours (refused before any work): nor a report
    of yours that inspect wrote there (any fedguard report had been taken for the demo's)."""
    (workdir / "out").mkdir()
    (workdir / "out" / "summary.html").write_text("my page")
    line = assert_input_error(invoke("demo", "--output-dir", workdir / "out"))
    assert "no earlier demo wrote" in line and (workdir / "out" / "summary.html").read_text() == "my page"
    torch.save(tiny_state_dict(), workdir / "mine.pt")
    assert invoke("inspect", workdir / "mine.pt", "--format", "html", "-o", workdir / "out" / "summary.html", "--force").exit_code == 0
    kept = (workdir / "out" / "summary.html").read_bytes()
    assert "no earlier demo wrote" in assert_input_error(invoke("demo", "--output-dir", workdir / "out"))
    assert (workdir / "out" / "summary.html").read_bytes() == kept


def test_demo_leaves_models_and_reports_it_did_not_write(workdir):
    """Your files under the demo's names are refused before any work (no models/ folder left behind); an earlier
    demo's own files are replaced on a rerun."""
    from fedguard.demo import MODEL_FILES

    (workdir / "mine" / "models").mkdir(parents=True)
    (workdir / "mine" / "models" / "mkor-lenet5.pt").write_bytes(b"my model")
    line = assert_input_error(invoke("demo", "--output-dir", workdir / "mine"))
    assert "which no earlier demo wrote" in line and (workdir / "mine" / "models" / "mkor-lenet5.pt").read_bytes() == b"my model"
    (workdir / "json").mkdir()
    (workdir / "json" / "imprint-mlp.json").write_text('{"mine": 1}')
    line = assert_input_error(invoke("demo", "--output-dir", workdir / "json"))
    assert "which no earlier demo wrote" in line and (workdir / "json" / "imprint-mlp.json").read_text() == '{"mine": 1}'
    assert not (workdir / "json" / "models").exists()
    (workdir / "reports").mkdir()  # a report of yours that inspect wrote, with no demo's summary beside it
    torch.save(tiny_state_dict(), workdir / "mine.pt")
    assert invoke("inspect", workdir / "mine.pt", "--format", "json", "-o", workdir / "reports" / "benign-lenet5.json").exit_code == 0
    kept = (workdir / "reports" / "benign-lenet5.json").read_bytes()
    line = assert_input_error(invoke("demo", "--output-dir", workdir / "reports"))
    assert "which no earlier demo wrote" in line and (workdir / "reports" / "benign-lenet5.json").read_bytes() == kept
    assert "--output-dir is empty; name a folder" in assert_input_error(invoke("demo", "--output-dir", ""))

    runs = []
    for _ in range(2):  # the second run replaces the first one's files, with the same bytes (the trojan's too)
        result = invoke("demo", "--output-dir", workdir / "demo")
        assert result.exit_code == 0, result.output
        runs.append({p.name: p.read_bytes() for p in (workdir / "demo" / "models").iterdir()})
    assert runs[0] == runs[1]
    assert "MALICIOUS" in result.output and (workdir / "demo" / "summary.html").is_file()
    assert result.output.splitlines()[-1] == "Every verdict as expected: the 2 honest models clean, the 8 others malicious."
    page = (workdir / "demo" / "summary.html").read_text(encoding="utf-8")
    assert "honest LeNet-5, trained 2 epochs on digits" in page  # which models are meant to be benign
    assert "not loaded (it would run code)" in page  # the trojan's parameters are not counted as 0
    # what was inspected and how to read a verdict, before the table (the page had started with the table)
    assert "fedguard inspected 10 global models" in page and "2 honest and 8 that a malicious server" in page
    assert "Outcome: Every verdict as expected" in page
    assert "on 64 real handwritten digits" in page and "which does not prove the model safe" in page
    assert sorted(p.name for p in (workdir / "demo" / "models").iterdir()) == sorted(MODEL_FILES)  # the names checked first
    (workdir / "demo" / "benign-lenet5.json").write_text("my notes")
    assert "which no earlier demo wrote" in assert_input_error(invoke("demo", "--output-dir", workdir / "demo"))
    mine = ("inspect", workdir / "mine.pt", "--format", "json", "-o", workdir / "demo" / "benign-lenet5.json", "--force")
    assert invoke(*mine).exit_code == 0  # a report of yours under a demo's name, beside the demo's summary
    assert "which no earlier demo wrote" in assert_input_error(invoke("demo", "--output-dir", workdir / "demo"))
    (workdir / "demo" / "benign-lenet5.json").unlink()  # your report gone, and the model it stood beside
    (workdir / "demo" / "models" / "benign-lenet5.pt").unlink()
    mkor = workdir / "demo" / "models" / "mkor-lenet5.pt"
    torch.save(tiny_state_dict(), mkor)  # your model under a demo's name beside the demo's report: it had been replaced
    line = assert_input_error(invoke("demo", "--output-dir", workdir / "demo"))
    assert f"already holds {mkor}, which no earlier demo wrote" in line and mkor.read_bytes() != runs[0][mkor.name]


def test_demo_refuses_a_link_under_a_models_name_before_any_work(workdir):
    """A link in the models folder, even one leading nowhere yet, would have the demo write its model through it,
    wherever it leads: refused before any work, the link and where it leads left alone."""
    (workdir / "out" / "models").mkdir(parents=True)
    link = workdir / "out" / "models" / "mkor-lenet5.pt"
    link.symlink_to(workdir / "elsewhere.pt")
    line = assert_input_error(invoke("demo", "--output-dir", workdir / "out"))
    assert f"already holds {link}, which no earlier demo wrote" in line
    assert link.is_symlink() and not (workdir / "elsewhere.pt").exists()
    assert sorted(p.name for p in (workdir / "out").iterdir()) == ["models"]


def test_demo_names_an_output_dir_that_is_a_file(workdir):
    (workdir / "notes").write_text("mine")
    line = assert_input_error(invoke("demo", "--output-dir", workdir / "notes"))
    assert f"--output-dir {workdir / 'notes'} exists and is not a folder; choose another path" in line


def test_an_interrupted_rerun_of_the_demo_keeps_the_models_the_earlier_demo_wrote(workdir, monkeypatch):
    """Only the models this run wrote and did not report on are removed; the earlier demo's, with their reports, stay."""
    import fedguard.demo

    fedguard.demo.run_demo("demo", echo=lambda line: None)
    before = {p.name: p.read_bytes() for p in (workdir / "demo" / "models").iterdir()}

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(fedguard.demo, "_write_models", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fedguard.demo.run_demo("demo", echo=lambda line: None)
    assert {p.name: p.read_bytes() for p in (workdir / "demo" / "models").iterdir()} == before


def test_the_demo_trains_its_honest_model_alike_on_any_number_of_cores(digits):
    """Two threads had rounded the training's sums otherwise: other weights, other crafted models, one finding more
    on one of them (a reproducibility review). The demo trains on one thread, and leaves the caller's setting."""
    from fedguard.demo import SHAPE, _train_benign

    x, y = torch.nn.functional.interpolate(digits[0][:256], size=SHAPE[1:]), digits[1][:256]
    before = torch.get_num_threads()
    weights = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            weights.append(_train_benign(x, y, seed=0).state_dict())
        finally:
            torch.set_num_threads(before)
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert torch.get_num_threads() == before


def test_a_demo_verdict_not_as_expected_is_named_and_exits_1(workdir, monkeypatch):
    """The demo checks its own verdicts: a crafted model an inspection calls clean is a failure, not a line to
    overlook in the table."""
    import fedguard.demo
    from fedguard.types import Verdict

    def one_model(folder, inputs, labels):
        path = folder / "mkor-lenet5.pt"
        torch.save(tiny_state_dict(), path)
        return [fedguard.demo.DemoModel("a crafted model that is not", path, {}, Verdict.MALICIOUS)]

    monkeypatch.setattr(fedguard.demo, "_write_models", one_model)
    result = invoke("demo", "--output-dir", workdir / "demo")
    assert_no_crash(result)
    assert result.exit_code == 1, result.output
    assert result.output.splitlines()[-1] == "not as expected: mkor-lenet5.pt reads clean, where it should read malicious"


def test_an_interrupted_demo_leaves_no_models_it_did_not_report_on(workdir, monkeypatch):
    """Models written before the inspections, then Ctrl-C: a rerun had refused them as files no demo wrote."""
    import fedguard.demo
    import fedguard.inspect

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fedguard.inspect, "inspect_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fedguard.demo.run_demo(workdir / "demo", echo=lambda line: None)
    assert not (workdir / "demo").exists()


def test_only_fedguard_reports_count_as_fedguard_reports(clean_model, workdir):
    """Files that merely mention fedguard, or start like another tool's log, are the user's and stay."""
    from fedguard.io import is_fedguard_report

    lookalikes = {
        "package.json": '{\n  "name": "fedguard",\n  "version": "1.0.0"\n}\n',
        "jest.log": "PASS  src/app.test.js\n  ok\n",
        "notes.txt": 'a report says "tool": {"name": "fedguard"} and CLEAN  x.pt  (sha256 0123456789ab…, 1 layer)\n',
    }
    for name, text in lookalikes.items():
        (workdir / name).write_text(text)
        assert not is_fedguard_report(workdir / name), name
        assert "--force" in assert_input_error(invoke("inspect", clean_model, "-o", workdir / name))
        assert (workdir / name).read_text() == text
    (workdir / "notes.md").write_text(lookalikes["notes.txt"])  # a document no command writes: refused by its name
    assert "writes no Markdown report" in assert_input_error(invoke("inspect", clean_model, "-o", workdir / "notes.md"))
    (workdir / "loop").symlink_to("loop")
    assert "loops" in assert_input_error(invoke("inspect", clean_model, "-o", workdir / "loop"))


def test_names_that_are_not_utf8_are_escaped_in_every_report_or_refused(workdir):
    """A lone surrogate (a file name's byte that is not UTF-8, or a key written so) had crashed every report
    writer with a traceback and exit 1, which reads as 'findings'."""
    w = torch.full((64, 64), 1 / 64)
    torch.save({"\udcff.weight": w, "\udcff.bias": torch.linspace(-1, 1, 64)}, workdir / "odd.pt")
    for fmt in ("text", "json", "sarif", "html"):
        result = invoke("inspect", "odd.pt", "--format", fmt, "-o", f"r.{fmt}")
        assert result.exit_code == 1, result.output  # the averaging rows are found
        written = (workdir / f"r.{fmt}").read_text(encoding="utf-8")
        assert "\\udcff" in written
        if fmt in ("json", "sarif"):  # valid UTF-8 once parsed: jq had refused the lone surrogate's escape
            json.dumps(json.loads(written), ensure_ascii=False).encode("utf-8")
    torch.save(tiny_state_dict(), workdir / "m\udcff.pt")
    result = invoke("inspect", "m\udcff.pt")
    assert result.exit_code == 2 and "m\\xff.pt is not UTF-8; rename it" in result.output
    assert invoke("audit", "--arch", "lenet", "--data", "d\udcff").exit_code == 2


def test_usage_errors_show_control_characters_as_escapes(clean_model):
    result = invoke("inspect", clean_model, "extra\x1b]0;title\x07\n[high] forged\u202e")
    assert result.exit_code == 2 and "\x1b" not in result.output and "\u202e" not in result.output
    assert result.output.count("\n") == 1 and "extra\\x1b]0;title\\x07" in result.output
    from fedguard.reports.base import printable

    assert printable("fc\U000e0041\u00ad\u3164\ufe0f") == "fc\\U000e0041\\xad\\u3164\\ufe0f"


def test_a_safetensors_file_beyond_memory_is_refused_as_too_large_not_corrupt(workdir, monkeypatch):
    """Its tensors are read whole into memory: a 30 GB file had been called corrupt ("unable to mmap ... Cannot
    allocate memory")."""
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(512, 1024)}, str(workdir / "big.safetensors"))  # 2 MiB
    monkeypatch.setattr("fedguard.io.physical_memory", lambda: 2**20)  # a machine of 1 MiB
    line = assert_input_error(invoke("inspect", workdir / "big.safetensors"))
    assert "big.safetensors holds 0.0 GiB of tensors, more than this machine's memory" in line


@pytest.mark.parametrize(
    "args, hint",
    [
        (("inspect", "clean.pt", "--arch", "lenett"), "unknown architecture 'lenett' (did you mean 'lenet'?); use one of"),
        (("inspect", "clean.pt", "--arch", "LeNet5"), "(did you mean 'lenet5'?)"),
        (("inspect", "clean.pt", "--arch", "resnet"), "(did you mean 'resnet18'?)"),
        (("inspect", "clean.pt", "--detector", "imprnt"), "unknown detector 'imprnt' (did you mean 'imprint'?); valid:"),
        (("inspect", "clean.pt", "--detector", "FG301"), "FG301 is a rule, not a detector; the imprint detector reports it (`fedguard rules` names each rule's detector)"),
        (("inspect", "clean.pt", "--detector", "averaging-rows"), "averaging-rows is a rule, not a detector; the constant_rows detector reports it"),
        (("inspect", "clean.pt", "--detector", "FG001"), "FG001 is checked on every file while loading, by no detector; drop it (it always runs)"),
        (("audit", "--arch", "lenet", "--data", "digit"), "unknown data set 'digit' (did you mean 'digits'?); use one of"),
        (("audit", "--arch", "lenet", "--data", "digits", "--attack", "idgl"), "unknown attack 'idgl' (did you mean 'idlg'?)"),
    ],
)
def test_a_near_miss_of_a_name_is_suggested(clean_model, args, hint):
    assert hint in assert_input_error(invoke(*args))


def test_no_suggestion_for_a_name_near_nothing(clean_model):
    line = assert_input_error(invoke("inspect", "clean.pt", "--arch", "transformer"))
    assert "did you mean" not in line and "use one of lenet" in line


def test_ctrl_c_during_an_inspection_exits_130_not_as_findings(clean_model, monkeypatch):
    """Exit 1 means findings at or above --fail-on: a stopped run must not read as a malicious model."""
    import fedguard.inspect

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fedguard.inspect, "inspect_model", interrupted)
    result = invoke("inspect", str(clean_model))
    assert result.exit_code == 130 and "interrupted" in result.stderr


def test_the_command_lets_torchs_openmp_threads_yield_unless_told_otherwise(monkeypatch):
    """Beside other busy processes torch's threads had spun for their cores (an inspection 4x, an attack's
    iterations 60x slower); the command sets libgomp's spin count before torch loads, and leaves a user's own."""
    from fedguard.__main__ import GOMP_SPIN_COUNT, yielding_openmp

    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    yielding_openmp()
    assert os.environ["GOMP_SPINCOUNT"] == GOMP_SPIN_COUNT
    monkeypatch.setenv("GOMP_SPINCOUNT", "50")
    yielding_openmp()
    assert os.environ["GOMP_SPINCOUNT"] == "50"
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    yielding_openmp()
    assert "GOMP_SPINCOUNT" not in os.environ


def test_fg701_names_the_input_shape_at_which_the_file_fits_a_built_in_architecture(workdir):
    """An honest ResNet-18 built for 224x224 photographs (torchvision's 7x7 stem) against --arch resnet18 at its
    default 3,32,32 (the CIFAR stem) is FG701 with nothing to say that --input-shape 3,224,224 fits it exactly."""
    from fedguard.architectures import build_model

    torch.save(build_model("resnet18", input_shape=(3, 224, 224)).state_dict(), workdir / "imagenet.pt")
    result = invoke("inspect", "imagenet.pt", "--arch", "resnet18", "--format", "json")
    drift = json.loads(result.stdout)["findings"][0]
    assert result.exit_code == 1 and drift["rule_id"] == "FG701"
    assert drift["message"].endswith("The file fits --arch resnet18 --input-shape 3,224,224 exactly (its default is "
                                     "3,32,32): if your federation trains at that size, pass --input-shape 3,224,224.")
    assert invoke("inspect", "imagenet.pt", "--arch", "resnet18", "--input-shape", "3,224,224").exit_code == 0
    line = assert_input_error(invoke("audit", "--model", "imagenet.pt", "--arch", "resnet18", "--data", "digits"))
    assert line.endswith("the file fits --arch resnet18 --input-shape 3,224,224 exactly (its default is 3,32,32): if "
                         "your federation trains at that size, pass --input-shape 3,224,224")  # the audit says so too
    torch.save(build_model("mlp").state_dict(), workdir / "other.pt")  # another network: no size fits, no hint
    assert "--input-shape" not in invoke("inspect", "other.pt", "--arch", "lenet5", "--format", "json").stdout


def test_fg701_names_the_built_in_architectures_the_file_fits(workdir):
    """An honest LeNet-5 against --arch lenet (DLG's net, an easy mix-up) was FG701 with nothing to say which
    architecture the file is. The message names every built-in the file fits (lenet5 and lenet5_sigmoid have the same
    shapes), read as --arch reads a file (a Flower list, a wrapper's prefix), at the --input-shape given; the audit's
    refusal says it too, and a refusal for something else (NaN) does not."""
    from fedguard.architectures import build_model

    def message(*args) -> str:
        result = invoke("inspect", *args, "--detector", "architecture_drift", "--format", "json")
        drift = json.loads(result.stdout)["findings"][0]
        assert result.exit_code == 1 and drift["rule_id"] == "FG701"
        return drift["message"]

    torch.save(build_model("mlp").state_dict(), workdir / "mlp.pt")
    one = ("the file fits --arch mlp (3-layer MLP, 256 hidden units (the fully connected baseline of DLG-style studies)) "
           "exactly: if that is the architecture you train, pass --arch mlp")
    assert message("mlp.pt", "--arch", "lenet5").endswith(f"T{one[1:]}.")
    assert assert_input_error(invoke("audit", "--model", "mlp.pt", "--arch", "lenet5", "--data", "digits")).endswith(one)
    state = build_model("lenet5").state_dict()
    torch.save(state, workdir / "lenet5.pt")
    np.savez(workdir / "flower.npz", *[v.numpy() for v in state.values()])
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}}, workdir / "wrapped.ckpt")
    both = "fits --arch lenet5 (classic LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling) and --arch lenet5_sigmoid ("
    for name in ("lenet5.pt", "flower.npz", "wrapped.ckpt"):
        assert both in message(name, "--arch", "lenet"), name
    assert "exactly, whose layers have the same shapes: if one of them is the architecture you train, pass it." in message("lenet5.pt", "--arch", "lenet")
    assert both in assert_input_error(invoke("audit", "--model", "flower.npz", "--arch", "lenet", "--data", "digits"))
    # at the --input-shape given no other built-in fits, nor with the wrong class count: no hint
    assert "exactly" not in message("lenet5.pt", "--arch", "lenet", "--input-shape", "3,32,32")
    assert "exactly" not in message("lenet5.pt", "--arch", "lenet5", "--num-classes", "7")
    spoilt = {**state, "classifier.4.weight": torch.full((10, 84), float("nan"))}
    torch.save(spoilt, workdir / "nan.pt")
    assert assert_input_error(invoke("audit", "--model", "nan.pt", "--arch", "lenet5", "--data", "digits")).endswith(
        "holds NaN or infinite values; it cannot be trained or audited: do not train on it, and ask the server to send "
        "the model again")


def test_fg701_says_when_the_file_wraps_the_architecture_beside_added_layers_or_twice(workdir):
    """A crafted model holding the client's architecture under ``model.`` beside an imprint block was told to fix
    --arch, in either order of the two (the class count had been read off the imprint, listed last). It is told
    what the file holds; a checkpoint with the model twice (an averaged copy) is told so; a layer of the architecture
    resized is no wrapper."""
    from fedguard.architectures import build_model

    state = {f"model.{k}": v for k, v in build_model("lenet5").state_dict().items()}
    imprint = {"imprint.0.weight": torch.randn(64, 784), "imprint.0.bias": torch.randn(64), "model.imprint.scale": torch.ones(3)}
    said = ("Every layer of --arch is in the file under 'model.' in its shape, beside 3 tensors of layers it does not "
            "have (imprint.0.weight, imprint.0.bias, model.imprint.scale): the model wraps your architecture and adds "
            "layers to it.")
    for name, crafted in (("first.pt", {**imprint, **state}), ("last.pt", {**state, **imprint})):
        torch.save(crafted, workdir / name)
        result = invoke("inspect", name, "--arch", "lenet5", "--format", "json")
        drift = next(f for f in json.loads(result.stdout)["findings"] if f["rule_id"] == "FG701")
        assert result.exit_code == 1 and said in drift["message"] and "fix --arch" not in drift["message"], name
        assert drift["evidence"]["wrapped_under"] == "model." and "exactly" not in drift["message"]
    twice = {**state, **{k.replace("model.", "model_ema.", 1): v for k, v in state.items()}}
    torch.save(twice, workdir / "twice.pt")
    assert ("Every layer of --arch is in the file twice, under 'model.' and under 'model_ema.' (as a training checkpoint "
            "keeps an averaged copy): inspect the weights you will train, saved alone.") in invoke(
        "inspect", "twice.pt", "--arch", "lenet5", "--format", "json").stdout
    resized = {**imprint, **state, "model.classifier.4.weight": torch.randn(10, 85)}  # one layer resized: no longer it
    torch.save(resized, workdir / "resized.pt")
    assert "fix --arch first" in invoke("inspect", "resized.pt", "--arch", "lenet5", "--format", "json").stdout


def test_a_checkpoint_holding_the_network_under_a_wrappers_attribute_reads_as_the_architecture(workdir):
    """A Lightning checkpoint keeps the network under the LightningModule's attribute (``model.conv1.weight``): every
    key had been FG701's 'missing', malicious. Names that are the architecture's behind one prefix are read as its;
    a file with a layer more is still FG701."""
    from fedguard.architectures import build_model

    state = build_model("lenet5").state_dict()
    torch.save({"epoch": 1, "state_dict": {f"model.{k}": v for k, v in state.items()}}, workdir / "last.ckpt")
    assert invoke("inspect", "last.ckpt", "--arch", "lenet5", "--reference", "last.ckpt").exit_code == 0
    audited = invoke("audit", "--model", "last.ckpt", "--arch", "lenet5", "--data", "digits", "--attack", "label_counts",
                     "--no-exposure", "--format", "json")  # fmt: skip
    assert audited.exit_code == 0 and json.loads(audited.stdout)["model"]["path"] == "last.ckpt"
    extra = {**{f"model.{k}": v for k, v in state.items()}, "model.imprint.weight": torch.randn(8, 784)}
    torch.save({"state_dict": extra}, workdir / "more.ckpt")
    result = invoke("inspect", "more.ckpt", "--arch", "lenet5", "--format", "json")
    assert result.exit_code == 1 and json.loads(result.stdout)["findings"][0]["rule_id"] == "FG701"


def test_help_version_and_a_mistyped_command_line_answer_without_loading_torch(tmp_path):
    """Every start had imported torch for the help text (2-3 s here, an error as slow as a run): the commands that
    need it load it when called, and fedguard --help lists them by their docstrings, read without importing them."""
    import inspect

    from fedguard.cli import LAZY_COMMANDS, lazy_summary, main

    probe = ("import sys\nfrom click.testing import CliRunner\nfrom fedguard.cli import main\n"
             "for args in (['--help'], ['--version'], ['inspect'], ['inspect', 'm.pt', '--bogus'], ['inspct']):\n"
             "    CliRunner().invoke(main, args)\n"
             "print('torch' in sys.modules)\n")  # fmt: skip
    run = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})  # fmt: skip
    assert run.returncode == 0 and run.stdout.strip() == "False", run.stderr
    listed = CliRunner().invoke(main, ["--help"]).stdout
    for name in LAZY_COMMANDS:  # the same words as the command's own docstring, once it is loaded
        command = main.get_command(None, name)
        assert lazy_summary(name) == inspect.cleandoc(command.help) and f"  {name} " in listed
    assert "audit" in main.commands and CliRunner().invoke(main, ["audit", "--help"]).exit_code == 0


def test_fg701_stands_for_an_architecture_without_a_default_input_shape(workdir):
    """The input-shape hint had asked such a callable for its default shape and turned FG701 (malicious, exit 1) into
    an input error (exit 2, no report)."""
    (workdir / "plainnet.py").write_text("from torch import nn\n\ndef net(num_classes=10):\n"
                                         "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, num_classes))\n")
    bigger = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
    torch.save(bigger.state_dict(), workdir / "reshaped.pt")
    result = invoke("inspect", "reshaped.pt", "--arch", "plainnet:net", "--format", "json")
    assert result.exit_code == 1 and json.loads(result.stdout)["findings"][0]["rule_id"] == "FG701"


def test_a_prefixed_checkpoint_without_batchnorm_counters_still_reads_as_the_architecture(workdir):
    """Running statistics a file leaves out (num_batches_tracked) are kept as built, with a wrapper's prefix too."""
    from fedguard.architectures import build_model

    state = {f"model.{k}": v for k, v in build_model("resnet18").state_dict().items() if "num_batches_tracked" not in k}
    torch.save({"state_dict": state}, workdir / "resnet.ckpt")
    assert invoke("inspect", "resnet.ckpt", "--arch", "resnet18").exit_code == 0


def test_ctrl_c_held_while_loading_leaves_a_callers_signal_mask_as_it_was():
    """fedguard.cli.main called from Python: an application that had blocked SIGINT found it unblocked."""
    from fedguard.errors import interrupts_held

    if not hasattr(signal, "pthread_sigmask"):
        pytest.skip("no signal masks here")
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        with interrupts_held():
            pass
        assert signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def test_fedguard_help_lists_a_command_whose_source_is_not_shipped(monkeypatch):
    """An install of compiled files alone has no source to read a docstring from: the command is loaded instead (its
    help had been a traceback)."""
    from fedguard import cli

    monkeypatch.setattr(cli, "lazy_summary", lambda name: None)
    result = CliRunner().invoke(cli.main, ["--help"])
    assert result.exit_code == 0 and "disaggregate  Rebuild every user's update" in result.stdout


def test_every_python_package_is_listed_for_the_wheel():
    """pyproject.toml lists the packages by hand (their folders are mapped: fedguard.attacks is attacks/): a new
    subpackage left out of the list installs without its code. Every folder with an __init__.py is listed."""
    import tomllib

    with open("pyproject.toml", "rb") as f:
        setuptools = tomllib.load(f)["tool"]["setuptools"]
    found = set()
    for package, folder in setuptools["package-dir"].items():
        for init in Path(folder).rglob("__init__.py"):
            found.add(".".join([package, *init.parent.relative_to(folder).parts]))
    assert "fedguard.attacks.craft" in found and found <= set(setuptools["packages"]), found - set(setuptools["packages"])
