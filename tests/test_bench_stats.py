"""Statistics of wasmsbx bench on known samples, and the noise-aware baseline judgement."""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wasmsbx.bench.stats import (
    compare,
    judge,
    mad,
    median,
    parse_threshold,
    percentile,
    stdev,
    summarize,
)


def test_percentile_interpolates_linearly_like_numpy():
    data = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert percentile(data, 0.0) == 1.0
    assert percentile(data, 1.0) == 5.0
    assert percentile(data, 0.5) == 3.0
    assert percentile(data, 0.25) == 2.0
    assert percentile(data, 0.95) == pytest.approx(4.8)  # numpy.percentile(data, 95)
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([7.0], 0.95) == 7.0
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_median_mad_stdev_on_known_samples():
    data = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]
    assert median(data) == 4.5
    assert mad(data) == 0.5  # |x - 4.5| = 2.5 .5 .5 .5 .5 .5 2.5 4.5 -> median 0.5
    assert stdev(data) == pytest.approx(statistics.stdev(data))
    assert stdev([3.0]) == 0.0


def test_summarize_counts_outliers_and_keeps_them_out_of_mean_and_stdev():
    data = [10.0, 11.0, 12.0, 11.0, 10.0, 12.0, 11.0, 100.0, 1.0]
    s = summarize(data, ops_per_sample=7)
    # q1 = 10, q3 = 12, iqr = 2 -> fences 7 and 15: 100 is high, 1 is low
    assert (s.q1, s.q3, s.iqr) == (10.0, 12.0, 2.0)
    assert (s.outliers_low, s.outliers_high, s.outliers) == (1, 1, 2)
    inside = [10.0, 11.0, 12.0, 11.0, 10.0, 12.0, 11.0]
    assert s.mean == pytest.approx(statistics.mean(inside))
    assert s.stdev == pytest.approx(statistics.stdev(inside))
    # min, median, p95 and max use every sample
    assert (s.min, s.max, s.median) == (1.0, 100.0, 11.0)
    assert s.p95 == pytest.approx(percentile(sorted(data), 0.95))
    assert s.throughput == pytest.approx(1 / 11.0)
    assert s.samples == 9 and s.ops_per_sample == 7 and s.values == data
    d = s.to_dict()
    assert d["outliers"] == {"method": "tukey-1.5iqr", "low": 1, "high": 1}


def test_summarize_single_sample():
    s = summarize([0.5])
    assert (s.min, s.median, s.mean, s.p95, s.stdev, s.mad, s.outliers) == (
        0.5,
        0.5,
        0.5,
        0.5,
        0.0,
        0.0,
        0,
    )
    with pytest.raises(ValueError):
        summarize([])


@given(st.lists(st.floats(min_value=1e-9, max_value=1.0), min_size=1, max_size=60))
def test_summary_invariants(values):
    s = summarize(values)
    assert s.min <= s.q1 <= s.median <= s.q3 <= s.max
    assert s.median <= s.p95 <= s.max
    assert s.min <= s.mean <= s.max
    assert s.outliers < len(values)
    assert s.stdev >= 0 and s.mad >= 0


def phase(median_s: float, mad_s: float, samples: int = 1) -> dict:
    return {"median": median_s, "mad": mad_s, "samples": samples}


def test_judge_needs_both_threshold_and_noise():
    # 20 % slower, tight spread: a regression above a 10 % threshold
    assert judge(phase(1.0, 0.01), phase(1.2, 0.01), 0.10)[2] == "regression"
    # the same slowdown without a threshold is only "slower"
    assert judge(phase(1.0, 0.01), phase(1.2, 0.01), None)[2] == "slower"
    # 20 % slower but below a 25 % threshold
    assert judge(phase(1.0, 0.01), phase(1.2, 0.01), 0.25)[2] == "slower"
    # 20 % slower, but one sample each with MAD 0.1: se = 1.2533 * 1.4826 * 0.1 each,
    # band = 2 * sqrt(2) * se = 0.53 > 0.2
    change, noise, verdict = judge(phase(1.0, 0.1), phase(1.2, 0.1), 0.10)
    assert verdict == "same"
    assert change == pytest.approx(0.2)
    se = 1.2533 * 1.4826 * 0.1
    assert noise == pytest.approx(2 * math.hypot(se, se), rel=1e-4)
    # the same spread over 100 samples each narrows the band tenfold: now it is real
    change, noise, verdict = judge(phase(1.0, 0.1, 100), phase(1.2, 0.1, 100), 0.10)
    assert verdict == "regression"
    assert noise == pytest.approx(2 * math.hypot(se, se) / 10, rel=1e-4)
    # faster beyond the noise
    assert judge(phase(1.0, 0.01), phase(0.5, 0.01), 0.10)[2] == "faster"
    # identical
    assert judge(phase(1.0, 0.0), phase(1.0, 0.0), 0.10)[2] == "same"


def report(*entries) -> dict:
    """A synthetic report: entries of (case, label, phase, median, mad)."""
    cases: dict = {}
    for case, label, name, med, spread in entries:
        results = cases.setdefault(case, {})
        results.setdefault(label, {})[name] = {"stats": phase(med, spread)}
    return {
        "cases": [
            {"name": case, "results": [{"label": lb, "phases": ph} for lb, ph in res.items()]}
            for case, res in cases.items()
        ]
    }


def test_compare_matches_case_backend_phase_and_reports_new_and_missing():
    base = report(
        ("add", "wasmtime", "call", 1e-6, 1e-9),
        ("add", "wasmtime", "compile", 1e-3, 1e-6),
        ("gone", "wasmtime", "call", 1e-6, 1e-9),
    )
    now = report(
        ("add", "wasmtime", "call", 1.5e-6, 1e-9),
        ("add", "wasmtime", "compile", 0.5e-3, 1e-6),
        ("add", "wasmer:llvm", "call", 1e-6, 1e-9),
    )
    deltas = {(d.case, d.backend, d.phase): d for d in compare(base, now, 0.10)}
    assert deltas[("add", "wasmtime", "call")].verdict == "regression"
    assert deltas[("add", "wasmtime", "call")].change == pytest.approx(0.5)
    assert deltas[("add", "wasmtime", "compile")].verdict == "faster"
    assert deltas[("add", "wasmer:llvm", "call")].verdict == "new"
    assert deltas[("gone", "wasmtime", "call")].verdict == "missing"
    assert sum(d.regression for d in deltas.values()) == 1


@pytest.mark.parametrize(
    "text, value", [("10%", 0.10), ("10", 0.10), ("2.5%", 0.025), (" 0 % ", 0.0)]
)
def test_parse_threshold(text, value):
    assert parse_threshold(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["ten", "-5%", "%", "nan", "inf%"])
def test_parse_threshold_rejects(text):
    with pytest.raises(ValueError):
        parse_threshold(text)
