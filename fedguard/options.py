"""What the commands share: click types for seeds and finite number ranges, options given where they do nothing, and the
paths of the user's inputs."""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import sys
from pathlib import Path
from typing import Mapping

import click
from click.core import ParameterSource

from fedguard.checks import MAX_SEED, utf8_path
from fedguard.errors import InputError, interrupts_held

#: Seeds numpy's and torch's generators both take.
SEED = click.IntRange(0, MAX_SEED)


def refuse_unused(unused: bool, names: tuple[str, ...], why: str) -> None:
    """InputError when ``unused`` and one of the options ``names`` was given, so it would silently do nothing."""
    ctx = click.get_current_context()
    given = [n for n in names if ctx.get_parameter_source(n) not in (None, ParameterSource.DEFAULT)]
    if unused and given:
        opts = next((p.opts for p in ctx.command.params if p.name == given[0]), ["--" + given[0].replace("_", "-")])
        option = max(opts, key=len)  # --set for the parameter settings, --output rather than -o
        raise InputError(f"{option} {why}, or drop {option}")


class TorchCommand(click.Command):
    """A command that loads torch with Ctrl-C held back before it runs (after its command line parsed: its --help
    and usage errors need none of it), and refuses an option of one value given twice."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        refuse_repeated(ctx, args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        with interrupts_held():
            importlib.import_module("torch")
        return super().invoke(ctx)


def refuse_repeated(ctx: click.Context, args: list[str]) -> None:
    """UsageError when an option that takes one value is given twice: click keeps the last in silence, and
    ``inspect --arch lenet5 --arch mlp`` had judged a LeNet-5 file against an MLP (FG701, malicious).

    ``args`` are read as click reads them: ``--opt=value``, a group of short options whose last may take the rest of
    its token or the next one (``-qo out.json``, ``-oout.json``), every option's value skipped whether it may repeat
    or not; nothing after ``--``; nothing at all when the help is asked for or click completes a command line.
    """
    before = args[: args.index("--")] if "--" in args else args
    if ctx.resilient_parsing or any(token in ctx.help_option_names for token in before):
        return  # click completes the line, or shows the help whatever else the line holds
    options = {opt: param for param in ctx.command.params if isinstance(param, click.Option)
               for opt in (*param.opts, *param.secondary_opts)}  # fmt: skip
    seen: dict[str, str | None] = {}
    position = 0

    def value(attached: str) -> str | None:
        nonlocal position
        if attached:
            return attached
        position += 1
        return args[position - 1] if position <= len(args) else None

    while position < len(args) and args[position] != "--":
        token = args[position]
        position += 1
        given: list[tuple[str, click.Option, str | None]] = []
        if token.startswith("--"):
            name, equals, attached = token.partition("=")
            param = options.get(name)
            if param is not None and not (param.is_flag or param.count):
                given.append((name, param, attached if equals else value("")))
        elif token.startswith("-") and len(token) > 1:
            for at, letter in enumerate(token[1:], start=2):
                param = options.get("-" + letter)
                if param is None:
                    break  # not an option of this command: click says so
                if not (param.is_flag or param.count):
                    given.append(("-" + letter, param, value(token[at:])))
                    break
        for name, param, text in given:
            if param.multiple:
                continue
            if param.name in seen:
                raise click.UsageError(f"{name} is given twice ({seen[param.name]!r} and {text!r}); give it once", ctx=ctx)
            seen[param.name] = text


class LazyHelp(click.Option):
    """An option whose help text is ``describe()``, made when the help is shown: text that lists a registry's names
    (architectures, detectors) would otherwise import torch to start every command, ``--help`` and errors alike."""

    def __init__(self, *args, describe, **kwargs):
        super().__init__(*args, **kwargs)
        self.describe = describe

    def get_help_record(self, ctx: click.Context):
        self.help = self.describe()
        return super().get_help_record(ctx)


class FiniteFloatRange(click.FloatRange):
    """:class:`click.FloatRange` that also refuses ``nan`` and ``inf`` (which compare false to every bound)."""

    name = "finite float range"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class NamedPath(click.Path):
    """:class:`click.Path` giving a :class:`~pathlib.Path` that refuses an empty name, which ``Path("")`` would
    silently read as the current folder."""

    def __init__(self, **kwargs):
        super().__init__(**{"path_type": Path, **kwargs})

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("the path is empty; name a file", param, ctx)
        if isinstance(value, str):
            try:
                utf8_path(value, "the file")
            except InputError as exc:
                self.fail(str(exc), param, ctx)
            if self.readable and os.path.exists(value) and not os.access(value, os.R_OK):  # click's says no fix
                self.fail(f"{value} is not readable (permission denied); check its permissions", param, ctx)
        return super().convert(value, param, ctx)


class OutputFile(NamedPath):
    """:class:`click.Path` for a file to write: refuses a name that ends with a slash (a folder, which
    :class:`~pathlib.Path` would silently turn into a file of that name)."""

    def __init__(self, example: str = "report.json", suffix: str | None = None):
        super().__init__(readable=False)  # a folder that exists is refused later, with a fix
        self.example = example  # the file name the message suggests
        self.suffix = suffix  # the one extension the file's format has, when it has one

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.endswith(("/", os.sep)) and value.strip("/" + os.sep):
            self.fail(f"{value} ends with a slash, which names a folder; name a file inside it, e.g. {value}{self.example}",
                      param, ctx)
        if self.suffix is not None and (os.path.normpath(value) == "-" or (  # not renamed: "name it null.npz"
                os.path.exists(value) and not (os.path.isfile(value) or os.path.isdir(value)))):  # /dev/null, a pipe
            self.fail(f"{value} is not a file to write {self.suffix} into; name a file, e.g. {self.example}", param, ctx)
        path = super().convert(value, param, ctx)
        if self.suffix is not None and path.is_dir():  # before the suffix: its fix would name a file beside the folder
            self.fail(f"{value} is a directory; name a file inside it, e.g. {path / self.example}", param, ctx)
        if self.suffix is not None and path.suffix.lower() != self.suffix:
            self.fail(f"{value}: this file is written as {self.suffix}; name it {path.with_suffix(self.suffix).name}", param, ctx)
        return path


#: The type of the options that name a report to write.
OUTPUT_FILE = OutputFile()


def input_paths(*files: str | os.PathLike | None, data: str | None = None, arch: str | None = None) -> list[Path]:
    """Every file or folder a command reads, which no output may overwrite or write into.

    ``files`` are input files as given (None skipped); ``data`` is a ``--data``
    spec (its file or folder when it names one, and the folders its links lead to) and ``arch`` an ``--arch``
    (the module file of a ``module:callable``; a bad ``--arch`` raises
    :class:`~fedguard.errors.InputError` here, before any work).
    """
    from fedguard.architectures import arch_source
    from fedguard.data import data_source, linked_folders

    paths = [Path(f) for f in files if f is not None]
    paths += [data_source(data), *linked_folders(data)]
    if arch is not None:
        paths.append(arch_source(arch))
    return [p for p in paths if p is not None]


def silence_stdout() -> None:
    """Send whatever is still written or buffered for stdout to ``os.devnull``: after a reader went away or a
    write failed, nothing more can arrive, and Python's flush at exit must not raise a second error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (a test runner's buffer)
        sys.stdout = open(os.devnull, "w")


