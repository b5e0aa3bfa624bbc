"""Output of ``fedguard disaggregate``: text for people, versioned JSON for scripts.

The JSON document is described by ``schemas/disaggregate-report.schema.json``
(``schema_version`` ``MAJOR.MINOR`` as for the inspect report; field-by-field
notes in ``docs/disaggregation.md``). Sample::

    {
      "schema_version": "1.3",
      "tool": {"name": "fedguard", "version": "0.1.0"},
      "command": "disaggregate",
      "command_line": ["fedguard", "disaggregate", "rounds.npz", "-o", "report.json"],
      "source": {"kind": "file", "path": "rounds.npz"},
      "settings": {"time_limit": 60.0, "workers": 2, "seed": 0},
      "rounds": 200, "users": 50, "dim": 200, "window": 10,
      "noise_scale": 0.0, "noise_estimated": true, "rank": 50,
      "users_recovered": 50, "users_exact": 50, "users_approximate": 0, "users_failed": 0,
      "status": ["exact", ...], "stage": ["projection", ...],
      "stages": {"zero": 0, "projection": 50, "search": 0, "milp": 0, "none": 0}, "interchangeable": [],
      "participation": [[0, 1, ...], ...],
      "seconds": 0.41, "seconds_per_user": 0.008,
      "updates_file": "report.json-updates.npz",
      "score": null,
      "notes": []
    }
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from fedguard import __version__
from fedguard.attacks.disaggregation import Disaggregation, Score
from fedguard.reports.base import command_line, plural, printable, printable_values

__all__ = ["SCHEMA_VERSION", "disaggregation_to_dict", "render_disaggregation"]

SCHEMA_VERSION = "1.3"
FORMATS = ("text", "json")


def disaggregation_to_dict(
    result: Disaggregation,
    source: Mapping[str, Any],
    dim: int,
    score: Score | None = None,
    updates_file: str | None = None,
) -> dict[str, Any]:
    """The JSON document for one run of the attack as plain Python values.

    ``source`` says where the rounds came from (``{"kind": "file", "path": ...}``
    or ``{"kind": "simulation", ...settings}``); ``score`` is only known for a
    simulation.
    """
    rounds = int(result.participation.shape[0])
    return printable_values({
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "fedguard", "version": __version__},
        "command": "disaggregate",
        "command_line": command_line(),
        "source": dict(source),
        "settings": dict(result.settings),
        "rounds": rounds,
        "users": result.n_users,
        "dim": int(dim),
        "window": int(result.window),
        "noise_scale": float(result.noise_scale),
        "noise_estimated": bool(result.noise_estimated),
        "rank": int(result.rank),
        "users_recovered": result.users_recovered,
        "users_exact": result.users_exact,
        "users_approximate": result.users_approximate,
        "users_failed": result.users_failed,
        "status": list(result.status),
        "stage": list(result.stage),
        "stages": result.stage_counts(),
        "interchangeable": [list(group) for group in result.interchangeable],
        "participation": result.participation.astype(int).tolist(),
        "seconds": float(result.seconds),
        "seconds_per_user": float(result.seconds / max(result.n_users, 1)),
        "updates_file": updates_file,
        "score": score.to_dict() if score is not None else None,
        "notes": list(result.notes),
    })  # fmt: skip


def _text(doc: Mapping[str, Any]) -> str:
    users = doc["users"]
    lines = [
        f"fedguard disaggregate: {doc['rounds']} rounds x d={doc['dim']}, {plural(users, 'user')}, counts per {plural(doc['window'], 'round')}",
        f"  recovered: {doc['users_recovered']}/{users} users' updates, {doc['users_exact']}/{users} columns exact"
        f" (approximate {doc['users_approximate']}, failed {doc['users_failed']}"
        + (f"; {absent} never took part: exact column, no update in the sums" if (absent := doc["stages"]["zero"]) else "")
        + ")",
        f"  noise scale {doc['noise_scale']:.3g} ({'estimated' if doc['noise_estimated'] else 'given'}),"
        f" rank {doc['rank']}",
        "  found by: " + ", ".join(f"{k} {v}" for k, v in doc["stages"].items() if v),
        f"  time: {doc['seconds']:.2f} s total, {1000 * doc['seconds_per_user']:.1f} ms per user",
    ]
    score = doc["score"]
    if score is not None:
        err = score["update_error"]
        lines.append(
            f"  against the truth: P {'exact' if score['matrix_exact'] else 'not exact'},"
            f" {score['users_exact']}/{score['users']} columns right,"
            f" {score['claimed_exact_wrong']} wrongly claimed exact,"
            f" update relative error {'n/a' if err is None else f'{err:.2e}'}"
        )
    if doc["updates_file"]:
        lines.append(f"  recovered updates: {printable(doc['updates_file'])}")  # kept exact in the JSON only
    for note in doc["notes"]:
        lines.append(f"  note: {note}")
    exposed = doc["users_recovered"]  # not users_exact: one who never took part has an exact column but no update in the sums
    known = doc["users_exact"] - doc["stages"]["zero"]
    if exposed:
        shared = sum(len(group) for group in doc["interchangeable"])
        lines.append(
            f"  => secure aggregation did not hide {plural(exposed, 'user')}: their individual updates are recoverable"
            + (f" ({shared} of them as a set among users with the same counts: whose is whose stays unknown)"
               if shared else "")
        )  # fmt: skip
    elif known or doc["users_approximate"]:
        approximate = doc["users_approximate"]
        absent = doc["stages"]["zero"]  # exact columns the recovered line counts: users who never took part
        found = (f"{known} of {users} users' rounds recovered exactly" if known else "no user's rounds certified exact") + (
            f" ({absent} more never took part)" if absent else "")
        estimated = (f", {approximate} estimated (estimated rounds are often right, see docs/disaggregation.md: this is "
                     "no sign that secure aggregation hid them)" if approximate else "")  # fmt: skip
        lines.append(f"  => {found}{estimated}; no update is certified, since a column that is not exact shifts "
                     "every least-squares estimate by an unknown amount")  # fmt: skip
    else:
        lines.append("  => no user's individual update was recovered from these sums")
    return "\n".join(lines) + "\n"


def render_disaggregation(fmt: str, doc: Mapping[str, Any]) -> str:
    """Render the document from :func:`disaggregation_to_dict` as ``text`` or ``json``."""
    if fmt == "json":
        return json.dumps(doc, indent=2) + "\n"
    if fmt == "text":
        return _text(doc)
    raise KeyError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
