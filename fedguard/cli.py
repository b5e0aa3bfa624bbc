"""The ``fedguard`` command line.

Exit codes: 0 = nothing at or above ``--fail-on``; 1 = findings at or above
it; 2 = usage or input error (one line on stderr saying what to do); 3 = a
fault in fedguard (an internal error, not a verdict); 130 = Ctrl-C and 143 =
SIGTERM (partial results kept where the command can, no half-written file).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import sys

import click

import fedguard
from fedguard.errors import COMMAND_LINE, InputError, first_line, interrupts_held, one_line, out_of_memory
from fedguard.options import (
    OUTPUT_FILE, SEED, LazyHelp, NamedPath, TorchCommand, format_suffixes, input_paths, note_unmatched_ignores,
    colour_report, live_terminal, print_report, refuse_unused, resolve_format, silence_stdout, terminal_columns,
    user_code_prints_to_stderr,
)
from fedguard.types import Severity

SEVERITIES = [str(s) for s in Severity]
EXIT_OK, EXIT_FINDINGS, EXIT_INPUT, EXIT_INTERNAL = 0, 1, 2, 3


#: What to make smaller when a command runs out of memory. A model or rounds file can declare tensors far larger
#: than itself (compressed .npz members, stride-0 tensors), so its size on disk is no guide.
OUT_OF_MEMORY_FIX = {
    "audit": "use a smaller --input-shape, --batch-size, --num-classes or data set",
    "inspect": "the file's tensors (as it declares them, which can be far more than its size) do not fit; check the file",
    "disaggregate": "the rounds file's arrays (as it declares them) do not fit; use fewer rounds or entries per update",
    "craft": "use a smaller model, --input-shape or crafter options",
    "demo": "close other programs",
}


#: Commands whose modules load when the command is called, not when ``fedguard`` starts (they import torch and the
#: attacks): ``fedguard --help``, ``--version`` and a mistyped command line answer in a fraction of a second
#: instead of the 2-3 s torch takes to import. Name -> (module, command function).
LAZY_COMMANDS = {
    "audit": ("fedguard.audit_cli", "audit_command"),
    "craft": ("fedguard.craft_cli", "craft_command"),
    "disaggregate": ("fedguard.disaggregate_cli", "disaggregate_command"),
}


def lazy_summary(name: str) -> str | None:
    """The docstring of the lazy command ``name``, read from its module's source without importing the module; None
    where the install ships no source (compiled files alone)."""
    import ast
    import importlib.util

    module, function = LAZY_COMMANDS[name]
    spec = importlib.util.find_spec(module)
    source = spec.loader.get_source(module) if spec is not None and spec.loader is not None else None
    if source is None:
        return None
    return next((ast.get_docstring(node) or "" for node in ast.walk(ast.parse(source))
                 if isinstance(node, ast.FunctionDef) and node.name == function), None)  # fmt: skip


class FedguardGroup(click.Group):
    """Turns every :class:`InputError` into one line on stderr and exit code 2; loads :data:`LAZY_COMMANDS` when
    called."""

    command_class = TorchCommand

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str):
        if cmd_name in LAZY_COMMANDS and cmd_name not in self.commands:
            module, function = LAZY_COMMANDS[cmd_name]
            with interrupts_held():
                self.add_command(getattr(importlib.import_module(module), function), cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of ``fedguard --help``, the commands not loaded yet by their docstrings."""
        listed = []
        for name in self.list_commands(ctx):
            summary = None if name in self.commands else lazy_summary(name)
            listed.append(click.Command(name, help=summary) if summary is not None else self.get_command(ctx, name))
        click.Group.format_commands(click.Group(commands=listed), ctx, formatter)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """``fedguard``'s own options (``fedguard --bogus``): a usage error in one line, as a command's are; a bare
        ``fedguard`` still shows the help."""
        ctx.meta["fedguard.arguments"] = tuple(args)  # before click takes them apart: the reports record them
        try:
            return super().parse_args(ctx, args)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            _usage_error(exc, ctx)

    def invoke(self, ctx: click.Context):
        # messages name the flags typed, not Python's keyword arguments, and reports say how they were made
        token = COMMAND_LINE.set(("fedguard", *ctx.meta.get("fedguard.arguments", ())))
        try:
            return super().invoke(ctx)
        except InputError as exc:
            from fedguard.reports.base import printable  # names in the message may come from the model file

            click.echo(f"fedguard: error: {printable(str(exc))}", err=True)
            ctx.exit(EXIT_INPUT)
        except click.UsageError as exc:  # an option click itself rejects: one line too, with where to look
            _usage_error(exc, ctx)
        except KeyboardInterrupt:
            click.echo("fedguard: interrupted", err=True)
            ctx.exit(130)
        except BrokenPipeError:  # the reader took what it wanted (``fedguard rules | head -1``): not a failure
            silence_stdout()
            ctx.exit(EXIT_OK)
        except (click.exceptions.Exit, click.ClickException, click.Abort, OSError):
            raise  # click's own ends; an output that failed (a full disk) is __main__'s one line
        except Exception as exc:
            from fedguard.reports.base import printable

            if isinstance(exc, (MemoryError, RuntimeError)) and out_of_memory(exc):  # too large for this machine: not a block
                fix = OUT_OF_MEMORY_FIX.get(ctx.invoked_subcommand or "", "use smaller inputs")
                click.echo(f"fedguard: error: out of memory ({first_line(exc)}); {fix}, or a machine with more memory", err=True)
                ctx.exit(EXIT_INPUT)
            if os.environ.get("FEDGUARD_DEBUG", "") not in ("", "0"):
                raise
            click.echo(f"fedguard: internal error: {printable(first_line(exc))}; a fault in "
                       "fedguard, not a verdict: rerun with FEDGUARD_DEBUG=1 for the traceback and report it", err=True)
            ctx.exit(EXIT_INTERNAL)
        finally:
            COMMAND_LINE.reset(token)


