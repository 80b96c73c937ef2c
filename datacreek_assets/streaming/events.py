"""Graph events: one per chunk, entity mention and fact of a written document, and one per
deleted document, published to Kafka keyed by tenant (a tenant's events keep their order in one
partition). The stream job turns them into the tenant's hot graph; `events replay` re-publishes
a tenant's live graph from Neo4j, the truth, to rebuild or bootstrap it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from datacreek_assets.tenancy import validate_tenant_id

EVENTS_TOPIC = "datacreek.graph-events"
DEAD_LETTER_TOPIC = "datacreek.graph-events.dead-letter"
TOPIC_PARTITIONS = 4
STREAM_JOB_NAME = "datacreek-hot-graph"  # the Flink job that folds the events into hot graphs
STREAM_CONSUMER_GROUP = "datacreek-hot-graph"  # its Kafka group: the committed offsets lag is read from
# the ids each kind carries, all strings (what the stream job reads)
KIND_IDS = {"document": (), "chunk": ("chunk_id",), "mention": ("chunk_id", "entity_id", "entity"),
            "fact": ("fact_id", "chunk_id", "subject", "predicate", "object")}
# a document upsert may say how many row events follow it in its publish (a decimal string), so the
# stream job writes the document only once they have all arrived; events written before it carry none
ROWS_ID = "rows"
MAX_EVENT_BYTES = 64 * 1024  # an event names ids and short strings; anything larger is hostile
# Events quote entity names and facts: kept 7 days, well inside the 30 days after which erasure
# promises a deleted document is gone. Neo4j, not the log, is what a replay rebuilds from.
RETENTION_MS = 7 * 24 * 3600 * 1000


class EventLogError(RuntimeError):
    pass


def tenant_partition(tenant_id: str) -> int:
    """The one partition a tenant's events go to: its events keep their order, and its lag is
    that partition's (``streaming.monitor``)."""
    import zlib

    return zlib.crc32(validate_tenant_id(tenant_id).encode()) % TOPIC_PARTITIONS


@dataclass(frozen=True)
class GraphEvent:
    tenant_id: str
    doc_id: str
    kind: str  # chunk | mention | fact | document
    op: str  # upsert | delete
    event_time: str  # ISO 8601, UTC: when the graph changed (the stream's event time)
    ids: dict = field(default_factory=dict)
    # the document's revision in Neo4j when its state was read (``TenantGraph.document_states``):
    # a graph run's events published after a concurrent delete's carry the older one, and the hot
    # graph keeps the newer state whatever order the events arrive in
    revision: int = 0

    def __post_init__(self) -> None:
        validate_tenant_id(self.tenant_id)
        if not all(isinstance(v, str) for v in (self.doc_id, self.event_time)) or not isinstance(self.ids, dict):
            raise EventLogError("not a graph event: doc_id and event_time are strings, ids an object")
        if type(self.revision) is not int or not 0 <= self.revision < 2 ** 63:  # a graph's integers are 64-bit
            raise EventLogError(f"not a graph event: revision {self.revision!r} is not a whole number in [0, 2**63)")
        if self.kind not in KIND_IDS or self.op not in ("upsert", "delete"):
            raise EventLogError(f"not a graph event: kind={self.kind!r} op={self.op!r}")
        optional = {ROWS_ID} if (self.kind, self.op) == ("document", "upsert") else set()
        if set(self.ids) - optional != set(KIND_IDS[self.kind]) or not all(isinstance(v, str) for v in self.ids.values()):
            raise EventLogError(f"not a graph event: a {self.kind} event carries the strings "
                                f"{', '.join(KIND_IDS[self.kind]) or 'no ids'}"
                                f"{f' (and optionally {ROWS_ID})' if optional else ''}")
        count = self.ids.get(ROWS_ID, "0")
        if not (count.isascii() and count.isdigit() and len(count) <= 9):  # int() of 4,301 digits raises
            raise EventLogError(f"not a graph event: {ROWS_ID} {count[:20]!r} is not a count below 10**9")
        try:
            if datetime.fromisoformat(self.event_time).tzinfo is None:
                raise ValueError("no time zone")
        except ValueError as err:
            raise EventLogError(f"not a graph event: event_time {self.event_time[:40]!r} ({err})") from None

    @property
    def timestamp_ms(self) -> int:
        return int(datetime.fromisoformat(self.event_time).timestamp() * 1000)

    def to_bytes(self) -> bytes:
        data = json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()
        if len(data) > MAX_EVENT_BYTES:
            raise EventLogError(f"event of {len(data)} bytes is over {MAX_EVENT_BYTES}")
        return data

    @classmethod
    def from_bytes(cls, data: bytes) -> "GraphEvent":
        if len(data) > MAX_EVENT_BYTES:
            raise EventLogError(f"event of {len(data)} bytes is over {MAX_EVENT_BYTES}")
        try:
            raw = json.loads(data)
            # events written before revisions existed read as revision 0
            return cls(**{k: raw[k] for k in ("tenant_id", "doc_id", "kind", "op", "event_time", "ids")},
                       revision=raw.get("revision", 0))
        except (ValueError, TypeError, KeyError) as err:
            raise EventLogError(f"not a graph event: {err}") from err


