"""The hot-graph stream job (PyFlink, run in `.venv-flink` by ``FlinkJobService``).

Graph events from Kafka are validated (anything else goes to the dead-letter topic with a
reason), stamped with their event time, keyed by tenant and gathered in 30 s tumbling event-time
windows. Each window's events are folded (``windows.fold``) and written to the tenant's FalkorDB
graph (``HotGraphStore.apply_window``), which recomputes every touched weight from the chunks:
a window written twice, or replayed from committed offsets after a crash, leaves the same graph.

While a window is open, its events so far are written every ``EARLY_FIRE_S`` of wall clock (each
firing writes only the events not written yet; a document whose rows are still on their way waits,
with the tenant's events behind it, for a firing that finds them in: ``windows.writable_prefix``).
Closing, late and replayed firings write everything they have. A window closes when the watermark passes its end,
or, when a tenant's stream goes quiet and no later event moves the watermark, once the wall clock
is ``CLOSE_GRACE_S`` past its end. Events up
to ``ALLOWED_LATENESS_S`` behind the watermark re-fire their window and are written then; later
ones are dead-lettered as late. Checkpoints commit the Kafka offsets; a restart resumes from
the newest retained checkpoint, else from the committed offsets.

Run: ``python -m datacreek_assets.streaming.flink_job --help``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from pyflink.common import Configuration, Duration, Time, Types, WatermarkStrategy
from pyflink.common.serialization import SimpleStringSchema
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream import (CheckpointingMode, OutputTag, ProcessFunction, ProcessWindowFunction,
                                StreamExecutionEnvironment)
from pyflink.datastream.checkpoint_config import ExternalizedCheckpointRetention
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import (KafkaOffsetResetStrategy, KafkaOffsetsInitializer,
                                                 KafkaRecordSerializationSchema, KafkaSink, KafkaSource)
from pyflink.datastream.state import ValueStateDescriptor
from pyflink.datastream.window import TimeWindow, Trigger, TriggerResult, TumblingEventTimeWindows

from datacreek_assets.streaming.event_auth import SIGNING_SECRET_ENV, KeyGenerations, verified
from datacreek_assets.streaming.events import (DEAD_LETTER_TOPIC, EVENTS_TOPIC, STREAM_CONSUMER_GROUP,
                                               STREAM_JOB_NAME, EventLogError, GraphEvent)
from datacreek_assets.streaming.windows import EARLY_FIRE_S, WINDOW_SECONDS, fold, window_id, writable_prefix

OUT_OF_ORDER_S = 2  # how far behind the newest event an event may arrive and still be on time
CLOSE_GRACE_S = 1  # a quiet tenant's window closes this long after its end, by the wall clock
ALLOWED_LATENESS_S = 60
IDLE_S = 10  # a Kafka partition quiet this long stops holding back the watermark
CHECKPOINT_S = 5
TENANT_CHECK_S = 30  # how long "this tenant has a hot graph" is believed
# the watermark is shared by every tenant: one event from the future would make everyone's late
MAX_AHEAD_S = 60

log = logging.getLogger("datacreek.flink_job")
DEAD_LETTER = OutputTag("dead-letter", Types.STRING())
APPLIED = ValueStateDescriptor("applied-events", Types.INT())  # per window: how many events were written


def event_type():
    """(tenant, event ms, event JSON). A new one per use: a type used once holds a Java object,
    which would then be pickled into the next function that names it."""
    return Types.TUPLE([Types.STRING(), Types.LONG(), Types.STRING()])


LATE = OutputTag("late", event_type())


def dead_letter(reason: str, raw: str) -> str:
    return json.dumps({"reason": reason, "at": datetime.now(timezone.utc).isoformat(),
                       "event": raw[:1024]}, sort_keys=True)


def tenant_graphs(neo4j_uri: str, isolation: str):
    """Neo4j, the truth: the window's co-occurrence goes there too, through the tenant repository."""
    from neo4j import GraphDatabase

    from datacreek_assets.graph_store import TenantGraph

    user = os.environ.get("DATACREEK_NEO4J_USER", "")
    auth = (user, os.environ.get("DATACREEK_NEO4J_PASSWORD", "")) if user else None
    driver = GraphDatabase.driver(neo4j_uri, auth=auth)
    return lambda tenant_id: TenantGraph(driver, tenant_id, isolation)


def hot_graph_store(falkordb_host: str, falkordb_port: int):
    """The platform's FalkorDB user, from the environment as for Neo4j (none locally)."""
    from datacreek_assets.hot_graph import connect_hot_graph

    return connect_hot_graph(falkordb_host, falkordb_port, os.environ.get("DATACREEK_FALKORDB_USER", ""),
                             os.environ.get("DATACREEK_FALKORDB_PASSWORD", ""))