def live_terminal(stream) -> bool:
    """Whether ``stream`` is a terminal that takes colours and redrawn lines: not ``TERM=dumb`` (an editor's shell,
    which had shown the escape codes and the spinner's debris)."""
    return stream.isatty() and os.environ.get("TERM") != "dumb"


def colour_report(output, fmt: str) -> bool:
    """Whether a report goes to stdout in colour: text on a live terminal, unless ``NO_COLOR`` is set."""
    return output is None and fmt == "text" and live_terminal(sys.stdout) and "NO_COLOR" not in os.environ


def terminal_columns(output) -> int | None:
    """The width of the terminal a report printed on stdout goes to, for it to be laid out for; None where it goes to
    ``output`` (a file, laid out alike whatever the window) or stdout is a file or a pipe."""
    import shutil

    return shutil.get_terminal_size().columns if output is None and sys.stdout.isatty() else None


def print_report(text: str, utf8: bool = False) -> None:
    """Print a report on stdout; with ``utf8`` (an HTML page, which declares its charset) as UTF-8 bytes whatever
    the stream's encoding (a stdout in cp1252 had written the page's dashes as bytes no browser reads as UTF-8). A
    reader that stops early (``| head -1``) ends the printing, not the run: the exit code still says the verdict. A
    stdout that cannot take it (a full disk) is one InputError naming ``-o``, not a traceback and not exit 1, which
    means block."""
    try:
        binary = getattr(sys.stdout, "buffer", None) if utf8 else None
        if binary is not None:
            sys.stdout.flush()
            binary.write((text if text.endswith("\n") else text + "\n").encode("utf-8"))
            binary.flush()
        else:
            click.echo(text, nl=not text.endswith("\n"))
        sys.stdout.flush()
    except BrokenPipeError:
        silence_stdout()
    except OSError as exc:
        silence_stdout()
        raise InputError(f"cannot write the report to standard output ({exc.strerror or exc}); write it to a file with -o") from None


