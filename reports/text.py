"""Text output for people: verdict first, then a findings table, then details.

Colour only when asked (the CLI asks only on a TTY); otherwise plain text that
pipes, greps and diffs cleanly. Sample output::

    MALICIOUS  global.pt  (sha256 9a4a0d482d6a…, 7 layers, 263,322 parameters)
    format torch · arch lenet5 · 11 detectors in 0.03 s

     severity   rule    layer       title                                            confidence
    ────────────────────────────────────────────────────────────────────────────────────────────
     high       FG101   imprint.0   Averaging (constant-weight) rows                 high
     high       FG301   imprint.0   Imprint layer: identical rows                    high
     high       FG701   (file)      Model does not match the expected architecture   high

    [high] FG301 imprint.0: Imprint layer: identical rows
        128 of 128 units of imprint.0 share one weight vector with 128 distinct biases: they bin the
        batch by one measurement so each bin's gradient reveals one input exactly (Robbing the Fed). Do
        not train on this model.
        evidence: identical_rows=128, rows=128, groups=1, fan_in=784, distinct_biases=128, ...
    ...

    3 findings: 0 critical, 3 high, 0 medium, 0 low, 0 info

Findings accepted with ``--ignore`` are named on one line before the last
(``ignored with --ignore: FG301 high in features.0``). A clean model ends with
``clean: no findings (10 detectors run in 0.02 s; --arch, --data, --reference would run 5 more detectors)``.
"""

from __future__ import annotations

import io
from typing import ClassVar, Mapping

from fedguard.types import InspectionReport, Rule, Severity, Verdict

from .base import (
    Renderer,
    data_used,
    exit_note,
    format_value,
    joined_lines,
    more_detectors,
    plural,
    print_hanging,
    printable,
    register_renderer,
    severity_counts,
    shown_findings,
    suppressed_line,
    text_width,
)

VERDICT_STYLE = {
    Verdict.CLEAN: "bold green",
    Verdict.SUSPICIOUS: "bold yellow",
    Verdict.MALICIOUS: "bold white on red",
}
SEVERITY_STYLE = {
    Severity.CRITICAL: "bold red",
    Severity.HIGH: "red",
    Severity.MEDIUM: "yellow",
    Severity.LOW: "cyan",
    Severity.INFO: "dim",
}


#: Widest a layer's name is shown in the table of findings: a longer one by its last characters, which tell a
#: model's many layers apart (its start is what they share), whole in the details below.
LAYER_COLUMN = 28


def _shortened(name: str) -> str:
    """``name``, or "…" and as many of its last characters as fill the column (a CJK character takes two cells)."""
    from rich.cells import cell_len

    if cell_len(name) <= LAYER_COLUMN:
        return name
    end = len(name)
    while cell_len(name[end - 1 :]) <= LAYER_COLUMN - 1:
        end -= 1
    return "…" + name[end:]


def _evidence_parts(evidence: Mapping, width: int) -> list[str]:
    """``evidence: key=value`` items to join with ``", "``; an item longer than ``width`` (a list of layers) also
    between its own elements, so that the lines break there and never inside a name or a number."""
    items = [printable(f"{key}={format_value(value)}") for key, value in evidence.items()]
    items[0] = f"evidence: {items[0]}"
    return [part for item in items for part in (item.split(", ") if len(item) > width else [item])]