class ValidateEvent(ProcessFunction):
    """Graph events go on as (tenant, event ms, JSON); everything else to the dead letters."""

    def __init__(self, falkordb_host: str, falkordb_port: int):
        self.falkordb_host, self.falkordb_port = falkordb_host, falkordb_port
        self.store = None
        self.known: dict[str, float] = {}

    def open(self, runtime_context) -> None:
        self.store = hot_graph_store(self.falkordb_host, self.falkordb_port)
        # from the environment, not the job graph: the secret derives every tenant's signing key
        self.secret = os.environ[SIGNING_SECRET_ENV]
        # a tenant's key rotated away is refused within TENANT_CHECK_S; its new key at once
        self.keys = KeyGenerations(self.store.client.connection, keep_s=TENANT_CHECK_S)

    def process_element(self, value: str, ctx):
        try:
            data = value.encode("utf-8", "surrogatepass")
            event = verified(data, self.secret, self.keys.current)  # the platform or its tenant's current key
        except (EventLogError, ValueError) as err:  # ValueError: an invalid tenant id
            yield DEAD_LETTER, dead_letter(str(err)[:300], value)
            return
        if event.timestamp_ms > time.time() * 1000 + MAX_AHEAD_S * 1000:
            yield DEAD_LETTER, dead_letter(f"event time {event.event_time} is over {MAX_AHEAD_S} s ahead of the "
                                           "clock", value)
            return
        if not self._known(event.tenant_id):
            yield DEAD_LETTER, dead_letter(f"unknown tenant {event.tenant_id!r}: it has no hot graph", value)
            return
        yield event.tenant_id, event.timestamp_ms, data.decode()

    def _known(self, tenant_id: str) -> bool:
        """A provisioned tenant has a hot graph (``tenant_lifecycle`` creates its scope)."""
        if time.monotonic() - self.known.get(tenant_id, float("-inf")) < TENANT_CHECK_S:
            return True
        if self.store.scope_exists(tenant_id):
            self.known[tenant_id] = time.monotonic()
            return True
        return False


class EventTime(TimestampAssigner):
    def extract_timestamp(self, value, record_timestamp: int) -> int:
        return value[1]