def _usage_error(exc: click.UsageError, ctx: click.Context) -> None:
    """Exit 2 with click's message in one line on stderr, and where to look."""
    from fedguard.reports.base import printable  # an argument or a path in the message is the user's

    command = exc.ctx.command_path if exc.ctx is not None else "fedguard"
    message = printable(one_line(exc.format_message()).rstrip("."))
    where = f"see '{command} --help'"
    tail = f" ({where})" if message.endswith("?") else f"; {where}"  # "Did you mean 'inspect'?; see" had read oddly
    click.echo(f"fedguard: error: {message}{tail}", err=True)
    ctx.exit(EXIT_INPUT)


@click.group(cls=FedguardGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(fedguard.__version__, "--version", prog_name="fedguard")
def main() -> None:
    """Client-side defensive auditing for federated learning.

    Inspect a received global model for parameters planted to leak your data
    before you train on it, audit what your pending update leaks, and see
    whether secure aggregation hides it across rounds.
    """


def _architecture_help() -> str:
    from fedguard.architectures import ARCHITECTURES

    return "Expected architecture: " + ", ".join(ARCHITECTURES.names()) + ", or package.module:callable."


def _detector_list() -> list[str]:
    from fedguard.detectors import DETECTORS

    return DETECTORS.names()


def _formats() -> dict[str, str]:
    from fedguard.reports import RENDERERS

    return format_suffixes(RENDERERS)


@main.command("inspect")
@click.argument("model", type=NamedPath(dir_okay=True))
@click.option("--arch", metavar="NAME|module:callable", cls=LazyHelp, describe=_architecture_help)
@click.option("--num-classes", type=click.IntRange(min=1), help="Classes of --arch (default: read off the model's head).")
@click.option("--input-shape", metavar="C,H,W", help="Input shape of --arch (default: the architecture's own).")
@click.option("--reference", type=NamedPath(), help="Last round's global model, to detect drift.")
@click.option("--data", metavar="SPEC", help="Your own data for behavioural checks (needs --arch): a folder, an .npz with x and y, or the built-in digits or images; of the kind you train on (an honest digit model read on photographs can read as planted, FG803).")
@click.option("--detector", "detectors", multiple=True, metavar="NAME", cls=LazyHelp, describe=lambda: "Run only this detector (repeatable): " + ", ".join(_detector_list()) + ". `fedguard rules` names the detector of each rule.")
@click.option("--ignore", multiple=True, metavar="RULE[:LAYER]", help="Accept this rule's findings (repeatable): RULE anywhere, or RULE:LAYER in that layer and what is under it, e.g. FG301:features.0. Reported apart, not judged: the verdict and exit code follow the rest. FG001 cannot be ignored.")
@click.option("--format", "fmt", type=click.Choice(list(_formats()), case_sensitive=False), help="Output format (default: the one --output's extension names, else text).")
@click.option("-o", "--output", type=OUTPUT_FILE, help="Write the report here (atomically, mode 0600) instead of stdout.")
@click.option("--fail-on", type=click.Choice(SEVERITIES, case_sensitive=False), default="medium", show_default=True, help="Exit 1 when a finding is at or above this severity.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed for data sampling.")
@click.option("--force", is_flag=True, help="Replace an existing --output that is not a report fedguard wrote (its own reports are replaced without it).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing; rely on the exit code (and --output).")
def inspect_command(model, arch, num_classes, input_shape, reference, data, detectors, ignore, fmt, output, fail_on, seed, force, quiet):
    """Inspect MODEL, a received global model, for planted leakage parameters.

    Reads .pt/.pth/.bin/.ckpt/.tar state_dicts, .safetensors and .npz (named arrays or
    a Flower list of ndarrays) without ever executing code from the file.
    """
    from fedguard.architectures import parse_input_shape
    from fedguard.inspect import inspect_model, rules
    from fedguard.io import check_output_path, write_atomic
    from fedguard.reports import render
    from fedguard.reports.base import laid_out_for, printable
    from fedguard.reports.grids import remove_stale_grids

    refuse_unused(arch is None, ("num_classes", "input_shape"), "describes --arch, which is not given; add --arch")
    refuse_unused(data is None, ("seed",), "seeds the sample of --data, which is not given; add --data")
    refuse_unused(output is None, ("force",), "replaces an existing --output, which is not given; add -o FILE")
    formats = _formats()
    fmt = resolve_format(fmt, output, formats)
    shape = parse_input_shape(input_shape) if input_shape is not None else None
    with user_code_prints_to_stderr():
        inputs = input_paths(model, reference, data=data, arch=arch)
        if output is not None:
            check_output_path(output, inputs=inputs, force=force, example=f"report{formats[fmt]}")
        with _status(show=not quiet and live_terminal(sys.stderr)) as progress:
            report = inspect_model(
                model, arch=arch, num_classes=num_classes, input_shape=shape, reference=reference,
                data=data, detectors=detectors or None, seed=seed, progress=progress, ignore=ignore,
            )
    report = dataclasses.replace(report, config={**report.config, "fail_on": fail_on})  # what the exit code follows
    if reference is not None and report.config.get("reference_sha256") == report.sha256 and not quiet:
        click.echo(printable(f"fedguard: note: --reference {reference} has the same contents as {model} (one SHA-256): "
                             "nothing can have moved between them; pass last round's model"), err=True)  # fmt: skip
    if not quiet:
        note_unmatched_ignores(report.ignore_unmatched)
    color = colour_report(output, fmt)
    with laid_out_for(terminal_columns(output)):
        text = render(fmt, report, rules(), color=color)
    if output is not None:
        write_atomic(output, text)
        remove_stale_grids(output)  # an audit report it replaced leaves no images of its batch beside this one
        if not quiet:
            click.echo(printable(f"{report.verdict}: report written to {output}"), err=True)
    elif not quiet:
        print_report(text, utf8=fmt == "html")
    failing = report.at_or_above(Severity.parse(fail_on))
    sys.exit(EXIT_FINDINGS if failing else EXIT_OK)


@contextlib.contextmanager
def _status(show: bool, console=None):
    """A spinner on stderr (or ``console``) naming the step under way and the time so far (gone when the work ends),
    and the callback that names the next step; None when not shown."""
    if not show:
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from fedguard.reports.base import printable

    columns = (SpinnerColumn(), TextColumn("inspect: {task.description}", markup=False), TimeElapsedColumn())  # a path
    # such as d[/x].pt is no markup
    with Progress(*columns, console=console or Console(stderr=True), transient=True) as bar:
        task = bar.add_task("starting", total=None)
        yield lambda step: bar.update(task, description=printable(step))


@main.command("rules")
@click.option("--format", "fmt", type=click.Choice(["text", "json"], case_sensitive=False), default="text", show_default=True,
              help="json: a list of every rule's rule_id, name, summary, help, reference, url and detector (null for "
                   "FG001, which loading checks), for scripts.")
def rules_command(fmt):
    """List every rule fedguard reports, with its paper and the detector that reports it."""
    from fedguard.detectors import detector_of
    from fedguard.inspect import rules

    detectors = detector_of()
    if fmt == "json":
        listed = [{**dataclasses.asdict(rule), "detector": detectors.get(rule_id)} for rule_id, rule in rules().items()]
        click.echo(json.dumps(listed, indent=2, ensure_ascii=False))
        return
    for rule_id, rule in rules().items():
        click.echo(f"{rule_id}  {rule.name:<26} {rule.summary}")
        click.echo(f"       {rule.reference}")
        if rule.url:
            click.echo(f"       {rule.url}")
        click.echo(f"       --detector {detectors[rule_id]}" if rule_id in detectors else "       (no detector: checked on every file while loading)")


@main.command("demo")
@click.option("--output-dir", type=click.Path(), default="demo-output", show_default=True,
              help="Folder for the crafted models and the HTML summary (created if missing; the demo's own files in it are replaced on each run).")
def demo_command(output_dir):
    """Craft malicious and benign models on built-in data, inspect each, write an HTML summary.

    Exit status: 0 when every model reads as it should (the honest ones clean, the crafted ones malicious), 1 when
    one does not, 2 on bad input.
    """
    from fedguard.demo import run_demo

    if any(report.verdict != model.expected for model, report in run_demo(output_dir, echo=click.echo)):
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
