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


def test_a_bench_run_removes_every_temporary_folder_its_suites_made(monkeypatch, tmp_path):
    import contextlib
    import sys
    import tempfile
    import types
    from pathlib import Path

    import bench.__main__ as bench_main

    made = []

    def comparisons(quick=False):
        folder = Path(tempfile.mkdtemp(prefix="suite-"))  # as bench/embeddings.py makes its corpus
        (folder / "feature_store.db").write_bytes(b"x" * 1024)
        made.append(folder)
        if len(made) == 2:
            raise RuntimeError("a suite failing half way")
        return [Comparison("fake: work", candidate=lambda: 1, baseline=lambda: 1, repeats=1)]

    monkeypatch.setitem(sys.modules, "bench_fake_suite", types.SimpleNamespace(comparisons=comparisons))
    monkeypatch.setattr(bench_main, "SUITES", ["bench_fake_suite"])
    monkeypatch.setattr(bench_main, "services_left_as_found", contextlib.nullcontext)  # no service here
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the run's own folder goes
    assert bench_main.main(["--quick"]) == 0
    with pytest.raises(RuntimeError, match="half way"):
        bench_main.main(["--quick"])
    assert len(made) == 2 and made[0].parent != made[1].parent
    assert all(folder.parent.parent == tmp_path for folder in made)
    assert not any(folder.exists() or folder.parent.exists() for folder in made)
    assert tempfile.tempdir == str(tmp_path) and list(tmp_path.iterdir()) == []
