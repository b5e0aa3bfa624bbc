"""The ``fedguard audit`` command: a thin click layer over :func:`fedguard.audit.audit`.

Exit codes: 0 = verdict pass or warn; 1 = verdict block (leakage at or above
``--fail-on``); 2 = usage or input error (one line on stderr); 130 = stopped by
Ctrl-C (the partial report is still written).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
from pathlib import Path

import click

from fedguard.attacks.base import MAX_STARTS
from fedguard.attacks.dlg import DEFAULT_STARTS, DLG
from fedguard.attacks.inverting_gradients import DEFAULT_RESTARTS, DEFAULT_TV, MAX_TV, InvertingGradients
from fedguard.defenses import DEFAULT_DELTA, DEFENSES, MAX_DELTA, parse_defense
from fedguard.errors import InputError
from fedguard.exposure import MAX_FEDERATION_SIZE
from fedguard.options import OUTPUT_FILE, SEED, FiniteFloatRange, NamedPath, format_suffixes, input_paths, note_unmatched_ignores, print_report, refuse_unused, resolve_format, terminal_columns, TorchCommand, user_code_prints_to_stderr, colour_report, live_terminal

EXIT_OK, EXIT_BLOCK, EXIT_INTERRUPTED = 0, 1, 130
LEVELS = ["low", "medium", "high"]
WITHHOLD = {"local-schedule": "local_schedule", "public-data": "auxiliary_data"}


def _attack_help() -> str:
    from fedguard.attacks.base import attacks

    registry = attacks()
    names = ", ".join(registry.names())
    emulators = ", ".join(n for n in registry.names() if not registry.get(n).default)
    return (f"Run only this attack (repeatable): {names}. Default: every one that applies, "
            f"except the malicious-server emulators ({emulators}), which run when named.")  # fmt: skip


class _Bars:
    """One rich progress bar per attack on stderr; its ETA is at most the attack's time budget left."""

    def __init__(self):
        import datetime

        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.table import Column
        from rich.text import Text

        class BoundedRemaining(TimeRemainingColumn):
            """rich's estimate from the iterations' pace, at most what is left of the attack's time budget (an attack
            stops there: the estimate alone had shown minutes for a 20 s budget)."""

            def render(self, task):
                budget = task.fields.get("budget")
                if task.stop_time is not None and not task.finished:  # stopped short of its iterations: no time left
                    return Text("")
                if budget is None or task.finished:
                    return super().render(task)
                left = max(0.0, budget - (task.elapsed or 0.0))
                pace = task.time_remaining
                shown = left if pace is None else min(pace, left)
                return Text(str(datetime.timedelta(seconds=int(shown))), style="progress.remaining")

        def whole(width: int) -> Column:  # the counts and clocks keep their width; the info is cut on a narrow
            return Column(no_wrap=True, min_width=width)  # terminal (at 80 columns "3/300 0:00:04" had read "3/… 0:00…")

        self.progress = Progress(
            TextColumn("{task.description:<20}", table_column=whole(20)),
            BarColumn(bar_width=12, table_column=whole(12)),
            MofNCompleteColumn(table_column=whole(9)),
            TimeElapsedColumn(table_column=whole(7)),
            TextColumn("eta", table_column=whole(3)),
            BoundedRemaining(table_column=whole(7)),
            TextColumn("{task.fields[info]}", table_column=Column(no_wrap=True, overflow="ellipsis")),
            console=Console(stderr=True),
            transient=False,
        )
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def start(self, attack: str, total: int, seconds: float | None) -> None:
        info = f"budget {seconds:.0f}s" if seconds is not None else ""
        self.tasks[attack] = self.progress.add_task(attack, total=total, info=info, budget=seconds)

    def update(self, attack: str, done: int, total: int, fields: dict) -> None:
        from fedguard.reports.base import plural

        task = self.tasks[attack]
        info = []
        if fields.get("loss") is not None and fields.get("loss") == fields.get("loss"):
            info.append(f"loss {fields['loss']:.3g}")
        if fields.get("starts"):
            info.append(plural(int(fields["starts"]), "start"))
        if fields.get("planned") and fields["planned"] != total:
            total = fields["planned"]
        budget = self.progress.tasks[task].fields.get("budget")
        if budget is not None:
            info.append(f"budget {budget:.0f}s")
        self.progress.update(task, completed=done, total=total, info=" ".join(info))

    def finish(self, attack: str, stopped: str) -> None:
        """The bar as the attack left it: its iterations of the planned ones (a full bar had read "2/2" for an attack
        the time budget stopped after 2 of 300), its clock stopped, why it stopped beside it."""
        task = self.tasks[attack]
        t = self.progress.tasks[task]
        if t.total is None or t.completed == 0:  # nothing counted (an analytic attack): one step, done
            self.progress.update(task, total=1, completed=1, info=stopped)
        else:
            self.progress.update(task, info=stopped)
        self.progress.stop_task(task)

    def message(self, text: str) -> None:
        self.progress.console.print(text)