class EarlyAndOnClose(Trigger):
    """Fire every ``early_ms`` of wall clock while the window is open (its events so far become
    queryable then, not a whole window later), and close it when the watermark passes its end,
    or when the wall clock is past it by ``grace_ms`` (the watermark of a tenant gone quiet never
    gets there). Firing keeps the window: each firing writes only the events not written yet,
    and a late event within the allowed lateness fires it again."""

    def __init__(self, early_ms: int, grace_ms: int):
        self.early_ms, self.grace_ms = early_ms, grace_ms

    def on_element(self, element, timestamp: int, window: TimeWindow, ctx) -> TriggerResult:
        now = ctx.get_current_processing_time()
        if window.max_timestamp() <= ctx.get_current_watermark():  # late, within the allowed lateness
            ctx.register_processing_time_timer(self._soon(now))  # one firing for a burst of them
            return TriggerResult.CONTINUE
        ctx.register_event_time_timer(window.max_timestamp())
        due = window.max_timestamp() + self.grace_ms
        if due <= now:  # a replayed window lies in the past: the clock closes it soon instead
            ctx.register_processing_time_timer(self._soon(now))
            return TriggerResult.CONTINUE
        ctx.register_processing_time_timer(due)
        early = (now // self.early_ms + 1) * self.early_ms  # on the early grid: a window's elements share it
        if early < due:
            ctx.register_processing_time_timer(early)
        return TriggerResult.CONTINUE

    def _soon(self, now: int) -> int:
        """A grace after now, on a whole second: the elements arriving meanwhile share the timer."""
        return (now // 1000 + 1) * 1000 + self.grace_ms

    def on_processing_time(self, time: int, window: TimeWindow, ctx) -> TriggerResult:
        return TriggerResult.FIRE

    def on_event_time(self, time: int, window: TimeWindow, ctx) -> TriggerResult:
        return TriggerResult.FIRE if time == window.max_timestamp() else TriggerResult.CONTINUE

    def on_merge(self, window: TimeWindow, ctx) -> None:
        """Never called: ``can_merge`` is False, as tumbling windows never merge."""

    def can_merge(self) -> bool:
        return False

    def clear(self, window: TimeWindow, ctx) -> None:
        ctx.delete_event_time_timer(window.max_timestamp())


class ApplyWindow(ProcessWindowFunction):
    """Fold a tenant's window and write it to its hot graph and its co-occurrence to Neo4j;
    emits the window's status line."""

    def __init__(self, falkordb_host: str, falkordb_port: int, neo4j_uri: str, isolation: str):
        self.falkordb_host, self.falkordb_port = falkordb_host, falkordb_port
        self.neo4j_uri, self.isolation = neo4j_uri, isolation
        self.store = self.graph_of = None
        self.prepared: set[str] = set()

    def open(self, runtime_context) -> None:
        self.store = hot_graph_store(self.falkordb_host, self.falkordb_port)
        self.graph_of = tenant_graphs(self.neo4j_uri, self.isolation)

    def process(self, key: str, context, elements):
        window = context.window()
        fired = time.time()
        raw = [e[2] for e in elements]  # in their partition's order
        applied = context.window_state().get_state(APPLIED)
        before = applied.value() or 0
        if before == len(raw):  # e.g. the watermark's firing after the clock's: nothing new
            return
        events = [GraphEvent.from_bytes(r.encode()) for r in raw[before:]]  # once, unless held back below
        closing = (context.current_watermark() >= window.max_timestamp()
                   or context.current_processing_time() >= window.max_timestamp() + CLOSE_GRACE_S * 1000)
        if not closing:  # an early firing leaves a document whose rows are on their way to a later firing
            events = events[:writable_prefix(events)]
            if not events:
                return
        # only the events not written yet: the graph already holds the rest, and apply_window
        # applies a delta on top of it as a later window would (re-folding the whole window on
        # each late firing made a window behind the watermark cost O(n^2): measured in bench/)
        delta = fold(key, window_id(window.start), events)
        if key not in self.prepared:  # once per tenant and start: a graph made before an index was added gets
            self.store.create_scope(key)  # it, and what a write cut short left is swept
            self.store.drop_unnamed_entities(key)
            self.prepared.add(key)
        folded = time.time()
        counts = self.store.apply_window(delta)
        applied_ms = int(time.time() * 1000)  # queryable in the hot graph from now
        # then the truth; a failure here fails the window, and the restart writes both again
        # (each write is idempotent)
        self.graph_of(key).write_cooccurrence(counts.pop("touched_pairs"), delta.window_id)
        neo4j_done = time.time()
        latencies = [max(0, applied_ms - e.timestamp_ms) / 1000 for e in events]  # each event once
        self.store.record_window(key, delta.window_id, window.end, len(events), latencies, applied_ms)
        applied.update(before + len(events))
        yield json.dumps({"tenant": key, "window": delta.window_id, "events": len(events), **counts,
                          "max_latency_s": round(max(latencies, default=0.0), 3),
                          # where a firing's time goes (negative: an early firing, before the window's end)
                          "timing_s": {"fired_after_end": round(fired - window.end / 1000, 3),
                                       "fold": round(folded - fired, 3),
                                       "falkordb": round(applied_ms / 1000 - folded, 3),
                                       "neo4j": round(neo4j_done - applied_ms / 1000, 3)}}, sort_keys=True)

    def clear(self, context) -> None:
        context.window_state().get_state(APPLIED).clear()


class CountLate(ProcessFunction):
    """Events past the allowed lateness: logged, counted in the tenant's hot status, dead-lettered."""

    def __init__(self, falkordb_host: str, falkordb_port: int):
        self.falkordb_host, self.falkordb_port = falkordb_host, falkordb_port
        self.store = None

    def open(self, runtime_context) -> None:
        self.store = hot_graph_store(self.falkordb_host, self.falkordb_port)

    def process_element(self, value, ctx):
        tenant, event_ms, raw = value
        log.warning("dropped a late event of tenant %s (event time %d ms, watermark %d ms)", tenant, event_ms,
                    ctx.timer_service().current_watermark())
        self.store.record_late(tenant, 1)
        yield dead_letter(f"late: the event is over {ALLOWED_LATENESS_S}s behind the watermark", raw)


def build(env: StreamExecutionEnvironment, bootstrap: str, falkordb_host: str, falkordb_port: int, neo4j_uri: str,
          isolation: str) -> None:
    source = (KafkaSource.builder().set_bootstrap_servers(bootstrap).set_topics(EVENTS_TOPIC)
              .set_group_id(STREAM_CONSUMER_GROUP)
              .set_starting_offsets(KafkaOffsetsInitializer.committed_offsets(KafkaOffsetResetStrategy.EARLIEST))
              .set_value_only_deserializer(SimpleStringSchema())  # bytes that are not UTF-8 decode with U+FFFD
              .set_property("commit.offsets.on.checkpoint", "true")
              .set_property("partition.discovery.interval.ms", "60000")
              .build())
    raw = env.from_source(source, WatermarkStrategy.no_watermarks(), "graph-events").uid("graph-events")
    valid = raw.process(ValidateEvent(falkordb_host, falkordb_port), output_type=event_type()).uid("validate")
    stamped = valid.assign_timestamps_and_watermarks(
        WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_seconds(OUT_OF_ORDER_S))
        .with_idleness(Duration.of_seconds(IDLE_S)).with_timestamp_assigner(EventTime())).uid("event-time")
    windows = (stamped.key_by(lambda e: e[0], key_type=Types.STRING())
               .window(TumblingEventTimeWindows.of(Time.seconds(WINDOW_SECONDS)))
               .trigger(EarlyAndOnClose(EARLY_FIRE_S * 1000, CLOSE_GRACE_S * 1000))
               .allowed_lateness(ALLOWED_LATENESS_S * 1000)
               .side_output_late_data(LATE)
               .process(ApplyWindow(falkordb_host, falkordb_port, neo4j_uri, isolation), output_type=Types.STRING()).uid("apply-window"))
    windows.print("window")
    late = windows.get_side_output(LATE).process(CountLate(falkordb_host, falkordb_port),
                                                 output_type=Types.STRING()).uid("late")
    dead = valid.get_side_output(DEAD_LETTER).union(late)
    dead.sink_to(KafkaSink.builder().set_bootstrap_servers(bootstrap)
                 .set_record_serializer(KafkaRecordSerializationSchema.builder().set_topic(DEAD_LETTER_TOPIC)
                                        .set_value_serialization_schema(SimpleStringSchema()).build())
                 .set_delivery_guarantee(DeliveryGuarantee.AT_LEAST_ONCE).build()).uid("dead-letters")


def latest_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete retained checkpoint (its ``_metadata`` written), if any; the folders of
    earlier runs of the job, older than it, are removed."""
    import shutil

    found = [p.parent for p in checkpoints.glob("*/chk-*/_metadata")]
    newest = max(found, key=lambda p: p.joinpath("_metadata").stat().st_mtime, default=None)
    for run in checkpoints.iterdir():
        if newest is not None and run != newest.parent and run.is_dir():
            shutil.rmtree(run, ignore_errors=True)
    return newest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flink_job", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    parser.add_argument("--falkordb-host", default="127.0.0.1")
    parser.add_argument("--falkordb-port", type=int, required=True)
    parser.add_argument("--neo4j-uri", required=True, help="the truth the window's co-occurrence also goes to")
    parser.add_argument("--neo4j-isolation", default="label", choices=("label", "database"))
    parser.add_argument("--state-dir", type=Path, required=True, help="checkpoints live under it")
    parser.add_argument("--rest-port", type=int, required=True, help="the Flink REST API (job health)")
    parser.add_argument("--rest-bind-address", default="127.0.0.1", help="0.0.0.0 in a pod, for its Service")
    parser.add_argument("--connector-jar", type=Path, required=True, help="flink-sql-connector-kafka")
    args = parser.parse_args(argv)
    if not os.environ.get(SIGNING_SECRET_ENV):
        parser.error(f"${SIGNING_SECRET_ENV} is not set: events are verified with the platform's signing secret")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    checkpoints = args.state_dir / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    config = Configuration()
    config.set_string("rest.port", str(args.rest_port))
    config.set_string("rest.bind-address", args.rest_bind_address)
    # the REST API reports the job's health; it takes no jars and cancels nothing
    config.set_string("web.submit.enable", "false")
    config.set_string("web.cancel.enable", "false")
    config.set_string("rest.address", "127.0.0.1")
    config.set_string("pipeline.jars", args.connector_jar.resolve().as_uri())
    config.set_string("python.executable", sys.executable)
    config.set_string("python.fn-execution.bundle.time", "200")  # ms: a window's write waits at most this
    config.set_string("taskmanager.memory.managed.size", "128m")
    resume = latest_checkpoint(checkpoints)
    if resume is not None:
        config.set_string("execution.state-recovery.path", resume.as_uri())
        log.info("resuming from %s", resume)
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.set_parallelism(1)
    env.enable_checkpointing(CHECKPOINT_S * 1000, CheckpointingMode.EXACTLY_ONCE)
    env.get_checkpoint_config().set_externalized_checkpoint_retention(
        ExternalizedCheckpointRetention.RETAIN_ON_CANCELLATION)
    config.set_string("execution.checkpointing.dir", checkpoints.resolve().as_uri())
    env.configure(config)
    build(env, args.bootstrap, args.falkordb_host, args.falkordb_port, args.neo4j_uri, args.neo4j_isolation)
    env.execute(STREAM_JOB_NAME)
    return 0


if __name__ == "__main__":
    # run from the module imported by name: the functions are then pickled as references the
    # Python workers import (PYTHONPATH), not by value with this module's globals
    from datacreek_assets.streaming import flink_job

    sys.exit(flink_job.main())
