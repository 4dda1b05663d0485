"""Statistics for ``wasmsbx bench``: sample summaries and the noise-aware baseline check.

Pure functions over lists of floats, no third-party imports, so they are easy to test
on known samples.

Outliers: a sample is an outlier when it lies outside Tukey's fences,
``Q1 - 1.5*IQR`` and ``Q3 + 1.5*IQR`` (quartiles by linear interpolation, as numpy's
default). Outliers are counted (low and high) and left out of ``mean`` and ``stdev``;
``min``, ``median``, ``p95`` and ``max`` use every sample. ``throughput`` is operations
per second at the median.

Regressions: a phase regresses when its median is slower than the baseline's by more
than the threshold *and* the slowdown is larger than the noise: ``NOISE_K`` combined
standard errors of the two medians, ``sqrt(se_base^2 + se_now^2)`` with
``se = 1.2533 * 1.4826 * MAD / sqrt(samples)`` (the MAD scaled to a standard deviation,
times the standard error of a median for normal data). A phase whose medians cannot be
told apart at about 95 % cannot fail, whatever the threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

TUKEY_K = 1.5
MAD_TO_SIGMA = 1.4826
MEDIAN_SE = 1.2533  # sqrt(pi / 2): standard error of a median, in sigma / sqrt(n)
NOISE_K = 2.0
OUTLIER_METHOD = "tukey-1.5iqr"


def percentile(ordered: Sequence[float], q: float) -> float:
    """The q-th quantile (0..1) of sorted data, linear interpolation (numpy's default)."""
    if not ordered:
        raise ValueError("percentile of no samples")
    pos = (len(ordered) - 1) * q
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median(values: Sequence[float]) -> float:
    return percentile(sorted(values), 0.5)


def mad(values: Sequence[float]) -> float:
    """Median absolute deviation from the median (unscaled)."""
    centre = median(values)
    return median([abs(v - centre) for v in values])


def stdev(values: Sequence[float]) -> float:
    """Sample standard deviation (n - 1); 0 for fewer than two samples."""
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


@dataclass
class Stats:
    """A summary of per-operation times in seconds (each sample is one block of operations)."""

    samples: int
    ops_per_sample: int
    min: float
    max: float
    median: float
    mean: float
    p95: float
    stdev: float
    mad: float
    q1: float
    q3: float
    iqr: float
    throughput: Optional[float]  # None if the median is 0 (below the timer's resolution)
    outliers_low: int
    outliers_high: int
    values: list = field(default_factory=list)

    @property
    def outliers(self) -> int:
        return self.outliers_low + self.outliers_high

    @property
    def spread(self) -> float:
        """Robust standard deviation: 1.4826 * MAD."""
        return MAD_TO_SIGMA * self.mad

    def to_dict(self) -> dict:
        return {
            "samples": self.samples,
            "ops_per_sample": self.ops_per_sample,
            "min": self.min,
            "max": self.max,
            "median": self.median,
            "mean": self.mean,
            "p95": self.p95,
            "stdev": self.stdev,
            "mad": self.mad,
            "q1": self.q1,
            "q3": self.q3,
            "iqr": self.iqr,
            "throughput": self.throughput,
            "outliers": {
                "method": OUTLIER_METHOD,
                "low": self.outliers_low,
                "high": self.outliers_high,
            },
            "values": list(self.values),
        }


def summarize(values: Sequence[float], ops_per_sample: int = 1) -> Stats:
    """Summary statistics of per-operation times (seconds)."""
    if not values:
        raise ValueError("no samples to summarize")
    ordered = sorted(values)
    q1, q3 = percentile(ordered, 0.25), percentile(ordered, 0.75)
    iqr = q3 - q1
    low_fence, high_fence = q1 - TUKEY_K * iqr, q3 + TUKEY_K * iqr
    inside = [v for v in values if low_fence <= v <= high_fence]
    inside_lo, inside_hi = min(inside), max(inside)  # keeps rounding from leaving the range
    mid = percentile(ordered, 0.5)
    return Stats(
        samples=len(values),
        ops_per_sample=ops_per_sample,
        min=ordered[0],
        max=ordered[-1],
        median=mid,
        mean=min(max(math.fsum(inside) / len(inside), inside_lo), inside_hi),
        p95=percentile(ordered, 0.95),
        stdev=stdev(inside),
        mad=mad(values),
        q1=q1,
        q3=q3,
        iqr=iqr,
        throughput=(1.0 / mid) if mid > 0 else None,
        outliers_low=sum(1 for v in values if v < low_fence),
        outliers_high=sum(1 for v in values if v > high_fence),
        values=list(values),
    )


# ---------------------------------------------------------------------------- baselines


@dataclass
class Delta:
    """One phase of one case on one backend, now against the baseline."""

    case: str
    backend: str
    phase: str
    base_median: Optional[float]
    median: Optional[float]
    change: Optional[float]  # relative: +0.12 = 12 % slower
    noise: Optional[float]  # relative: NOISE_K * combined standard error / base median
    verdict: str  # faster | slower | same | regression | new | missing

    @property
    def regression(self) -> bool:
        return self.verdict == "regression"

    def to_dict(self) -> dict:
        return {
            "case": self.case,
            "backend": self.backend,
            "phase": self.phase,
            "base_median": self.base_median,
            "median": self.median,
            "change": self.change,
            "noise": self.noise,
            "verdict": self.verdict,
        }


def median_error(stats: dict) -> float:
    """Standard error of a median from its samples' MAD (normal approximation)."""
    samples = max(1, int(stats.get("samples") or 1))
    return MEDIAN_SE * MAD_TO_SIGMA * float(stats["mad"]) / math.sqrt(samples)


def judge(base: dict, now: dict, threshold: Optional[float]) -> tuple:
    """(change, noise, verdict) for two phase summaries (dicts with median, mad, samples).

    ``threshold`` is a fraction (0.10 for 10 %); without one, slowdowns beyond the
    noise are "slower", never "regression".
    """
    b, n = float(base["median"]), float(now["median"])
    if b <= 0:
        return None, None, "same"
    noise_abs = NOISE_K * math.hypot(median_error(base), median_error(now))
    change, noise = n / b - 1.0, noise_abs / b
    diff = n - b
    if abs(diff) <= noise_abs:
        return change, noise, "same"
    if diff < 0:
        return change, noise, "faster"
    if threshold is not None and change > threshold:
        return change, noise, "regression"
    return change, noise, "slower"


def _phases_by_key(report: dict) -> dict:
    """(case, backend label, phase) -> phase stats dict, for successful measurements."""
    out = {}
    for case in report.get("cases", []):
        for result in case.get("results", []):
            for phase, data in (result.get("phases") or {}).items():
                if data.get("stats"):
                    out[(case["name"], result["label"], phase)] = data["stats"]
    return out


def compare(base_report: dict, report: dict, threshold: Optional[float] = None) -> list:
    """Per-phase deltas of ``report`` against ``base_report`` (both report dicts)."""
    base, now = _phases_by_key(base_report), _phases_by_key(report)
    deltas = []
    for key in list(now) + [k for k in base if k not in now]:
        case, label, phase = key
        if key not in base:
            deltas.append(Delta(case, label, phase, None, now[key]["median"], None, None, "new"))
        elif key not in now:
            deltas.append(
                Delta(case, label, phase, base[key]["median"], None, None, None, "missing")
            )
        else:
            change, noise, verdict = judge(base[key], now[key], threshold)
            deltas.append(
                Delta(
                    case,
                    label,
                    phase,
                    base[key]["median"],
                    now[key]["median"],
                    change,
                    noise,
                    verdict,
                )
            )
    return deltas


def parse_threshold(text: str) -> float:
    """ "10%" or "10" -> 0.10. Raises ValueError with a readable message."""
    raw = str(text).strip()
    number = raw[:-1].strip() if raw.endswith("%") else raw
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"expected a percentage like 10% or 2.5%, found {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"expected a percentage >= 0, found {text!r}")
    return value / 100.0
