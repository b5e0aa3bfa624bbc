"""The audit report's sentences, shared by its text and HTML renderers: the thresholds, the threat model, the
defense and the exposure across rounds, each as a person reads it."""

from __future__ import annotations

from typing import Mapping

from fedguard.defenses import WEAK_EPSILON
from fedguard.exposure import TOO_FEW_VALUES
from fedguard.types import AuditReport

from .base import fmt_num, plural

__all__ = ["thresholds_said", "threat_items", "defense_summary", "exposure_summary", "accepted_said"]


def thresholds_said(report: AuditReport) -> str:
    """The leakage levels' thresholds in one sentence."""
    t, baseline = report.leakage.thresholds, report.leakage.baseline_psnr
    return (f"levels per example, counted only {t['low_psnr_over_baseline']:g} dB / {t['ssim_over_baseline']:g} SSIM above the "
            f"no-update guess (public mean image or a class mean; mean {fmt_num(baseline)} dB): high >= {t['high_psnr']:g} dB "
            f"or SSIM >= {t['high_ssim']:g}; medium >= {t['medium_psnr']:g} dB or SSIM >= {t['medium_ssim']:g}; low above the "
            f"baseline or SSIM >= {t['low_ssim']:g}; a flat reconstruction none")  # fmt: skip


def threat_items(report: AuditReport) -> list[str]:
    """What the threat model grants the server, as the items of one line."""
    t, public = report.threat, report.data.get("auxiliary_examples") or 0
    items = ["server knows: the model and batch size", "the true labels" if t.get("labels") == "known" else "labels inferred"]
    if report.update.get("protocol") == "fedavg":
        items.append("the local schedule" if t.get("local_schedule") else "not the local schedule")
    items.append(plural(public, "public example") if t.get("auxiliary_data") and public else "no public data")
    return items


def defense_summary(update: Mapping) -> str | None:
    """The update's defense: applied here (``defense_settings``; DP-SGD's epsilon computed for this round) or as
    declared, with its DP guarantee when it has one (``unknown`` for a file, whose defense fedguard does not tell);
    None for ``none``, an update fedguard computed without one."""
    if update.get("defense", "none") == "none":
        return None
    text = f"defense {update.get('defense')}"
    settings = update.get("defense_settings")
    if settings is not None:
        shown = ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in settings.items() if k != "delta")
        bound = (f"; epsilon {update['epsilon']:.3g} at delta {update['delta']:g} for this round, one example replaced, "
                 "Opacus RDP accountant" if update.get("epsilon") is not None else "")  # fmt: skip
        if update.get("epsilon") is not None and update["epsilon"] > WEAK_EPSILON:
            bound += f"; above {WEAK_EPSILON:g}, a weak guarantee: the level measures only the attacks run"
        return f"{text} applied here ({shown}{bound})"
    guarantee = [f"{k} {update[k]:g}" for k in ("epsilon", "delta") if update.get(k) is not None]
    return text + (f" ({', '.join(guarantee)}, as declared)" if guarantee else "")


def nearest_estimate(scenario: Mapping) -> str | None:
    """For a scenario whose client was not exposed, how near the server's estimate of its update came over the rounds
    attacked (the least relative error), in words; None where no estimate was made. Not exposed means not within
    the target error: an estimate 10 % off can still be near enough for the attacks on the update."""
    points = ((scenario.get("detail") or {}).get("points")) or []
    tried = [(p["client_error"], p["rounds"]) for p in points if p.get("client_error") is not None]
    if not tried:
        return None
    error, rounds = min(tried)
    return f"the nearest estimate of it {error:.0%} off, at {plural(rounds, 'round')}"


def exposure_summary(exposure: Mapping) -> str:
    """One sentence on the configured federation's exposure (also used by the HTML page)."""
    st = exposure["settings"]
    where = (f"{plural(st['users_per_round'], 'user')} per round (participation {st['participation']:g}, {st['users']} in all), "
             f"counts per {plural(st['window'], 'round')}" + (f", noise {st['noise']:g} on the sums" if st["noise"] else ""))
    if exposure["outcome"] == "exposed" and st["users"] == 1:
        return (f"secure aggregation cannot hide this update: with {where}, each round's sum is this update alone, "
                f"recovered after {plural(exposure['rounds_to_exposure'], 'round')}")
    if exposure["outcome"] == "exposed":
        bound = " or fewer (time limits cut the attack short at fewer rounds)" if exposure["scenarios"][0].get("note") else ""
        return (f"secure aggregation hides this update for only {plural(exposure['rounds_to_exposure'], 'round')}{bound}: "
                f"with {where}, gradient disaggregation recovers it once it stays the same that long (it stays "
                f"{st['stable_rounds']})")  # fmt: skip
    if exposure["outcome"] == "not identifiable" and TOO_FEW_VALUES in (exposure["scenarios"][0].get("note") or ""):
        return (f"with {where}, the update has fewer non-zero values than there are users, too few for gradient "
                "disaggregation to single it out, however many rounds it stays the same")
    if exposure["outcome"] == "not identifiable":
        stable = plural(st["stable_rounds"], "stable round")
        return f"with {where}, {stable} {'is' if st['stable_rounds'] == 1 else 'are'} too few for gradient disaggregation to single it out"
    if exposure["outcome"] == "not exposed" and st["participation"] == 1:
        return (f"with {where}, every user is in every round: each sum holds all the updates alike, so gradient "
                "disaggregation cannot single this one out (the sums still reveal the federation's total)")
    if exposure["outcome"] == "not exposed":
        nearest = nearest_estimate(exposure["scenarios"][0])
        return (f"with {where}, gradient disaggregation did not recover this update to within "
                f"{exposure['target_error']:.0%} in {plural(st['stable_rounds'], 'round')}" + (f" ({nearest})" if nearest else ""))
    configured = exposure["scenarios"][0]
    if exposure["outcome"] == "cut short":  # what it found bounds nothing beyond the rounds it reached
        return (f"with {where}, the analysis was cut short ({configured['note']}); a server with more time may still "
                f"recover this update within {st['stable_rounds']} rounds")
    return "the exposure analysis did not run" + (f" ({configured['note']})" if configured["note"] else "")


def accepted_said(report: AuditReport) -> str | None:
    """The received model's findings the client accepted with ``--ignore``, and the entries that matched none (said
    on stderr only, which ``-q`` silences), in one sentence; None when neither."""
    inspection = report.model.get("inspection", {})
    accepted, unmatched = inspection.get("suppressed") or [], inspection.get("ignore_unmatched") or []
    said = []
    if accepted:
        found = ", ".join(f"{f['rule_id']} {f['severity']} in {f['layer'] if f['layer'] is not None else '(file)'}"
                          for f in accepted)  # fmt: skip
        said.append(f"accepted with --ignore, not judged: fedguard inspect's {found} on the received model")
    if unmatched:
        said.append(f"--ignore entries that matched no finding: {', '.join(unmatched)}")
    return "; ".join(said) or None
