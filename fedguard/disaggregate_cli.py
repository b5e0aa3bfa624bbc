"""The ``fedguard disaggregate`` command: a thin click layer over :mod:`fedguard.attacks.disaggregation`.

Exit codes: 0 = the attack ran (whatever it recovered); 2 = usage or input
error, including aggregates that cannot identify the participation matrix
(one line on stderr); 130 = stopped by Ctrl-C.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from fedguard.errors import InputError
from fedguard.options import OUTPUT_FILE, SEED, FiniteFloatRange, NamedPath, OutputFile, TorchCommand, live_terminal, print_report, refuse_unused, resolve_format
from fedguard.reports.base import printable

#: The output formats and their file extensions.
FORMATS = {"text": ".txt", "json": ".json"}


class _UserBar:
    """A rich progress bar of users settled, on stderr."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.progress = None
        self.task = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("disaggregating"), BarColumn(bar_width=30), MofNCompleteColumn(), TextColumn("users"),
                TimeElapsedColumn(), console=Console(stderr=True), transient=True,
            )
            self.progress.start()
            self.task = self.progress.add_task("users", total=None)
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, settled: int, total: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=settled, total=total)


def _updates_file(updates_path: Path | None, output: Path | None) -> str | None:
    """The updates file as the report names it: relative to the report's folder when there is a report file (so
    the two move together, as an audit's image files do), else as written."""
    if updates_path is None:
        return None
    return os.path.relpath(updates_path, output.parent) if output is not None else str(updates_path)


def _default_updates_path(output: Path) -> Path:
    """``OUTPUT-updates.npz`` with the report's whole name (``d.json-updates.npz``), so ``d.json`` and ``d.txt`` keep
    their own; beside a link's target, where the report lands (as audit's grids)."""
    report = Path(os.path.realpath(output))
    return report.with_name(f"{report.name}-updates.npz")


