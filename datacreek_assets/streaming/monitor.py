"""How the hot-graph stream is doing: the Flink job's state (its REST API), each tenant's lag
(its partition's events not yet committed by the job's consumer group, and how old the oldest of
them is) and its hot graph's status (last window written, sizes, event-to-queryable latency).
The Dagster sensor, the `hot_graph` observations and the Prometheus exporter all read this."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import asdict, dataclass

from datacreek_assets.hot_graph import LATENCY_BUCKETS
from datacreek_assets.streaming.events import (EVENTS_TOPIC, STREAM_CONSUMER_GROUP, STREAM_JOB_NAME, EventLogError,
                                               tenant_partition)
from datacreek_assets.streaming.windows import WINDOW_SECONDS

LAG_ALERT_WINDOWS = 3  # a tenant this many windows behind is alerted on


@dataclass(frozen=True)
class PartitionLag:
    pending: int  # events the job has not committed
    oldest_s: float  # age of the oldest of them (0 when none)


@dataclass(frozen=True)
class TenantStream:
    tenant_id: str
    lag_s: float
    pending_events: int  # on the tenant's partition (shared with the tenants hashed there)
    last_window: str | None
    last_applied_ms: int | None
    nodes: int
    edges: int
    events: int
    late_dropped: int
    latency_p95_s: float | None
    latency_counts: tuple[int, ...]
    latency_sum_s: float

    @property
    def lagging(self) -> bool:
        return self.lag_s > LAG_ALERT_WINDOWS * WINDOW_SECONDS

    def as_metadata(self) -> dict:
        data = asdict(self)
        data.pop("latency_counts")
        return {k: v for k, v in data.items() if v is not None}


def job_state(rest_url: str, timeout_s: float = 5.0) -> str | None:
    """The stream job's state (RUNNING, RESTARTING, FAILED...) from the Flink REST API; None when
    the API does not answer or no such job runs there."""
    try:
        with urllib.request.urlopen(f"{rest_url.rstrip('/')}/jobs/overview", timeout=timeout_s) as reply:
            jobs = json.load(reply).get("jobs", [])
    except (OSError, ValueError, urllib.error.URLError):
        return None
    ours = [j for j in jobs if j.get("name") == STREAM_JOB_NAME]
    newest = max(ours, key=lambda j: j.get("start-time", 0), default=None)
    return None if newest is None else str(newest.get("state"))


def partition_lags(bootstrap_servers: str, timeout_s: float = 10.0) -> dict[int, PartitionLag]:
    """Per partition of the events topic: what the stream job's group has not committed yet."""
    from confluent_kafka import OFFSET_INVALID, Consumer, KafkaException, TopicPartition

    config = {"bootstrap.servers": bootstrap_servers, "log_level": 3, "enable.auto.commit": False}
    group = Consumer({**config, "group.id": STREAM_CONSUMER_GROUP})  # reads its commits; joins nothing
    probe = Consumer({**config, "group.id": f"datacreek-lag-probe-{uuid.uuid4().hex[:8]}"})
    try:
        topic = group.list_topics(EVENTS_TOPIC, timeout=timeout_s).topics.get(EVENTS_TOPIC)
        if topic is None or topic.error is not None:
            return {}
        partitions = sorted(topic.partitions)
        committed = group.committed([TopicPartition(EVENTS_TOPIC, p) for p in partitions], timeout=timeout_s)
        lags = {}
        for tp in committed:
            low, high = group.get_watermark_offsets(TopicPartition(EVENTS_TOPIC, tp.partition), timeout=timeout_s)
            start = low if tp.offset == OFFSET_INVALID or tp.offset < low else tp.offset
            lags[tp.partition] = PartitionLag(high - start, _age_at(probe, tp.partition, start, high, timeout_s))
        return lags
    except KafkaException as err:
        raise EventLogError(f"cannot read the stream's lag from {bootstrap_servers}: {err}") from None
    finally:
        group.close()
        probe.close()


def _age_at(probe, partition: int, offset: int, high: int, timeout_s: float) -> float:
    """Seconds since the message at ``offset`` was published (0 when the partition is read up)."""
    from confluent_kafka import TopicPartition

    if offset >= high:
        return 0.0
    probe.assign([TopicPartition(EVENTS_TOPIC, partition, offset)])
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = probe.poll(min(1.0, timeout_s))
        if message is not None and not message.error():
            return max(0.0, time.time() - message.timestamp()[1] / 1000)
    raise EventLogError(f"partition {partition}: no message at offset {offset} within {timeout_s:.0f}s")


def latency_quantile(counts: list[int] | tuple[int, ...], q: float) -> float | None:
    """The upper bound of the bucket holding quantile ``q`` (None without observations; inf past
    the last bucket), as Prometheus' histogram_quantile reads the same buckets."""
    total = sum(counts)
    if not total:
        return None
    running = 0
    for bound, n in zip((*LATENCY_BUCKETS, float("inf")), counts):
        running += n
        if running >= q * total:
            return bound
    return float("inf")


def tenant_stream(hot_store, tenant_id: str, lags: dict[int, PartitionLag]) -> TenantStream:
    status = hot_store.status(tenant_id)
    lag = lags.get(tenant_partition(tenant_id), PartitionLag(0, 0.0))
    counts = tuple(status.get("latency_counts") or [0] * (len(LATENCY_BUCKETS) + 1))
    return TenantStream(
        tenant_id=tenant_id, lag_s=round(lag.oldest_s, 3), pending_events=lag.pending,
        last_window=status.get("last_window"), last_applied_ms=status.get("last_applied_ms"),
        nodes=status.get("nodes", 0), edges=status.get("edges", 0), events=status.get("events", 0),
        late_dropped=status.get("late_dropped", 0), latency_p95_s=latency_quantile(counts, 0.95),
        latency_counts=counts, latency_sum_s=round(float(status.get("latency_sum") or 0.0), 3))


@dataclass(frozen=True)
class StreamReport:
    job_state: str | None
    tenants: list[TenantStream]
    error: str | None = None  # Kafka could not be read

    @property
    def healthy(self) -> bool:
        return self.job_state == "RUNNING" and self.error is None and not self.lagging

    @property
    def lagging(self) -> list[str]:
        return [t.tenant_id for t in self.tenants if t.lagging]

    def summary(self) -> str:
        if self.job_state != "RUNNING":
            return f"the stream job is {self.job_state or 'not answering'}"
        if self.error:
            return self.error
        if self.lagging:
            return (f"{len(self.lagging)} tenant(s) over {LAG_ALERT_WINDOWS} windows "
                    f"({LAG_ALERT_WINDOWS * WINDOW_SECONDS}s) behind: {', '.join(self.lagging[:10])}")
        return f"running; {len(self.tenants)} tenant(s) within {LAG_ALERT_WINDOWS} windows"


def stream_report(hot_store, bootstrap_servers: str, rest_url: str, tenants: list[str],
                  timeout_s: float = 10.0) -> StreamReport:
    """The job's state and every tenant's stream (those with a hot graph)."""
    state = job_state(rest_url, timeout_s)
    try:
        lags = partition_lags(bootstrap_servers, timeout_s)
    except EventLogError as err:
        return StreamReport(state, [], str(err))
    return StreamReport(state, [tenant_stream(hot_store, t, lags) for t in tenants if hot_store.scope_exists(t)])