#: The extensions of every report format fedguard writes and of documents it writes none of, each with the format it
#: names: an --output whose format the command does not write is refused (a text report had gone silently into out.pdf).
REPORT_SUFFIXES = {".txt": "text", ".json": "JSON", ".html": "HTML", ".htm": "HTML", ".sarif": "SARIF",
                   ".pdf": "PDF", ".md": "Markdown", ".csv": "CSV", ".xml": "XML", ".doc": "Word", ".docx": "Word",
                   ".xls": "Excel", ".xlsx": "Excel", ".odt": "OpenDocument", ".rtf": "RTF"}


#: SARIF's second file name (``report.sarif.json``).
SARIF_JSON = ".sarif.json"


def format_suffixes(renderers) -> dict[str, str]:
    """Each format of a renderer registry (``fedguard.reports.RENDERERS``, the audit's) and its file extension."""
    return {name: renderers.get(name).suffix for name in renderers.names()}


def _one_of(suffixes) -> str:
    """``*.txt, *.json or *.html``."""
    names = [f"*{x}" for x in suffixes]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def resolve_format(fmt: str | None, output: Path | None, suffixes: Mapping[str, str]) -> str:
    """``--format``, else the format whose extension ``--output`` has (``report.html``: html), else text.

    ``suffixes`` maps each format to its extension. A ``--format`` that
    contradicts the extension of another format is an InputError: a JSON
    report in ``report.html`` is a mistake, not a wish. A ``.txt`` file
    takes any format (a plain file to keep a JSON report in). ``.sarif.json``,
    the other name SARIF viewers and GitHub code scanning take, is SARIF.
    """
    from fedguard.data import IMAGE_EXTENSIONS
    from fedguard.loading import EXTENSIONS

    by_suffix = {suffix: name for name, suffix in suffixes.items()}
    if "html" in suffixes:
        by_suffix[".htm"] = "html"
    suffix = output.suffix.lower() if output is not None else ""
    if "sarif" in suffixes and output is not None and output.name.lower().endswith(SARIF_JSON):
        by_suffix[suffix := SARIF_JSON] = "sarif"
    if suffix in EXTENSIONS or suffix in IMAGE_EXTENSIONS:  # a report under a model's, data set's or image's name
        raise InputError(f"--output {output.name} has the extension of a model, data or image file, not of a report; "
                         f"name the file {_one_of(suffixes.values())}")  # fmt: skip
    if suffix in REPORT_SUFFIXES and suffix not in by_suffix:
        raise InputError(f"--output {output.name}: this command writes no {REPORT_SUFFIXES[suffix]} report; "
                         f"name the file {_one_of(suffixes.values())}")  # fmt: skip
    named = by_suffix.get(suffix)
    if fmt is None:
        return named or "text"
    if named not in (None, "text", fmt):
        raise InputError(
            f"--output {output} has the extension of the {named} format but --format is {fmt}; "
            f"drop --format, or name the file {str(output)[: len(str(output)) - len(suffix)]}{suffixes[fmt]}"
        )
    return fmt


def user_code_prints_to_stderr() -> contextlib.AbstractContextManager:
    """While an ``--arch`` module is imported, built and run: what it ``print()``s goes to stderr, so stdout carries
    the report alone (``--format json | jq`` stays parseable). Writes below Python (a C extension's) are not caught."""
    return contextlib.redirect_stdout(sys.stderr)


def note_unmatched_ignores(stale) -> None:
    """One stderr note naming the ``--ignore`` entries no finding matched: a stale entry or a misspelt layer accepts
    nothing, and saying so is how the user learns."""
    from fedguard.reports.base import printable

    if stale:
        entries = " ".join(f"--ignore {entry}" for entry in stale)
        click.echo(printable(f"fedguard: note: {entries} matched no finding; drop it, or check the rule and layer "
                             "against the report's findings"), err=True)  # fmt: skip
