"""Text output of ``fedguard audit`` for people: verdict first, then one row per attack.

Colour only when asked (the CLI asks only on a TTY). Sample output::

    BLOCK  leakage high (worst: dlg, PSNR max 52.1 dB)  fail-on high
    lenet · digits, batch 1 · fedsgd · cpu · 4 attacks in 24.1 s

    attack              level  PSNR dB   SSIM      label iters time   stopped
    ───────────────────────────────────────────────────────────────────────────
    label_counts        medium –         –         1.00  0     0.1 s  done
    idlg                medium –         –         1.00  0     0.0 s  done
    dlg                 high   52.1/52.1 1.00/1.00 1.00  131   18.2 s converged
    inverting_gradients medium 19.3/19.3 0.61/0.61 1.00  950   20.0 s time_budget

    dlg: 3 of 4 random starts reached the high level (75%)

    exposure across rounds (beside the verdict, which is this round's update's):
    secure aggregation hides this update for only 30 rounds: with 10 users per round ...
      what if noise 1 on the sums: not exposed
    grids: audit.txt-dlg.png, audit.txt-inverting_gradients.png
    levels per example, counted only 3 dB / 0.1 SSIM above the no-update
    guess (public mean image or a class mean; mean 11.3 dB): high >= 25 dB ...

The table fits 80 columns; the prose wraps at the terminal's width (:func:`~fedguard.reports.base.laid_out_for`),
100 in a file.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, ClassVar, Mapping

from fedguard.types import AuditReport, AuditVerdict, LeakageLevel

from .audit_base import AuditRenderer, register_audit_renderer
from .audit_sentences import accepted_said, defense_summary, exposure_summary, nearest_estimate, thresholds_said, threat_items
from .base import fmt_num, joined_lines, plural, print_hanging, printable, text_width

if TYPE_CHECKING:
    from rich.console import Console

VERDICT_STYLE = {AuditVerdict.PASS: "bold green", AuditVerdict.WARN: "bold yellow", AuditVerdict.BLOCK: "bold white on red"}
LEVEL_STYLE = {LeakageLevel.HIGH: "bold red", LeakageLevel.MEDIUM: "yellow", LeakageLevel.LOW: "cyan", LeakageLevel.NONE: "green"}


@register_audit_renderer("text")
class AuditTextRenderer(AuditRenderer):
    """Human-readable audit report; ``color=True`` adds ANSI colours."""

    name: ClassVar[str] = "text"
    suffix: ClassVar[str] = ".txt"

    def render(self, report: AuditReport, *, color: bool = False, images: Mapping[str, bytes] | None = None) -> str:
        from rich import box  # imported here: listing the formats at start-up would pay 0.1 s for it
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        buffer = io.StringIO()
        console = Console(
            file=buffer, width=text_width(), force_terminal=color, no_color=not color,
            color_system="standard" if color else None, highlight=False, emoji=False, markup=False,
        )  # fmt: skip
        def say(text: Text) -> None:  # a paragraph: broken at spaces, its later lines indented
            print_hanging(console, text, rest="  ")

        lk = report.leakage
        head = Text()
        head.append(str(report.verdict).upper(), style=VERDICT_STYLE[report.verdict])
        head.append(f"  leakage {report.leakage_said}", style=LEVEL_STYLE[lk.level] if report.measured else "yellow")
        if lk.worst_attack:
            worst = report.outcome(lk.worst_attack)
            extra = f", PSNR max {fmt_num(worst.psnr_max)} dB" if worst.psnr_max is not None else ""
            head.append(f" (worst: {lk.worst_attack}{extra})")
        head.append(f"  fail-on {report.fail_on}")
        if report.interrupted:
            head.append("  INTERRUPTED: partial results", style="bold yellow")
        say(head)
        if report.next_step:
            say(Text(report.next_step, style="bold"))
        for note in report.notes:
            say(Text(printable(f"note: {note}"), style="bold yellow"))
        if accepted := accepted_said(report):
            say(Text(printable(accepted), style="dim"))
        m, d, u = report.model, report.data, report.update
        where = m.get("path") or m.get("weights")
        context = [
            f"{m.get('arch')} ({where})",
            *([f"sha256 {m['sha256'][:12]}…"] if m.get("sha256") else
              [f"weights sha256 {m['weights_sha256'][:12]}…"] if m.get("weights_sha256") else []),
            f"{d.get('spec')}, batch {d.get('batch_size')}",
            u.get("protocol") + (f" {plural(u.get('local_steps'), 'step')} lr {u.get('local_lr')} mini-batch {u.get('local_batch_size')}"
                                 if u.get("protocol") == "fedavg" else ""),  # fmt: skip
            *filter(None, [defense_summary(u)]),
            report.config.get("device", ""),
            f"{plural(len(report.attacks), 'attack')} in {report.seconds:.1f} s",
        ]
        for items in ([printable(c) for c in context], threat_items(report)):
            for line in joined_lines(items, " · ", console.width):  # a path longer than the line stays whole
                print_hanging(console, Text(line, style="dim"), rest="  ")
        if report.attacks:
            # one space between columns: the table fits 80 columns (a stop reason too long for it folds)
            table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=0, header_style="bold")
            for col in ("attack", "level", "PSNR dB", "SSIM", "label", "iters", "time", "stopped"):
                table.add_column(col, no_wrap=col != "stopped", overflow="fold")
            for o in report.attacks:
                psnr = "–" if o.psnr_max is None else f"{fmt_num(o.psnr_mean)}/{fmt_num(o.psnr_max)}"
                ssim = "–" if o.ssim_max is None else f"{fmt_num(o.ssim_mean, 3)}/{fmt_num(o.ssim_max, 3)}"
                table.add_row(
                    o.name, Text(str(o.level), style=LEVEL_STYLE[o.level]), psnr, ssim,
                    fmt_num(o.label_accuracy, 2), str(o.iterations), f"{o.seconds:.1f} s", o.stopped,
                )  # fmt: skip
            console.print()
            console.print(table)
            if any(o.psnr_max is not None for o in report.attacks):
                say(Text("PSNR and SSIM: mean/max over the examples an attack rebuilt; 100 dB: exact", style="dim"))
        elif report.measured:
            say(Text("no attack ran on the update: it is zero everywhere, so it reveals nothing of the batch"))
        else:
            say(Text("no attack ran: leakage not measured (see skipped)", style="yellow"))
        for o in report.attacks:
            if o.recovered_fraction is not None:  # 0 % said too: an image attack that rebuilt none
                say(Text(f"{o.name}: {o.recovered_fraction:.0%} of the batch recovered (PSNR >= 30 dB or SSIM >= 0.9)"))
            if o.kind == "images" and isinstance(d.get("batch_size"), int) and 0 < len(o.samples) < d["batch_size"]:
                say(Text(f"{o.name}: rebuilt {len(o.samples)} of {plural(d['batch_size'], 'example')}; the rest are not in its means"))
            if o.details.get("why_nothing"):
                say(Text(f"{o.name}: rebuilt nothing: {o.details['why_nothing']}"))
            if o.details.get("label_order"):
                say(Text(f"{o.name}: {o.details['label_order']}"))
            if o.starts and o.start_success_rate is not None:
                k = round(o.start_success_rate * o.starts)
                say(Text(f"{o.name}: {k} of {plural(o.starts, 'random start')} reached the high level ({o.start_success_rate:.0%})"))
            if o.label_counts_exact is not None and o.kind == "labels":
                say(Text(
                    f"{o.name}: {o.label_counts_exact:.0%} of per-class counts exact, "
                    f"count error {o.label_count_error} over {plural(d.get('batch_size'), 'example')}"
                    + ("" if o.label_accuracy is None else
                       f" (label accuracy {fmt_num(o.label_accuracy, 2)}: the share of the batch's labels they get right)"),
                ))  # fmt: skip
        for name, why in report.skipped.items():
            say(Text(printable(f"skipped {name}: {why}"), style="dim"))
        if report.exposure is not None:
            _exposure(console, report.exposure)
        else:
            say(Text(f"secure aggregation across rounds: not analysed ({report.exposure_not_analysed})", style="dim"))
        files = [o.image_file for o in report.attacks if o.image_file]
        if files:
            say(Text(printable(f"grids: {', '.join(files)}")))
        if lk.thresholds:
            say(Text(thresholds_said(report), style="dim"))
        return "".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines())


def _exposure(console: Console, exposure: Mapping) -> None:
    from rich.text import Text

    console.print()
    print_hanging(console, Text("exposure across rounds (beside the verdict, which is this round's update's):"), rest="  ")
    print_hanging(console, Text(exposure_summary(exposure)), rest="  ")
    for s in exposure["scenarios"][1:]:
        rounds = s["rounds_to_exposure"]
        if rounds is not None:
            result = f"exposed after {plural(rounds, 'round')}"
        else:
            result = s["outcome"]
        nearest = nearest_estimate(s) if s["outcome"] == "not exposed" else None
        result += f" ({nearest})" if nearest else ""
        note = f" ({s['note']})" if s["outcome"] != "not identifiable" and s["note"] else ""
        said = Text(f"what if {s['label']}: {result}{note}", style="dim")
        print_hanging(console, said, first="  ")  # a hanging indent, as inspect's details