def document_events(tenant_id: str, chunks: list[dict], mentions: list[dict], facts: list[dict],
                    deleted: Iterable[str] = (), documents: Iterable[str] | None = None,
                    at: datetime | None = None, revisions: dict[str, int] | None = None) -> list[GraphEvent]:
    """For each written document (``documents``; by default those of the rows) a document upsert,
    which replaces whatever the hot graph held of it (a document rewritten to no chunk included)
    and counts the row events that follow it: the document's live rows
    (``TenantGraph.live_chunks/live_mentions/live_facts``), chunks, mentions, then facts. One
    document's events come together, so the stream job can write each as soon as its rows are in
    (``windows.writable_prefix``). Then a delete per deleted document. Each event carries its
    document's revision (0 if not given)."""
    when = (at or datetime.now(timezone.utc)).isoformat()
    revision = (revisions or {}).get

    def event(doc_id: str, kind: str, op: str, ids: dict | None = None) -> GraphEvent:
        return GraphEvent(tenant_id, doc_id, kind, op, when, ids or {}, revision(doc_id, 0))

    rows_of: dict[str, list[GraphEvent]] = {}
    for kind, rows in (("chunk", chunks), ("mention", mentions), ("fact", facts)):
        for row in rows:
            rows_of.setdefault(row["doc_id"], []).append(
                event(row["doc_id"], kind, "upsert", {k: _text(row[k]) for k in KIND_IDS[kind]}))
    written = sorted(set(documents) if documents is not None else set(rows_of))
    events = []
    for doc_id in written:
        doc_rows = rows_of.pop(doc_id, [])
        events += [event(doc_id, "document", "upsert", {ROWS_ID: str(len(doc_rows))}), *doc_rows]
    events += [e for doc_id in sorted(rows_of) for e in rows_of[doc_id]]  # rows of documents not named written
    events += [event(doc_id, "document", "delete") for doc_id in deleted]
    return events


def _text(value) -> str:
    return "" if value is None else str(value)


def graph_events(graph, doc_ids: Iterable[str] | None = None, deleted: Iterable[str] = ()) -> list[GraphEvent]:
    """The current state of a tenant's documents ``doc_ids`` and ``deleted`` (every document by
    default) read from Neo4j, as events: a live one's rows, a delete for a soft-deleted one, each
    with the document's revision. The states are read before the rows: a document changed in
    between has a newer revision, whose own events win in the hot graph."""
    states = graph.document_states()
    asked = set(states) if doc_ids is None else set(doc_ids) | set(deleted)
    live = sorted(d for d in asked if d in states and states[d]["deleted_at"] is None)
    gone = sorted(d for d in asked if d in states and states[d]["deleted_at"] is not None)
    revisions = {d: states[d]["revision"] or 0 for d in (*live, *gone)}
    rows = (graph.live_chunks(live), graph.live_mentions(live), graph.live_facts(live)) if live else ([], [], [])
    return document_events(graph.tenant_id, *rows, gone, documents=live, revisions=revisions)