@register_renderer("text")
class TextRenderer(Renderer):
    """Human-readable report; ``color=True`` adds ANSI colours."""

    name: ClassVar[str] = "text"
    suffix: ClassVar[str] = ".txt"

    def render(self, report: InspectionReport, rules: Mapping[str, Rule], *, color: bool = False) -> str:
        from rich import box  # imported here: every inspect would pay 0.1 s for it, json and sarif included
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        buffer = io.StringIO()
        console = Console(
            file=buffer,
            width=text_width(),
            force_terminal=color,
            no_color=not color,
            color_system="standard" if color else None,
            highlight=False,
            emoji=False,
            markup=False,
            legacy_windows=False,
            force_jupyter=False,
        )
        findings, left_out = shown_findings(report.findings)

        # 1. verdict line: the one thing a script or a person reads first.
        head = Text()
        head.append(str(report.verdict).upper(), style=VERDICT_STYLE[report.verdict])
        head.append(f"  {printable(str(report.path))}", style="bold")
        contents = (f"{plural(report.n_layers, 'layer')}, {report.n_parameters:,} parameters" if report.loaded
                    else "not loaded: it would run code")  # fmt: skip
        said = f"(sha256 {report.sha256[:12]}…, {contents})"
        if len(head) + 2 + len(said) <= console.width:
            head.append(f"  {said}")
            console.print(head, soft_wrap=True)
        else:  # the path whole on the verdict's line, what the file holds under it
            console.print(head, soft_wrap=True)
            console.print(Text(f"  {said}"), soft_wrap=True)

        context = [f"format {report.file_format}"]
        if report.arch:
            context.append(f"arch {report.arch}")
        if report.reference:
            context.append(f"reference {printable(str(report.reference))}")
        if report.config.get("data"):
            context.append(" ".join(filter(None, (f"data {printable(str(report.config['data']))}", data_used(report)))))
        context.append(f"{plural(len(report.detectors_run), 'detector')} in {report.seconds:.2f} s")
        for line in joined_lines(context, " · ", console.width):  # a path longer than the line stays whole
            print_hanging(console, Text(line, style="dim"), rest="  ")

        # 2. table of findings, worst first.
        if findings:
            table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=True, header_style="bold")
            table.add_column("severity", no_wrap=True)
            table.add_column("rule", no_wrap=True)
            # a long name by its end (whole below: a folded one had been copied into --ignore broken), at most 28 cells
            table.add_column("layer", no_wrap=True, overflow="ellipsis", max_width=LAYER_COLUMN)
            table.add_column("title", overflow="fold")
            table.add_column("confidence", no_wrap=True)
            for f in findings:
                table.add_row(
                    Text(str(f.severity), style=SEVERITY_STYLE[f.severity]),
                    f.rule_id,
                    _shortened(printable(f.layer)) if f.layer is not None else "(file)",
                    f.title,
                    str(f.confidence),
                )
            console.print()
            console.print(table)
            console.print()

            # 3. what each finding means, with its numbers.
            for f in findings:
                line = Text()
                line.append(f"[{f.severity}]", style=SEVERITY_STYLE[f.severity])
                line.append(f" {f.rule_id} ", style="bold")
                line.append(f"{printable(f.layer) if f.layer is not None else '(file)'}: {f.title}")
                print_hanging(console, line)
                print_hanging(console, Text(printable(f.message)), first="    ")
                if f.evidence:  # broken between items only, never inside a layer's name or a number
                    width = console.width - 5  # the indent, the comma
                    lines = joined_lines(_evidence_parts(f.evidence, width), ", ", width)
                    for i, line in enumerate(lines):
                        console.print(Text(f"    {line}{',' if i < len(lines) - 1 else ''}", style="dim"), soft_wrap=True)
            if left_out:
                console.print(Text(f"… and {plural(left_out, 'more finding')}, not shown (all in --format json)", style="dim"))
            console.print()

        # 4. what --ignore accepted: not judged, never hidden.
        if report.suppressed:
            print_hanging(console, Text(printable(suppressed_line(report)), style="dim"), rest="  ")

        # 5. one-line summary.
        counts = severity_counts(report.findings)
        per_severity = ", ".join(f"{n} {name}" for name, n in counts.items())
        if report.verdict is Verdict.CLEAN:
            worst = report.worst()
            if worst is None:
                summary = Text(
                    f"clean: no findings ({plural(len(report.detectors_run), 'detector')} run "
                    f"in {report.seconds:.2f} s{'; ' + more if (more := more_detectors(report)) else ''})",
                    style="green",
                )
            else:  # a clean verdict's findings are all below medium (inspect.judge)
                floor = Severity(int(worst) + 1)
                summary = Text(
                    f"clean: no findings at or above {floor} "
                    f"({plural(len(report.findings), 'lower finding')}: {per_severity})",
                    style="green",
                )
        else:
            summary = Text(f"{plural(len(report.findings), 'finding')}: {per_severity}")
        if note := exit_note(report):
            summary.append(f" ({note})")
        console.print(summary, soft_wrap=True)  # one line whatever its length, for a script's `tail -n 1`
        return "".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines())
