"""Seeds as replicates: each arm of a sweep as a distribution, and the paper's claims tested.

An arm is one combination of a sweep's axes other than the replicate key (usually `seed`). Per
arm and metric: n, mean, sample std and the 95% t-interval of the mean. Metrics of a trial:

  top1_error         the final top-1 error (%) of a trial that finished (done or stalled); a
                     diverged or unfinished trial has none (the arm table counts outcomes);
  first_epoch_below  the first evaluated epoch whose top-1 error is below `threshold` (%); a
                     trial that never gets there counts as its last epoch + 1 (censored; the
                     arm table says how many were).

Claims are written in the sweep config before any run (`claims`, copied into sweep.json), each
with the verdict rule fixed in advance:

  {"claim": TEXT, "metric": M, "lower": ARM, "higher": ARM[, "threshold": T]}
      the Welch 95% interval of mean(higher) - mean(lower) lies above 0: "reproduces"; below
      0: "contradicts"; otherwise "inconclusive".
  {"claim": TEXT, "stalls": ARM}      every replicate stalled: "reproduces"; none: "contradicts";
                                      some: "inconclusive".
  {"claim": TEXT, "converges": ARM}   every replicate finished without stalling or diverging:
                                      "reproduces"; none did: "contradicts"; some: "inconclusive".

ARM is a dict of axis values that picks exactly one arm, e.g. {"model.activation": "prelu"}.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from rectifiers_jax.analysis.sweep_table import TrialResult

METRICS = ("top1_error", "first_epoch_below")
VERDICTS = ("reproduces", "contradicts", "inconclusive")
CONFIDENCE = 0.95
# Outcomes whose last evaluation is a final error (sweep_table's outcomes).
FINISHED = ("done", "stalled")


@dataclasses.dataclass(frozen=True)
class Summary:
    """A sample's n, mean, std (ddof 1) and 95% t-interval of the mean; `censored` counts
    stand-in values (first_epoch_below of trials that never got below the threshold)."""

    n: int
    mean: float
    std: float
    low: float
    high: float
    censored: int = 0

    @classmethod
    def of(cls, values: Sequence[float], censored: int = 0) -> Summary:
        x = np.asarray(values, np.float64)
        n = len(x)
        if n == 0:
            return cls(0, math.nan, math.nan, math.nan, math.nan, censored)
        std = float(x.std(ddof=1)) if n > 1 else math.nan
        half = stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * std / math.sqrt(n) if n > 1 else math.nan
        mean = float(x.mean())
        return cls(n, mean, std, mean - half, mean + half, censored)

    def text(self, digits: int = 2) -> str:
        """`mean ± std [low, high]`, e.g. `3.61 ± 1.20 [2.12, 5.10]`."""
        f = f".{digits}f"
        return f"{self.mean:{f}} ± {self.std:{f}} [{self.low:{f}}, {self.high:{f}}]"


@dataclasses.dataclass(frozen=True)
class Arm:
    """The replicates of one combination of the non-replicate axes."""

    label: str
    overrides: dict[str, Any]
    trials: tuple[TrialResult, ...]

    def values(self, metric: str, threshold: float | None = None) -> tuple[list[float], int]:
        """(one value per replicate that has one, how many are censored stand-ins)."""
        if metric == "top1_error":
            finished = [t for t in self.trials if t.outcome in FINISHED]
            return [t.top1_error for t in finished if t.top1_error is not None], 0
        if metric == "first_epoch_below":
            if threshold is None:
                raise ValueError("first_epoch_below needs a threshold (percent top-1 error)")
            values, censored = [], 0
            for trial in self.trials:
                below = [epoch for epoch, error in trial.evals if error < threshold]
                if below:
                    values.append(below[0])
                elif trial.evals:
                    values.append(trial.evals[-1][0] + 1)
                    censored += 1
            return values, censored
        raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")

    def summary(self, metric: str, threshold: float | None = None) -> Summary:
        values, censored = self.values(metric, threshold)
        return Summary.of(values, censored)


def arms(
    summary: Mapping[str, Any], results: Sequence[TrialResult], replicate_key: str
) -> list[Arm]:
    """The sweep's arms in sweep order: trials grouped by every axis but `replicate_key`."""
    if replicate_key not in summary["axes"]:
        raise ValueError(
            f"replicate key {replicate_key!r} is not an axis of this sweep "
            f"(axes: {', '.join(summary['axes'])})"
        )
    replicate_label = summary["labels"][replicate_key]
    grouped: dict[tuple, list[TrialResult]] = {}
    for result in results:
        key = tuple((k, repr(v)) for k, v in result.overrides.items() if k != replicate_key)
        grouped.setdefault(key, []).append(result)
    found = []
    for key, trials in grouped.items():
        # The trial name without its replicate part: "variant=prelu" of "variant=prelu,seed=0".
        parts = [p for p in trials[0].name.split(",") if p.split("=")[0] != replicate_label]
        overrides = {k: trials[0].overrides[k] for k, _ in key}
        found.append(Arm(",".join(parts) or "all", overrides, tuple(trials)))
    return found


