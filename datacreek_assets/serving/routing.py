"""The router's decisions, as plain functions: which side a request goes to, what a sliding
window of latencies says, and whether a canary is rolled back, kept or promoted."""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections import deque
from dataclasses import asdict, dataclass

from datacreek_assets.tenancy import validate_tenant_id

BUCKETS = 10_000  # canary weights resolve to 0.01 %
_VERSION = re.compile(r"base|v[1-9][0-9]{0,8}", re.ASCII)


class InvalidVersion(ValueError):
    pass


def validate_version(version: object) -> str:
    """Model versions are 'base' (the untuned base model) or 'v<N>' (registered model version N)."""
    if not isinstance(version, str) or _VERSION.fullmatch(version) is None:
        raise InvalidVersion(f"invalid model version {version!r}: 'base' or 'v' followed by a number, e.g. 'v3'")
    return version


def deployment_name(tenant: str, version: str) -> str:
    """`<tenant>-<version>`: the Ray Serve application and deployment of one model version."""
    return f"{validate_tenant_id(tenant)}-{validate_version(version)}"


def canary_bucket(tenant: str, request_id: str) -> int:
    """A request's bucket in [0, BUCKETS): a hash of tenant and request id, so a client's retries
    (same request id) always land on the same side, and tenants split independently."""
    digest = hashlib.blake2b(f"{tenant}\0{request_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


@dataclass(frozen=True)
class Route:
    """Where a tenant's traffic goes: the production version and, while one is live, a canary
    that receives `canary_weight` of the unpinned requests."""

    production: str
    canary: str | None = None
    canary_weight: float = 0.0

    def __post_init__(self) -> None:
        validate_version(self.production)
        if self.canary is not None:
            validate_version(self.canary)
        if not 0.0 <= self.canary_weight <= 1.0 or math.isnan(self.canary_weight):
            raise ValueError(f"canary weight {self.canary_weight} is not within [0, 1]")

    @property
    def live(self) -> tuple[str, ...]:
        return (self.production,) if self.canary is None else (self.production, self.canary)

    def choose(self, tenant: str, request_id: str) -> tuple[str, str]:
        """(version, role) for an unpinned request."""
        if self.canary is not None and canary_bucket(tenant, request_id) < round(self.canary_weight * BUCKETS):
            return self.canary, "canary"
        return self.production, "production"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class WindowStats:
    count: int
    p50_s: float | None
    p99_s: float | None
    errors: int = 0  # requests the deployment failed (5xx)

    @property
    def error_rate(self) -> float:
        return self.errors / self.count if self.count else 0.0


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), without numpy in the router's hot path."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class LatencyWindow:
    """Latencies (and failures) of the last `window_s` seconds (at most `max_samples` of them)."""

    def __init__(self, window_s: float, max_samples: int = 20_000):
        self.window_s = window_s
        self.samples: deque[tuple[float, float, bool]] = deque(maxlen=max_samples)

    def add(self, latency_s: float, now: float | None = None, ok: bool = True) -> None:
        self.samples.append((time.monotonic() if now is None else now, latency_s, ok))

    def stats(self, now: float | None = None) -> WindowStats:
        now = time.monotonic() if now is None else now
        since = now - self.window_s
        while self.samples and self.samples[0][0] < since:
            self.samples.popleft()
        # (samples reported late arrive out of order: each is judged by its own time)
        current = [(latency, ok) for at, latency, ok in self.samples if at >= since]
        values = [latency for latency, _ in current]
        if not values:
            return WindowStats(0, None, None)
        errors = sum(1 for _, ok in current if not ok)
        return WindowStats(len(values), percentile(values, 50), percentile(values, 99), errors)


@dataclass(frozen=True)
class CanaryPolicy:
    """When a canary is judged: both sides need `min_requests` in the window; it is rolled back
    when p99(canary) > `max_p99_ratio` x p99(production) and the two differ by more than
    `min_p99_gap_s` (a millisecond of scheduler jitter doubles a 4 ms p99: not a regression);
    promoted once it has been live for `promote_after_s` and served `promote_min_requests`."""

    min_requests: int = 20
    max_p99_ratio: float = 2.0
    min_p99_gap_s: float = 0.025
    promote_after_s: float = 300.0
    promote_min_requests: int = 100
    max_error_rate: float = 0.05  # a canary failing more often than this (and than production) goes too

    def __post_init__(self) -> None:
        if self.min_requests < 1 or self.promote_min_requests < 1:
            raise ValueError("request minimums must be at least 1")
        if self.max_p99_ratio <= 1.0:
            raise ValueError(f"max_p99_ratio {self.max_p99_ratio} must be above 1")
        if self.promote_after_s < 0 or self.min_p99_gap_s < 0:
            raise ValueError("promote_after_s and min_p99_gap_s must not be negative")
        if not 0 < self.max_error_rate < 1:
            raise ValueError(f"max_error_rate {self.max_error_rate} must be within (0, 1)")


@dataclass(frozen=True)
class Verdict:
    action: str  # wait | rollback | promote | keep
    reason: str
    canary: WindowStats
    production: WindowStats
    canary_total: int
    age_s: float

    def numbers(self) -> dict:
        return {"canary_requests_in_window": self.canary.count, "production_requests_in_window": self.production.count,
                "canary_errors_in_window": self.canary.errors, "production_errors_in_window": self.production.errors,
                "canary_p99_s": self.canary.p99_s, "production_p99_s": self.production.p99_s,
                "canary_p50_s": self.canary.p50_s, "production_p50_s": self.production.p50_s,
                "canary_requests_total": self.canary_total, "canary_age_s": round(self.age_s, 1)}


def judge_canary(canary: WindowStats, production: WindowStats, canary_total: int, age_s: float,
                 policy: CanaryPolicy) -> Verdict:
    def verdict(action: str, reason: str) -> Verdict:
        return Verdict(action, reason, canary, production, canary_total, age_s)

    if canary.count < policy.min_requests or production.count < policy.min_requests:
        return verdict("wait", f"needs {policy.min_requests} requests on each side in the window "
                               f"(canary {canary.count}, production {production.count})")
    if canary.error_rate > policy.max_error_rate and canary.error_rate > production.error_rate:
        return verdict("rollback", f"the canary failed {canary.errors} of {canary.count} requests "
                                   f"({canary.error_rate:.0%}; production {production.error_rate:.0%})")
    if (canary.p99_s > policy.max_p99_ratio * production.p99_s
            and canary.p99_s - production.p99_s > policy.min_p99_gap_s):
        return verdict("rollback", f"p99 latency of the canary {canary.p99_s * 1000:.1f} ms is more than "
                                   f"{policy.max_p99_ratio:g} x production's {production.p99_s * 1000:.1f} ms")
    if age_s >= policy.promote_after_s and canary_total >= policy.promote_min_requests:
        return verdict("promote", f"healthy for {age_s:.0f} s and {canary_total} requests (p99 "
                                  f"{canary.p99_s * 1000:.1f} ms vs production {production.p99_s * 1000:.1f} ms)")
    return verdict("keep", "healthy so far")