@click.command("disaggregate", cls=TorchCommand)
@click.argument("rounds_file", metavar="[ROUNDS.npz]", required=False, type=NamedPath())
@click.option("--simulate", is_flag=True, help="Generate a federation with known truth, attack it and score the recovery.")
@click.option("--users", type=click.IntRange(min=1), default=50, show_default=True, help="--simulate: users in the federation.")
@click.option("--rounds", type=click.IntRange(min=1), default=200, show_default=True, help="--simulate: rounds of aggregates.")
@click.option("--dim", type=click.IntRange(min=1), default=200, show_default=True, help="--simulate: entries per update (must be at least --users).")
@click.option("--window", type=click.IntRange(min=1), default=10, show_default=True, help="--simulate: rounds per window of published counts.")
@click.option("--participation", type=FiniteFloatRange(0, 1, min_open=True, max_open=True), default=0.5, show_default=True, help="--simulate: chance a user joins a round (below 1: with everyone in every round no update can be told apart).")
@click.option("--noise", type=FiniteFloatRange(min=0, max=1000), default=0.0, show_default=True, help="--simulate: Gaussian noise on each aggregate entry, relative to an update's scale (0.05 = 5 %).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seeds the simulation and the attack's random restarts.")
@click.option("--save-rounds", type=OutputFile("rounds.npz", ".npz"), help="--simulate: also write the simulated rounds (and their truth) as an .npz that ROUNDS.npz accepts.")
@click.option("--time-limit", type=FiniteFloatRange(min=0), default=60.0, show_default=True, help="Seconds per user for the integer programs (0 runs none: a column no linear program proves the only one is then approximate); a program it ends makes the result depend on the machine's speed (the notes say so).")
@click.option("--workers", type=click.IntRange(min=1), help="Processes for the integer programs (default: the usable CPU cores; one on macOS and Windows, which cannot fork them safely).")
@click.option("--format", "fmt", type=click.Choice(list(FORMATS), case_sensitive=False), help="Output format (default: the one --output's extension names, else text).")
@click.option("-o", "--output", type=OUTPUT_FILE, help="Write the report here (atomically, mode 0600); the recovered updates go to OUTPUT-updates.npz beside it.")
@click.option("--updates", "updates_path", type=OutputFile("updates.npz", ".npz"), help="Where to write the recovered updates (.npz: updates, participation, status, residual). Default: beside --output.")
@click.option("--force", is_flag=True, help="Replace existing --output, --updates (or OUTPUT-updates.npz) or --save-rounds files that fedguard did not write.")
@click.option("-q", "--quiet", is_flag=True, help="No progress and no report on stdout (use with --output).")
def disaggregate_command(rounds_file, simulate, users, rounds, dim, window, participation, noise, seed, save_rounds,
                         time_limit, workers, fmt, output, updates_path, force, quiet):
    """Rebuild every user's update from securely aggregated round sums (Lam et al., ICML 2021).

    ROUNDS.npz holds `aggregates` (rounds x d, each round's summed update),
    `window` (rounds per counting window), `counts` (users x windows: rounds
    each user took part in per window) and optionally `noise_scale` (noise
    std per aggregate entry). The attack recovers the 0/1 participation matrix
    and from it each user's individual update; each user is `exact`
    (certified), `approximate` or `failed`.

    With --simulate, fedguard generates a federation instead, attacks it and
    scores the recovery against the truth.
    """
    from fedguard.attacks import disaggregation as dis
    from fedguard.attacks import federation as fed
    from fedguard.io import check_name_length, check_output_path, is_fedguard_report, write_atomic
    from fedguard.reports.disaggregation_report import disaggregation_to_dict, render_disaggregation

    fmt = resolve_format(fmt, output, FORMATS)
    if simulate and rounds_file is not None:
        raise InputError("give either ROUNDS.npz or --simulate, not both")
    if not simulate and rounds_file is None:
        raise InputError("give a ROUNDS.npz to attack, or --simulate to generate a federation")
    refuse_unused(not simulate, ("users", "rounds", "dim", "window", "participation", "noise", "save_rounds"),
                  "only applies with --simulate (ROUNDS.npz brings its own rounds); add --simulate instead of ROUNDS.npz")  # fmt: skip
    writes_nothing = output is None and updates_path is None and save_rounds is None
    refuse_unused(writes_nothing, ("force",),
                  "replaces existing files it writes, and none is given; add --output (or --updates, or --save-rounds)")
    if quiet and writes_nothing:
        raise InputError("--quiet prints no report and no --output is given, so the run would leave nothing; add --output (or --updates, or --save-rounds with --simulate)")
    if updates_path is None and output is not None:
        updates_path = _default_updates_path(output)
        check_name_length(updates_path, "--output's updates file", "choose a shorter --output, or name the file with --updates")
        if updates_path.exists() and not force and not dis.is_updates_file(updates_path):
            raise InputError(f"{updates_path}, where the recovered updates would go, holds something else; move it, "
                             f"choose another --output or name the file with --updates")  # fmt: skip
    named = {"--output": output, "--updates": updates_path, "--save-rounds": save_rounds}
    # a rounds file is replaced only when fedguard simulated it: observed rounds are data
    ours = {"--output": is_fedguard_report, "--updates": dis.is_updates_file, "--save-rounds": fed.is_simulation_file}
    for option, target in named.items():
        if target is not None:
            example = {"--output": f"report{FORMATS[fmt]}", "--updates": "updates.npz", "--save-rounds": "rounds.npz"}[option]
            check_output_path(target, inputs=[rounds_file], option=option, force=force, replaceable=ours[option],
                              example=example)  # fmt: skip
    given = [(option, target.resolve()) for option, target in named.items() if target is not None]
    for i, (option, target) in enumerate(given):
        clash = next((other for other, path in given[i + 1:] if path == target), None)
        if clash is not None:
            raise InputError(f"{option} and {clash} name the same file ({named[option]}); give each its own file")

    federation = None
    if simulate:
        federation = fed.simulate_federation(users, rounds, dim, window, participation, noise, seed)
        observed = federation.rounds
        source = {"kind": "simulation", "users": users, "rounds": rounds, "dim": dim, "window": window,
                  "participation": participation, "noise": noise, "seed": seed}
    else:
        observed = fed.load_rounds(rounds_file)
        source = {"kind": "file", "path": str(rounds_file)}

    with _UserBar(enabled=not quiet and live_terminal(sys.stderr)) as bar:
        try:
            result = dis.disaggregate(
                observed.aggregates, observed.counts, observed.window, noise_scale=observed.noise_scale,
                time_limit=time_limit, workers=workers, seed=seed, progress=bar,
            )
        except dis.NotIdentifiable as exc:
            if not (simulate and participation > 0.9):
                raise
            # the file's terms (rank, P) had not said which option made it so
            raise InputError(f"the simulated rounds cannot tell the {users} users apart ({str(exc).split(':')[0]}): "
                             f"at --participation {participation:g} nearly everyone joins every round; lower it, "
                             "e.g. --participation 0.5") from None
    if save_rounds is not None:  # once the attack ran: a run refused as bad input leaves no file behind
        fed.save_rounds(save_rounds, federation)
    score = dis.score(result, federation) if federation is not None else None
    if updates_path is not None:
        dis.save_updates(updates_path, result)
    doc = disaggregation_to_dict(
        result, source, observed.dim, score=score, updates_file=_updates_file(updates_path, output),
    )
    text = render_disaggregation(fmt, doc)
    if output is not None:
        write_atomic(output, text)
        if not quiet:
            click.echo(
                printable(f"{result.users_recovered}/{result.n_users} users' updates recovered ({result.users_exact} participation columns exact); report written to {output}"), err=True
            )
    elif not quiet:
        print_report(text)