class _Quiet:
    def __init__(self, echo):
        self.echo = echo

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def start(self, attack, total, seconds):
        pass

    def update(self, attack, done, total, fields):
        pass

    def finish(self, attack, stopped):
        pass

    def message(self, text):
        if self.echo:
            click.echo(text, err=True)


def _check_grid_paths(output: Path, inputs: list) -> None:
    """Refuse, before any work, an output whose grids would replace a folder or a file fedguard did not write, or
    land on or in an input (through a link too)."""
    from fedguard.attacks.base import attacks
    from fedguard.io import check_name_length, check_output_path
    from fedguard.reports.grids import grid_path, is_fedguard_png

    registry = attacks()
    for name in (n for n in registry.names() if registry.get(n).kind == "images"):  # the label attacks write no grid
        check_name_length(grid_path(output, name), f"--output's {name} grid", "choose a shorter --output, or pass --no-images")
    for name in registry.names():
        path = grid_path(output, name)
        if path.is_dir() or (path.exists() and not is_fedguard_png(path)):
            what = "a folder" if path.is_dir() else "a file fedguard did not write"
            given = Path(output).with_name(path.name)  # named as the user named --output, unless a link moves it
            shown = given if os.path.realpath(given) == str(path) else path
            raise InputError(f"{shown}, where the {name} grid would go, is {what}; move it or choose another --output")
        check_output_path(path, inputs=inputs, option=f"--output (its {name} grid)", force=True)  # the folder, inputs


def _formats() -> dict[str, str]:
    from fedguard.reports.audit_base import audit_renderers

    return format_suffixes(audit_renderers())