def _pick(all_arms: Sequence[Arm], wanted: Mapping[str, Any], claim: str) -> Arm:
    found = [a for a in all_arms if all(a.overrides.get(k) == v for k, v in wanted.items())]
    if len(found) != 1:
        raise ValueError(
            f"claim {claim!r}: {dict(wanted)} picks {len(found)} arms of the sweep, not one"
        )
    return found[0]


def welch_interval(higher: Sequence[float], lower: Sequence[float]) -> tuple[float, float, float]:
    """(difference of means, low, high): the Welch 95% interval of mean(higher) - mean(lower)."""
    a, b = np.asarray(higher, np.float64), np.asarray(lower, np.float64)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    diff = float(a.mean() - b.mean())
    if va + vb == 0:
        return diff, diff, diff
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, dof) * math.sqrt(va + vb)
    return diff, diff - half, diff + half


def judge(claim: Mapping[str, Any], all_arms: Sequence[Arm]) -> dict[str, Any]:
    """The claim's verdict by its pre-registered rule (module docstring), with its numbers."""
    text = claim["claim"]
    if "lower" in claim:
        metric, threshold = claim["metric"], claim.get("threshold")
        lower = _pick(all_arms, claim["lower"], text)
        higher = _pick(all_arms, claim["higher"], text)
        low_values = lower.values(metric, threshold)[0]
        high_values = higher.values(metric, threshold)[0]
        if min(len(low_values), len(high_values)) < 2:
            return {"claim": text, "verdict": "inconclusive", "evidence": "fewer than 2 replicates"}
        diff, low, high = welch_interval(high_values, low_values)
        verdict = "reproduces" if low > 0 else "contradicts" if high < 0 else "inconclusive"
        evidence = (
            f"{metric}: {higher.label} minus {lower.label} = {diff:.2f} "
            f"[{low:.2f}, {high:.2f}] (Welch 95%)"
        )
        return {"claim": text, "verdict": verdict, "evidence": evidence}
    kind = "stalls" if "stalls" in claim else "converges"
    arm = _pick(all_arms, claim[kind], text)
    outcomes = [t.outcome for t in arm.trials]
    hits = sum((o == "stalled") if kind == "stalls" else (o == "done") for o in outcomes)
    verdict = (
        "reproduces" if hits == len(outcomes) else "contradicts" if hits == 0 else "inconclusive"
    )
    evidence = f"{arm.label}: {hits} of {len(outcomes)} {'stalled' if kind == 'stalls' else 'done'}"
    return {"claim": text, "verdict": verdict, "evidence": evidence}


def arm_rows(all_arms: Sequence[Arm], claims: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per arm: n, and every metric the claims use (always top1_error)."""
    used = {("top1_error", None)} | {
        (c["metric"], c.get("threshold")) for c in claims if "metric" in c
    }
    rows = []
    for arm in all_arms:
        row: dict[str, Any] = {"arm": arm.label, "n": len(arm.trials)}
        for metric, threshold in sorted(used, key=lambda m: METRICS.index(m[0])):
            s = arm.summary(metric, threshold)
            name = metric if threshold is None else f"{metric} {threshold:g}"
            row[f"{name} mean ± std [95% CI]"] = s.text()
            if metric == "first_epoch_below":
                row[f"{name} censored"] = s.censored
        row["outcomes"] = ", ".join(
            f"{sum(t.outcome == o for t in arm.trials)} {o}"
            for o in dict.fromkeys(t.outcome for t in arm.trials)
        )
        rows.append(row)
    return rows
