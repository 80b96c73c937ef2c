"""The benchmark harness: rounds alternate, warm-ups are not counted, unequal work is refused."""

import pytest

from bench.harness import Comparison, run_comparison


def test_warm_up_rounds_alternate_and_only_the_timed_rounds_are_reported():
    calls = []
    comparison = Comparison("x", candidate=lambda: calls.append("candidate") or 3,
                            baseline=lambda: calls.append("baseline") or 3, repeats=2, warmup=1,
                            setup=lambda: calls.append("setup"))
    result = run_comparison(comparison)
    assert calls == ["setup", "candidate", "setup", "baseline"] * 3
    assert len(result.candidate_s) == len(result.baseline_s) == 2 and result.ratio > 0


def test_a_baseline_doing_other_work_than_its_candidate_is_refused():
    with pytest.raises(AssertionError, match="not the same work"):
        run_comparison(Comparison("x", candidate=lambda: 2, baseline=lambda: 1, repeats=1))