class EventLog:
    """A producer and admin client for the tenant-keyed graph events topic: the platform's (no
    username: its own listener, it creates the topics) or one tenant's (its SCRAM user, which may
    write the events topic and nothing else). ``signer`` (``event_auth.EventSigner``) signs what
    it publishes."""

    def __init__(self, bootstrap_servers: str, timeout_s: float = 10.0, replication_factor: int = 1,
                 username: str = "", password: str = "", signer=None):
        self.bootstrap_servers = bootstrap_servers
        self.timeout_s = timeout_s  # the longest a caller waits on an unreachable broker, per call
        self.replication_factor = replication_factor
        self.username, self._password, self.signer = username, password, signer
        self._producer = None
        self._errors: list[str] = []  # what the client reported (a refused login, say), for the error said

    def _config(self) -> dict:
        config = {"bootstrap.servers": self.bootstrap_servers, "log_level": 3,
                  "error_cb": lambda err: self._errors.append(err.str())}
        if self.username:
            config.update({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": "SCRAM-SHA-512",
                           "sasl.username": self.username, "sasl.password": self._password})
        return config

    def _reported(self) -> str:
        return f"; the client reported: {self._errors[-1]}" if self._errors else ""

    def ensure_topics(self) -> list[str]:
        """Create the events and dead-letter topics if missing; returns those created. With a
        tenant's credentials only check that the events topic is there: topics are the platform's."""
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient(self._config())
        try:
            existing = set(admin.list_topics(timeout=self.timeout_s).topics)
        except KafkaException as err:
            admin.poll(0.1)  # serve the client's error callbacks: a refused login says so
            if self._errors and "Authentication failed" in self._errors[-1]:
                raise EventLogError(f"Kafka at {self.bootstrap_servers} refused user {self.username!r}: "
                                    f"{self._errors[-1]}") from None
            raise EventLogError(f"Kafka is not reachable at {self.bootstrap_servers} ({err}{self._reported()}); "
                                "locally, start it with `datacreek services up`") from None
        if self.username:
            if EVENTS_TOPIC not in existing:
                raise EventLogError(f"{EVENTS_TOPIC} is missing, or Kafka user {self.username!r} may not write it")
            return []
        missing = [t for t in (EVENTS_TOPIC, DEAD_LETTER_TOPIC) if t not in existing]
        if missing:
            futures = admin.create_topics([NewTopic(t, num_partitions=TOPIC_PARTITIONS,
                                                    replication_factor=self.replication_factor,
                                                    config={"retention.ms": str(RETENTION_MS)}) for t in missing])
            for topic, future in futures.items():
                try:
                    future.result(timeout=self.timeout_s)
                except KafkaException as err:
                    if err.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # made by another process meanwhile
                        raise EventLogError(f"cannot create topic {topic}: {err}") from None
                except TimeoutError:
                    raise EventLogError(f"creating topic {topic} took over {self.timeout_s:.0f}s") from None
        return missing

    def publish(self, events: list[GraphEvent], on_progress: Callable[[int, int], None] | None = None) -> int:
        """Publish and wait until the broker has every event (idempotent producer, acks=all);
        raises EventLogError when any is not delivered within ``timeout_s``."""
        from confluent_kafka import KafkaException, Producer

        self.ensure_topics()  # also when there is nothing to send: an unreachable log is said at once
        if not events:
            return 0
        if self.signer is None:
            raise EventLogError("no event signing secret or key is configured (DATACREEK_EVENT_SIGNING_SECRET, "
                                "or a tenant's DATACREEK_EVENT_SIGNING_KEY): the stream job would refuse the events")
        if self._producer is None:
            self._producer = Producer({**self._config(), "enable.idempotence": True, "acks": "all",
                                       "linger.ms": 20, "compression.type": "lz4",
                                       "message.timeout.ms": int(self.timeout_s * 1000)})
        try:
            return self._send(events, on_progress)
        except KafkaException as err:
            self._producer.purge()  # nothing half-sent lingers into a later call
            raise EventLogError(f"publishing to {self.bootstrap_servers} failed: {err}") from None

    def _send(self, events: list[GraphEvent], on_progress: Callable[[int, int], None] | None) -> int:
        failures: list[str] = []

        def delivered(err, _msg) -> None:
            if err is not None:
                failures.append(str(err))

        values = [self.signer.signed(event) for event in events]  # all signed (or refused) before any is sent
        for i, (event, value) in enumerate(zip(events, values), 1):
            while True:
                try:
                    self._producer.produce(EVENTS_TOPIC, key=event.tenant_id.encode(), value=value,
                                           partition=tenant_partition(event.tenant_id), on_delivery=delivered)
                    break
                except BufferError:  # the local queue is full: let the broker catch up
                    self._producer.poll(0.5)
            if on_progress and i % 500 == 0:
                on_progress(i, len(events))
        left = self._producer.flush(self.timeout_s)
        if left or failures:
            self._producer.purge()
            raise EventLogError(f"{left + len(failures)} of {len(events)} events not delivered to "
                                f"{self.bootstrap_servers}: {failures[:3]}{self._reported()}")
        if on_progress:
            on_progress(len(events), len(events))
        return len(events)


    def read(self, tenant_id: str, group: str, limit: int, timeout_s: float = 30.0) -> Iterator[GraphEvent]:
        """Read up to ``limit`` of one tenant's events from the start (a consumer group of its own);
        other tenants' events on the same partitions are skipped. For checks and tests."""
        import time

        from confluent_kafka import Consumer

        tenant_id = validate_tenant_id(tenant_id)
        consumer = Consumer({**self._config(), "group.id": group, "auto.offset.reset": "earliest",
                             "enable.auto.commit": False})
        consumer.subscribe([EVENTS_TOPIC])
        try:
            found, deadline = 0, time.monotonic() + timeout_s
            while found < limit and time.monotonic() < deadline:
                message = consumer.poll(0.5)
                if message is None or message.error():
                    continue
                if message.key() == tenant_id.encode():
                    event = GraphEvent.from_bytes(message.value())
                    if event.tenant_id != tenant_id:  # keyed to one tenant, naming another: not its event
                        raise EventLogError(f"an event keyed {tenant_id!r} names tenant {event.tenant_id!r}")
                    found += 1
                    yield event
        finally:
            consumer.close()

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(min(self.timeout_s, 5.0))
            self._producer = None
