"""Side-by-side benchmark harness.

A :class:`Comparison` holds a candidate and a baseline that do the same work
(and report how many units they did). Runs alternate candidate and baseline,
so both see the same machine state; the table reports the median rate of each
and their ratio. Timing lives here, never in tests.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable


class TimeLimitExceeded(Exception):
    """A baseline stopped at its time limit: its rate is at most units / limit."""

    def __init__(self, units: int, limit_s: float):
        super().__init__(f"stopped after {limit_s:.0f}s")
        self.units, self.limit_s = units, limit_s


@dataclass
class Comparison:
    name: str
    candidate: Callable[[], int]  # returns units of work done
    baseline: Callable[[], int]
    unit: str = "items"
    repeats: int = 3
    warmup: int = 0  # untimed alternating rounds first (JIT, caches, connection pools)
    setup: Callable[[], None] | None = None  # run before every timed call, untimed
    notes: str | Callable[[], str] = ""  # a callable is read after the runs (e.g. percentiles)


@dataclass
class Result:
    name: str
    unit: str
    candidate_per_s: float
    baseline_per_s: float
    ratio: float
    candidate_s: list[float] = field(default_factory=list)
    baseline_s: list[float] = field(default_factory=list)
    notes: str = ""
    baseline_timed_out: bool = False  # then baseline_per_s is an upper bound and ratio a lower bound


def over(items: list, fn: Callable, rounds: int = 1) -> Callable[[], int]:
    """A timed body: ``fn`` on every item, ``rounds`` times; its unit count is the calls made."""

    def go() -> int:
        for _ in range(rounds):
            for item in items:
                fn(item)
        return rounds * len(items)

    return go


def _timed(fn: Callable[[], int], setup) -> tuple[float, int]:
    if setup:
        setup()
    start = time.perf_counter()
    units = fn()
    return time.perf_counter() - start, units


def run_comparison(c: Comparison, progress: Callable[[str], None] = lambda m: None) -> Result:
    cand, base = [], []
    timed_out = False
    for i in range(c.warmup):
        progress(f"{c.name}: warm-up {i + 1}/{c.warmup}")
        _timed(c.candidate, c.setup)
        try:
            _timed(c.baseline, c.setup)
        except TimeLimitExceeded:  # a warm-up is not measured: its time limit ends it, no more
            pass
    for i in range(c.repeats):
        progress(f"{c.name}: round {i + 1}/{c.repeats}")
        seconds, units_c = _timed(c.candidate, c.setup)
        cand.append(units_c / seconds)
        try:
            seconds_b, units_b = _timed(c.baseline, c.setup)
        except TimeLimitExceeded as stop:
            seconds_b, units_b, timed_out = stop.limit_s, stop.units, True
        base.append(units_b / seconds_b)
        if units_c != units_b:
            raise AssertionError(f"{c.name}: candidate did {units_c} {c.unit}, baseline {units_b}: not the same work")
    cand_rate, base_rate = statistics.median(cand), statistics.median(base)
    notes = c.notes() if callable(c.notes) else c.notes
    return Result(c.name, c.unit, cand_rate, base_rate, cand_rate / base_rate,
                  [round(x, 2) for x in cand], [round(x, 2) for x in base], notes, timed_out)


def format_table(results: list[Result]) -> str:
    header = f"{'benchmark':<44} {'candidate':>16} {'baseline':>16} {'ratio':>8}"
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r.name:<44} {r.candidate_per_s:>11.1f} {r.unit[:3]}/s "
            f"{'<' if r.baseline_timed_out else ' '}{r.baseline_per_s:>10.2f} {r.unit[:3]}/s "
            f"{'>' if r.baseline_timed_out else ' '}{r.ratio:>6.1f}x"
        )
    return "\n".join(lines)


def write_json(results: list[Result], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(r) for r in results], indent=2))