@click.command("audit", cls=TorchCommand)
@click.option("--model", "model", type=NamedPath(), help="The global model as received (.pt/.pth/.bin/.ckpt/.tar, .safetensors, .npz; as inspect reads it). Default: a fresh --arch initialisation (seeded).")
@click.option("--arch", required=True, metavar="NAME|module:callable", help="Architecture of the model (as for `fedguard inspect`).")
@click.option("--num-classes", type=click.IntRange(min=1), help="Classes of --arch (default: read off the model's head, else 10).")
@click.option("--input-shape", metavar="C,H,W", help="Input shape of --arch (default: the architecture's own).")
@click.option("--data", required=True, metavar="SPEC", help="Your data: digits, images, a folder of class subfolders, or an .npz with x and y.")
@click.option("--batch-size", type=int, help="Examples in the private batch (default 8; with --update, all of --data).")
@click.option("--protocol", type=click.Choice(["fedsgd", "fedavg"], case_sensitive=False), default="fedsgd", show_default=True, help="fedsgd: one gradient; fedavg: local SGD steps, the update is W_T - W_0.")
@click.option("--local-steps", type=int, default=5, show_default=True, help="FedAvg: local SGD steps (at most 1000).")
@click.option("--local-lr", type=float, default=0.01, show_default=True, help="FedAvg: local learning rate.")
@click.option("--local-batch-size", type=int, help="FedAvg: mini-batch size of each local step (default: the whole batch).")
@click.option("--update", "update", type=NamedPath(), help="An update computed elsewhere from --model on exactly --data (gradient, or W_T - W_0 for fedavg); needs --model.")
@click.option("--defense", type=click.Choice(DEFENSES, case_sensitive=False), default="none", show_default=True, help="Apply a defense to the computed update before attacking it: dp-sgd (Opacus: per-example clipping and Gaussian noise at every local step; the report gives the round's epsilon), prune (zero each tensor's smallest values), noise (Gaussian noise on the update).")
@click.option("--noise-multiplier", type=FiniteFloatRange(min=0, min_open=True), help="--defense dp-sgd: noise std over the clipping norm (sigma), e.g. 1.0.")
@click.option("--max-grad-norm", type=FiniteFloatRange(min=0, min_open=True), default=1.0, show_default=True, help="--defense dp-sgd: each example's gradient is clipped to this L2 norm.")
@click.option("--delta", type=FiniteFloatRange(min=0, max=MAX_DELTA, min_open=True), default=DEFAULT_DELTA, show_default=True, help="--defense dp-sgd: the delta at which epsilon is reported (below 1 / examples).")
@click.option("--prune-fraction", type=FiniteFloatRange(min=0, max=1, max_open=True), help="--defense prune: share of each tensor's values (smallest magnitudes) set to zero, e.g. 0.9.")
@click.option("--noise-std", type=FiniteFloatRange(min=0, min_open=True), help="--defense noise: standard deviation of the noise added to every value, e.g. 0.01.")
@click.option("--attack", "attacks", multiple=True, metavar="NAME", help=_attack_help())
@click.option("--max-iterations", type=int, help=f"Iterations per attack (default: DLG {DLG.default_iterations} L-BFGS steps, Inverting Gradients {InvertingGradients.default_iterations}; under a tenth of that the verdict is at least warn, as it is when --time-budget stops an attack before them).")
@click.option("--time-budget", type=float, default=20.0, show_default=True, help="Seconds per attack, checked between iterations (one iteration on a batch of hundreds can take longer).")
@click.option("--attacker-labels", type=click.Choice(["infer", "known"], case_sensitive=False), default="infer", show_default=True, help="infer: the server recovers labels from the update; known: it has them (the label attacks are then skipped: they would reveal nothing more).")
@click.option("--attacker-without", "withheld", multiple=True, type=click.Choice(sorted(WITHHOLD), case_sensitive=False), help="Knowledge the server lacks (repeatable). Default: it knows all of them.")
@click.option("--dlg-starts", type=click.IntRange(1, MAX_STARTS), help=f"DLG: random starts, optimised side by side (default {DEFAULT_STARTS}).")
@click.option("--ig-restarts", type=click.IntRange(1, MAX_STARTS), help=f"Inverting Gradients: restarts, optimised side by side (default {DEFAULT_RESTARTS}).")
@click.option("--ig-tv", type=FiniteFloatRange(min=0, max=MAX_TV), help=f"Inverting Gradients: total-variation weight (default {DEFAULT_TV:g}).")
@click.option("--exposure/--no-exposure", default=True, show_default=True, help="Also measure after how many rounds secure aggregation stops hiding this update (gradient disaggregation on simulated peers).")
@click.option("--users-per-round", type=click.IntRange(1, MAX_FEDERATION_SIZE), default=10, show_default=True, help="Exposure: clients aggregated per round.")
@click.option("--participation", type=FiniteFloatRange(0, 1, min_open=True), default=0.5, show_default=True, help="Exposure: chance a client joins a round.")
@click.option("--count-window", type=click.IntRange(1, MAX_FEDERATION_SIZE), default=10, show_default=True, help="Exposure: rounds per window of published participation counts.")
@click.option("--stable-rounds", type=click.IntRange(1, MAX_FEDERATION_SIZE), default=200, show_default=True, help="Exposure: rounds your update stays (nearly) the same.")
@click.option("--aggregate-noise", type=FiniteFloatRange(min=0, max=1000), default=0.0, show_default=True, help="Exposure: noise std on each entry of the sums, in units of an update's RMS entry (a DP noise multiplier sigma on updates clipped to norm C is sigma * sqrt(entries) of these units).")
@click.option("--exposure-budget", type=FiniteFloatRange(min=0, min_open=True), help="Exposure: seconds for the whole analysis, its what-ifs included (default 5, or --time-budget when smaller); what-ifs it does not reach are reported as not run.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seeds the batch, the initialisation and the attacks (numbers repeat on the same machine and thread count when --max-iterations, not --time-budget, ends them).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"], case_sensitive=False), default="auto", show_default=True, help="auto = cuda when a GPU is available, else cpu.")
@click.option("--ignore", multiple=True, metavar="RULE[:LAYER]", help="Accept this `fedguard inspect` rule's findings on the received model (repeatable; its weight rules and FG805, which the audit runs): RULE anywhere, or RULE:LAYER in that layer and what is under it, e.g. FG301:features.0. Reported apart, they neither block nor warn; what the attacks measure still counts. FG001 cannot be ignored.")
@click.option("--format", "fmt", type=click.Choice(list(_formats()), case_sensitive=False), help="Output format (default: the one --output's extension names, else text).")
@click.option("-o", "--output", type=OUTPUT_FILE, help="Write the report here (atomically, mode 0600); PNG grids go next to it.")
@click.option("--no-images", is_flag=True, help="Write no reconstruction grids and embed none in an HTML report: they show your private batch beside what the attacks rebuilt.")
@click.option("--fail-on", type=click.Choice(LEVELS, case_sensitive=False), default="high", show_default=True, help="Verdict block (exit 1) at or above this leakage level.")
@click.option("--strict", is_flag=True, help="Exit 1 on warn as on block, so that exit 0 means pass: warn is a leak one level below --fail-on or an audit that could not measure the whole leak (the gate that uploads only on pass).")
@click.option("--force", is_flag=True, help="Replace an existing --output that is not a report fedguard wrote (its own reports are replaced without it).")
@click.option("-q", "--quiet", is_flag=True, help="No progress and no report on stdout; rely on the exit code (0 for pass and warn, unless --strict) and --output.")
def audit_command(model, arch, num_classes, input_shape, data, batch_size, protocol, local_steps, local_lr, local_batch_size,
                  update, defense, noise_multiplier, max_grad_norm, delta, prune_fraction, noise_std, attacks, max_iterations, time_budget, attacker_labels, withheld, dlg_starts, ig_restarts, ig_tv,
                  exposure, users_per_round, participation, count_window, stable_rounds, aggregate_noise, exposure_budget,
                  seed, device, ignore, fmt, output, no_images, fail_on, strict, force, quiet):
    """Attack your own pending update as the server could, and measure what leaks.

    Computes the update training would upload (or reads --update), runs the
    gradient-inversion attacks a curious server would run (label counts, iDLG,
    analytic FC inversion, DLG, Inverting Gradients), and matches what they rebuild to your true
    batch (PSNR, SSIM, label accuracy). Then, unless --no-exposure, it places
    your update among simulated peers and reports after how many rounds
    gradient disaggregation would single it out of securely aggregated sums.
    Ctrl-C stops cleanly and keeps partial results.
    """
    from fedguard.architectures import parse_input_shape
    from fedguard.audit import audit
    from fedguard.exposure import FederationSettings
    from fedguard.io import check_output_path, write_atomic
    from fedguard.reports.audit_base import render_audit
    from fedguard.reports.grids import attack_grids, grid_path, remove_stale_grids
    from fedguard.reports.base import laid_out_for, printable
    from fedguard.threat import ThreatModel

    refuse_unused(output is None, ("force",), "replaces an existing --output and its grids, and no --output is given; add -o FILE")
    refuse_unused(protocol == "fedsgd", ("local_steps", "local_lr", "local_batch_size"), "applies to --protocol fedavg only; add --protocol fedavg")
    refuse_unused(defense != "dp-sgd", ("noise_multiplier", "max_grad_norm", "delta"), "applies to --defense dp-sgd only; add --defense dp-sgd")
    refuse_unused(defense != "prune", ("prune_fraction",), "applies to --defense prune only; add --defense prune")
    refuse_unused(defense != "noise", ("noise_std",), "applies to --defense noise only; add --defense noise")
    if protocol == "fedsgd" and "local-schedule" in withheld:  # FedSGD has none to withhold: it would do nothing
        raise InputError("--attacker-without local-schedule applies to --protocol fedavg only; add --protocol fedavg, "
                         "or drop --attacker-without local-schedule")  # fmt: skip
    refuse_unused(not exposure, ("users_per_round", "participation", "count_window", "stable_rounds", "aggregate_noise",
                                 "exposure_budget"),
                   "sets up the exposure analysis, which --no-exposure turns off; drop --no-exposure")  # fmt: skip
    refuse_unused(bool(attacks) and "dlg" not in attacks, ("dlg_starts",), "sets up DLG, which --attack leaves out; add --attack dlg")
    refuse_unused(bool(attacks) and "inverting_gradients" not in attacks, ("ig_restarts", "ig_tv"),
                   "sets up Inverting Gradients, which --attack leaves out; add --attack inverting_gradients")  # fmt: skip
    formats = _formats()
    fmt = resolve_format(fmt, output, formats)
    shape = parse_input_shape(input_shape) if input_shape is not None else None
    with user_code_prints_to_stderr():  # importing --arch runs its module's code
        inputs = input_paths(model, update, data=data, arch=arch)
    if output is not None:
        check_output_path(output, inputs=inputs, force=force, example=f"report{formats[fmt]}")
        if not no_images:
            _check_grid_paths(output, inputs)
    threat = ThreatModel(labels=attacker_labels, **{WITHHOLD[w]: False for w in withheld})
    client_defense = parse_defense(defense, noise_multiplier, max_grad_norm, delta, prune_fraction, noise_std)
    options = {}
    if dlg_starts:
        options["dlg"] = {"starts": dlg_starts}
    ig = {k: v for k, v in (("restarts", ig_restarts), ("tv", ig_tv)) if v is not None}
    if ig:
        options["inverting_gradients"] = ig
    federation = FederationSettings(
        users_per_round=users_per_round, participation=participation, window=count_window,
        stable_rounds=stable_rounds, noise=aggregate_noise,
    ) if exposure else None  # fmt: skip
    show = not quiet and live_terminal(sys.stderr)
    stop = threading.Event()
    with user_code_prints_to_stderr(), (_Bars() if show else _Quiet(echo=not quiet)) as bars:
        report = audit(
            model, arch=arch, data=data, batch_size=batch_size, num_classes=num_classes, input_shape=shape,
            protocol=protocol, local_steps=local_steps, local_lr=local_lr, local_batch_size=local_batch_size,
            update=update, defense=client_defense, attacks=list(attacks) or None, max_iterations=max_iterations, time_budget=time_budget,
            threat=threat, seed=seed, device=device, fail_on=fail_on, attack_options=options, progress=bars, stop=stop,
            federation=federation, exposure_budget=exposure_budget, ignore=ignore,
        )  # fmt: skip
    if not quiet:
        note_unmatched_ignores(report.model["inspection"]["ignore_unmatched"])
    images = {} if no_images else attack_grids(report)
    outcomes = []
    for o in report.attacks:
        if o.name in images and output is not None:
            path = grid_path(output, o.name)
            write_atomic(path, images[o.name])
            o = dataclasses.replace(o, image_file=path.name)
        outcomes.append(o)
    # --strict sets the exit code, which a reader of the JSON could not otherwise tell from a warn
    report = dataclasses.replace(report, attacks=tuple(outcomes), config={**report.config, "strict": strict})
    color = colour_report(output, fmt)
    with laid_out_for(terminal_columns(output)):
        text = render_audit(fmt, report, color=color, images=images)
    if output is not None:
        write_atomic(output, text)
        remove_stale_grids(output, keep=images)
        if not quiet:
            click.echo(printable(f"{report.verdict}: leakage {report.leakage_said}; report written to {output}"), err=True)
    elif not quiet:
        print_report(text, utf8=fmt == "html")
    if report.interrupted:
        click.echo("fedguard: interrupted; the report holds the partial results", err=True)
        sys.exit(EXIT_INTERRUPTED)
    if stop.is_set():  # Ctrl-C after the last attack ended, before the audit handed its report back
        click.echo("fedguard: interrupted after the attacks ended; the report is complete", err=True)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(EXIT_BLOCK if str(report.verdict) == "block" or (strict and str(report.verdict) == "warn") else EXIT_OK)
