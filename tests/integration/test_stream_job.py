"""The hot-graph stream job for real: PyFlink (its own environment) reading the test Kafka, 30 s
event-time windows per tenant, written to the real FalkorDB. Events are published as the platform
publishes them; the assertions read the tenants' hot graphs back."""

import json
import time
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from datacreek_assets.streaming.events import DEAD_LETTER_TOPIC, EVENTS_TOPIC, document_events
from datacreek_assets.streaming.windows import WINDOW_SECONDS, fold, window_of

pytestmark = pytest.mark.integration
TENANTS = ("stream-a", "stream-b", "stream-early", "stream-late", "stream-kill", "stream-ref", "stream-watch", "stream-idle",
           "stream-curated", "stream-split")
CLOSE_S = WINDOW_SECONDS + 15  # a window closes at its end plus a second's grace (its early firings come sooner)


def rows(doc_id: str, chunks: dict[str, list[str]]) -> tuple[list, list, list]:
    chunk_rows = [{"chunk_id": f"{doc_id}:{c}", "doc_id": doc_id} for c in chunks]
    mentions = [{"chunk_id": f"{doc_id}:{c}", "doc_id": doc_id, "entity_id": e, "entity": e.title()}
                for c, es in chunks.items() for e in es]
    return chunk_rows, mentions, []


def graph_of(hot, tenant: str) -> dict:
    """A tenant's hot graph as comparable data: chunks per document and co-occurrence weights."""
    graph = hot.graph(tenant)
    chunks = graph.ro_query("MATCH (c:Chunk) RETURN c.doc_id, c.chunk_id ORDER BY c.doc_id, c.chunk_id").result_set
    edges = graph.ro_query("MATCH (a:Entity)-[e:CO_OCCURS]->(b:Entity) RETURN a.name, b.name, e.weight "
                           "ORDER BY a.name, b.name").result_set
    return {"chunks": [tuple(r) for r in chunks], "edges": [tuple(r) for r in edges]}


def wait_until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout:.0f}s: {what}")


def offsets_committed(event_log, tenant: str) -> bool:
    """The job committed its offsets past every event of the tenant's partition (a checkpoint after them)."""
    from datacreek_assets.streaming.events import tenant_partition
    from datacreek_assets.streaming.monitor import partition_lags

    lag = partition_lags(event_log.bootstrap_servers).get(tenant_partition(tenant))
    return lag is not None and lag.pending == 0


def applied_events(hot, tenant: str) -> int:
    return hot.status(tenant).get("events", 0)


def dead_letters(bootstrap: str) -> list[dict]:
    """Every dead letter so far (reason, event)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(DEAD_LETTER_TOPIC, timeout=10).topics[DEAD_LETTER_TOPIC].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(DEAD_LETTER_TOPIC, p), timeout=10)[1]
                for p in partitions}
        consumer.assign([TopicPartition(DEAD_LETTER_TOPIC, p, 0) for p in partitions])
        found, left = [], {p: end for p, end in ends.items() if end > 0}
        while left:
            message = consumer.poll(10)
            assert message is not None, f"the dead-letter topic ended early: {left} still to read"
            if message.error():
                continue
            found.append(json.loads(message.value()))
            if message.offset() + 1 >= left.get(message.partition(), 0):
                left.pop(message.partition(), None)
        return found
    finally:
        consumer.close()


@pytest.fixture
def hot(local_resources):
    store = local_resources["hot_graph"].store()
    for tenant in TENANTS:
        store.drop_scope(tenant)
        store.create_scope(tenant)
    yield store
    for tenant in TENANTS:
        store.drop_scope(tenant)


@pytest.fixture
def event_log(local_resources):
    log = local_resources["event_log"].event_log()  # the platform's: it signs any tenant's events
    yield log
    log.close()


def test_a_document_reaches_the_hot_graph_when_its_window_closes_and_its_delete_takes_it_away(
        stream_job, hot, event_log):
    now = datetime.now(timezone.utc)
    # both tenants: the same document and entity names, different co-occurrences
    event_log.publish(document_events("stream-a", *rows("rivers.txt", {"c1": ["danube", "vienna"]}), at=now)
                      + document_events("stream-b", *rows("rivers.txt", {"c1": ["danube", "budapest"]}), at=now))
    wait_until(lambda: applied_events(hot, "stream-a") >= 4 and applied_events(hot, "stream-b") >= 4, CLOSE_S,
               "both tenants' windows applied")
    assert graph_of(hot, "stream-a")["edges"] == [("Danube", "Vienna", 1)]
    assert graph_of(hot, "stream-b")["edges"] == [("Budapest", "Danube", 1)]
    assert hot.neighbours("stream-a", "Danube") == [{"entity": "Vienna", "weight": 1, "hops": 1}]
    status = hot.status("stream-a")
    assert status["last_window"] == window_of(now) and status["windows"] >= 1
    assert sum(status["latency_counts"]) == status["events"] == 4  # one latency per event, counted once

    # a delete (revision 2), then a graph run that read the document before it publishes late
    # (revision 1): the hot graph keeps the delete, as Neo4j does
    event_log.publish(document_events("stream-a", [], [], [], deleted=["rivers.txt"], revisions={"rivers.txt": 2}))
    wait_until(lambda: not graph_of(hot, "stream-a")["chunks"], CLOSE_S, "the deleted document gone")
    late_run = document_events("stream-a", *rows("rivers.txt", {"c1": ["danube", "vienna"]}), revisions={"rivers.txt": 1})
    event_log.publish(late_run)
    wait_until(lambda: applied_events(hot, "stream-a") >= 5 + len(late_run), CLOSE_S, "the late run's events applied")
    assert graph_of(hot, "stream-a") == {"chunks": [], "edges": []}
    assert graph_of(hot, "stream-b")["edges"] == [("Budapest", "Danube", 1)]  # the neighbour keeps its own


def seconds_left() -> float:
    """Until the current window's end."""
    return WINDOW_SECONDS - time.time() % WINDOW_SECONDS


def test_an_open_window_s_events_are_queryable_before_it_closes(stream_job, hot, event_log):
    wait_until(lambda: seconds_left() >= 20, WINDOW_SECONDS + 1, "a window with 20 s left")
    now = datetime.now(timezone.utc)
    event_log.publish(document_events("stream-early", *rows("early.txt", {"c1": ["oder", "neisse"]}), at=now))
    # before its window's end, 20 s or more away (windows.EARLY_FIRE_S: a firing every 5 s)
    wait_until(lambda: applied_events(hot, "stream-early") >= 4, seconds_left(), "an early firing")
    assert graph_of(hot, "stream-early")["edges"] == [("Neisse", "Oder", 1)]
    status = hot.status("stream-early")
    assert status["last_window"] == window_of(now)
    assert status["last_applied_ms"] < status["last_window_end_ms"]  # written while its window was open


def test_an_early_firing_leaves_a_document_whole_until_all_its_rows_have_arrived(stream_job, hot, event_log):
    tenant = "stream-split"
    hot.apply_window(fold(tenant, "w0", document_events(tenant, *rows("a.txt", {"c1": ["oder", "neisse"]}))))
    before = graph_of(hot, tenant)
    wait_until(lambda: seconds_left() >= 20, WINDOW_SECONDS + 1, "a window with 20 s left")  # no close meanwhile
    now = datetime.now(timezone.utc)
    other = document_events(tenant, *rows("b.txt", {"c1": ["elbe", "dresden"]}), at=now)
    rewrite = document_events(tenant, *rows("a.txt", {"c2": ["oder", "warta"]}), at=now)
    # a complete document, then the rewrite's upsert and chunk, its mentions still on their way
    event_log.publish(other + rewrite[:2])
    wait_until(lambda: ("b.txt", "b.txt:c1") in graph_of(hot, tenant)["chunks"], seconds_left(), "an early firing")
    assert [c for c in graph_of(hot, tenant)["chunks"] if c[0] == "a.txt"] == before["chunks"]  # whole, not cleared
    assert ("Neisse", "Oder", 1) in graph_of(hot, tenant)["edges"]
    # the rewrite's mentions, then a document whose mentions never come (its publisher died)
    stray = document_events(tenant, *rows("c.txt", {"c1": ["isar", "munich"]}), at=now)
    event_log.publish(rewrite[2:] + stray[:2])
    wait_until(lambda: ("Oder", "Warta", 1) in graph_of(hot, tenant)["edges"], seconds_left(), "the rewrite written")
    assert ("c.txt", "c.txt:c1") not in graph_of(hot, tenant)["chunks"]  # still waiting for its rows
    # the window's closing firing writes what it has: the stray document is not held back forever
    wait_until(lambda: ("c.txt", "c.txt:c1") in graph_of(hot, tenant)["chunks"], CLOSE_S, "the window closed")
    assert graph_of(hot, tenant) == {"chunks": [("a.txt", "a.txt:c2"), ("b.txt", "b.txt:c1"), ("c.txt", "c.txt:c1")],
                                     "edges": [("Dresden", "Elbe", 1), ("Oder", "Warta", 1)]}


def test_hostile_and_late_events_go_to_the_dead_letters_and_the_job_keeps_running(
        stream_job, hot, event_log, local_resources):
    from confluent_kafka import Producer

    from datacreek_assets.streaming.event_auth import EventSigner, KeyGenerations, tenant_signing_key

    producer = Producer({"bootstrap.servers": event_log.bootstrap_servers})
    marker = uuid.uuid4().hex  # the hostile events' document: their letters are found by it
    good = document_events("stream-late", *rows(marker, {"c1": ["alpha", "beta"]}))[0]
    body = json.loads(good.to_bytes())
    # what a tenant with Kafka credentials could write: its own key, but another tenant's name; or
    # a key of its own that was rotated away
    secret, keys = local_resources["event_log"].signing_secret, KeyGenerations(hot.client.connection)
    retired_key = tenant_signing_key(secret, "stream-late", keys.rotate("stream-late"))
    generation = keys.rotate("stream-late")
    other_key = tenant_signing_key(secret, "stream-a", generation)
    hostile = {
        "not json": b"\xff\xfe{{{ not json" + marker.encode(),
        "invalid tenant": json.dumps({**body, "tenant_id": "../etc"}).encode(),
        "unknown tenant": event_log.signer.signed(replace(good, tenant_id="stream-nobody")),
        "oversized": json.dumps({**body, "doc_id": "x" * 70_000}).encode(),
        "wrong types": json.dumps({**body, "ids": {"chunk_id": 7}}).encode(),
        "unsigned": good.to_bytes(),
        "another tenant's key": EventSigner(tenant_id="stream-late", tenant_key=other_key).signed(good),
        "a retired key": EventSigner(tenant_id="stream-late", tenant_key=retired_key).signed(good),
        # it would move the watermark, shared by every tenant, a day ahead
        "from the future": event_log.signer.signed(replace(
            good, event_time=(datetime.now(timezone.utc) + timedelta(days=1)).isoformat())),
    }
    for value in hostile.values():
        producer.produce(EVENTS_TOPIC, key=b"stream-late", value=value)
    assert producer.flush(10) == 0
    # a good event after them is still applied: the job did not stop
    event_log.publish(document_events("stream-late", *rows("ok.txt", {"c1": ["alpha", "beta"]})))
    wait_until(lambda: graph_of(hot, "stream-late")["edges"] == [("Alpha", "Beta", 1)], CLOSE_S, "the good event")
    assert stream_job.ready()
    letters = [d for d in dead_letters(event_log.bootstrap_servers) if marker in d["event"]]
    reasons = " | ".join(d["reason"] for d in letters)
    assert len(letters) == 8, reasons  # the oversized one is cut to 1 KiB in its letter: found by reason
    assert "not a graph event" in reasons and "unknown tenant 'stream-nobody'" in reasons
    assert "tenant id" in reasons and "carries the strings" in reasons
    assert "unsigned event" in reasons and "the signature is not tenant 'stream-late''s" in reasons
    assert f"retired key of tenant 'stream-late' (generation {generation - 1};" in reasons
    assert "s ahead of the clock" in reasons
    documents = hot.graph("stream-late").ro_query("MATCH (d:Document) RETURN d.doc_id").result_set
    assert marker not in {row[0] for row in documents}  # none of them reached the graph
    assert any("over 65536" in d["reason"] for d in dead_letters(event_log.bootstrap_servers))

    # the watermark is now past this window: an event over a minute older than it is dropped and
    # counted, one inside the lateness is applied
    late = datetime.now(timezone.utc) - timedelta(minutes=5)
    event_log.publish(document_events("stream-late", *rows("late.txt", {"c1": ["gamma", "delta"]}), at=late))
    wait_until(lambda: hot.status("stream-late")["late_dropped"] >= 4, 30, "the late events counted")
    recent = datetime.now(timezone.utc) - timedelta(seconds=WINDOW_SECONDS + 5)
    event_log.publish(document_events("stream-late", *rows("recent.txt", {"c1": ["epsilon", "zeta"]}), at=recent))
    wait_until(lambda: ("Epsilon", "Zeta", 1) in graph_of(hot, "stream-late")["edges"], 30, "the recent late event")
    assert ("Delta", "Gamma", 1) not in graph_of(hot, "stream-late")["edges"]
    assert any(d["reason"].startswith("late:") and "late.txt" in d["event"]
               for d in dead_letters(event_log.bootstrap_servers))
    assert stream_job.ready()


def test_killed_mid_stream_and_restarted_gives_the_graph_of_an_uninterrupted_run(stream_job, hot, event_log):
    at = datetime.now(timezone.utc) - timedelta(seconds=WINDOW_SECONDS + 5)  # late within the lateness: quick
    first = document_events("stream-kill", *rows("one.txt", {"c1": ["danube", "vienna", "linz"], "c2": ["danube", "vienna"]}),
                            at=at)
    first += document_events("stream-kill", *rows("two.txt", {"c1": ["vienna", "linz"]}), at=at)
    event_log.publish(first)
    wait_until(lambda: applied_events(hot, "stream-kill") >= len(first), 40, "the first batch applied")
    wait_until(lambda: offsets_committed(event_log, "stream-kill"), 30, "a checkpoint after it")
    # the second batch in one open window: a part written by an early firing and checkpointed,
    # the rest published just before the kill (the restart restores the window's written count)
    wait_until(lambda: WINDOW_SECONDS - time.time() % WINDOW_SECONDS >= 25, WINDOW_SECONDS + 1, "a window with 25 s left")
    at = datetime.now(timezone.utc)
    second = document_events("stream-kill", *rows("three.txt", {"c1": ["linz", "salzburg"]}), at=at)
    event_log.publish(second)
    wait_until(lambda: applied_events(hot, "stream-kill") >= len(first) + len(second), 15, "an early firing")
    wait_until(lambda: offsets_committed(event_log, "stream-kill"), 30, "a checkpoint after it")
    rest = document_events("stream-kill", *rows("one.txt", {"c1": ["danube", "salzburg"]}), at=at)  # rewritten
    rest += document_events("stream-kill", [], [], [], deleted=["two.txt"], at=at)
    event_log.publish(rest)
    second += rest
    stream_job.kill()  # mid-stream: its window is open, the rest not written
    stream_job.up(240, progress=lambda msg: None)
    assert "resuming from" in stream_job.log_file.read_text()  # from its last checkpoint's offsets and state
    wait_until(lambda: ("three.txt", "three.txt:c1") in graph_of(hot, "stream-kill")["chunks"]
               and ("two.txt", "two.txt:c1") not in graph_of(hot, "stream-kill")["chunks"], CLOSE_S + 30,
               "the second batch applied after the restart")

    # the uninterrupted run: the same events, folded window by window into another tenant's graph
    for i, batch in enumerate((first, second)):
        hot.apply_window(fold("stream-ref", f"w{i}", [replace(e, tenant_id="stream-ref") for e in batch]))
    assert graph_of(hot, "stream-kill") == graph_of(hot, "stream-ref")
    assert graph_of(hot, "stream-kill")["edges"] == [("Danube", "Salzburg", 1), ("Linz", "Salzburg", 1)]


def sensor_result(instance, local_resources, cursor=None):
    import dagster as dg

    from datacreek_assets.defs.streaming.sensors import hot_stream_sensor

    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={
        "hot_graph": local_resources["hot_graph"], "event_log": local_resources["event_log"]})
    return hot_stream_sensor(context)


def check_of(result):
    import dagster as dg

    [check] = [e for e in result.asset_events if isinstance(e, dg.AssetCheckEvaluation)]
    return check


def observed(result) -> dict:
    import dagster as dg

    return {e.partition: e.metadata for e in result.asset_events if isinstance(e, dg.AssetObservation)}


def test_the_sensor_observes_each_tenant_and_fails_its_check_while_the_job_is_down_or_lagging(
        stream_job, hot, event_log, local_resources, instance):
    from confluent_kafka import Producer

    from datacreek_assets.streaming.events import tenant_partition

    instance.add_dynamic_partitions("tenants", ["stream-watch", "stream-idle"])
    event_log.publish(document_events("stream-watch", *rows("s.txt", {"c1": ["oak", "elm"]})))
    wait_until(lambda: applied_events(hot, "stream-watch") >= 4, CLOSE_S, "the window applied")
    wait_until(lambda: offsets_committed(event_log, "stream-watch"), 30, "the offsets committed by a checkpoint")
    result = sensor_result(instance, local_resources)
    assert check_of(result).passed, check_of(result).description
    seen = observed(result)
    assert set(seen) == {"stream-watch", "stream-idle"}
    assert seen["stream-watch"]["edges"].value == 1 and seen["stream-watch"]["events"].value == 4
    assert seen["stream-watch"]["lag_s"].value < 30
    # a second tick with nothing new observes nobody again
    assert observed(sensor_result(instance, local_resources, result.cursor)) == {}

    stream_job.down(progress=lambda msg: None)
    try:
        # an event published five minutes ago (its Kafka time) that nobody consumes: over 3 windows behind
        old_ms = int((time.time() - 300) * 1000)
        producer = Producer({"bootstrap.servers": event_log.bootstrap_servers})
        for event in document_events("stream-watch", *rows("t.txt", {"c1": ["ash", "yew"]})):
            producer.produce(EVENTS_TOPIC, key=b"stream-watch", value=event_log.signer.signed(event),
                             partition=tenant_partition("stream-watch"), timestamp=old_ms)
        assert producer.flush(10) == 0
        down = sensor_result(instance, local_resources, result.cursor)
        assert not check_of(down).passed and "not answering" in check_of(down).description
        lagging = observed(down)
        assert lagging["stream-watch"]["lag_s"].value >= 290 and lagging["stream-watch"]["pending_events"].value >= 4
    finally:
        stream_job.up(240, progress=lambda msg: None)
    wait_until(lambda: ("Ash", "Yew", 1) in graph_of(hot, "stream-watch")["edges"], CLOSE_S + 30, "caught up")
    wait_until(lambda: offsets_committed(event_log, "stream-watch"), 30, "the offsets committed by a checkpoint")
    caught_up = check_of(sensor_result(instance, local_resources))
    assert caught_up.passed, caught_up.description


def test_the_graph_asset_s_events_build_the_hot_graph_and_a_lost_one_is_rebuilt_by_replay(
        stream_job, hot, local_resources, instance, datacreek, cli_env):
    import subprocess

    import dagster as dg

    from datacreek_assets.defs.graph.assets import knowledge_graph
    from datacreek_assets.defs.ingest.assets import parsed_chunks, raw_documents
    from datacreek_assets.object_store import TenantObjectStore
    from datacreek_assets.tenant_lifecycle import add_tenant, remove_tenant
    from resources.factory import open_tenant_stores
    from tests.integration.test_events import CORPUS

    tenant = "stream-replay"
    with open_tenant_stores(local_resources) as stores:
        add_tenant(tenant, stores, instance)
        try:
            objects = TenantObjectStore(stores.objects, tenant)
            for name, text in CORPUS.items():
                objects.put(f"inbox/{name}", text.encode())
            result = dg.materialize([raw_documents, parsed_chunks, knowledge_graph], partition_key=tenant,
                                    instance=instance, resources=local_resources)
            assert result.success
            published = result.asset_materializations_for_node("knowledge_graph")[0].metadata["events_published"].value
            wait_until(lambda: applied_events(hot, tenant) >= published, CLOSE_S, "the graph run's events applied")
            built = graph_of(hot, tenant)
            live = stores.graph.tenant(tenant).live_chunks()
            assert sorted((c["doc_id"], c["chunk_id"]) for c in live) == built["chunks"] and built["edges"]
            # the windows' co-occurrence also went to Neo4j, recomputed from its own chunks: the same edges
            assert stores.graph.tenant(tenant).cooccurrence_edges() == built["edges"]

            hot.drop_scope(tenant)  # lost
            hot.create_scope(tenant)
            replay = subprocess.run([datacreek, "events", "replay", "--tenant", tenant], env=cli_env,
                                    capture_output=True, text=True)
            assert replay.returncode == 0, replay.stderr
            wait_until(lambda: applied_events(hot, tenant) >= published, CLOSE_S, "the replay applied")
            assert graph_of(hot, tenant) == built

            # a document leaves: its edges go from both graphs, the other document's stay
            objects.delete("inbox/tools.md")
            assert dg.materialize([raw_documents, parsed_chunks, knowledge_graph], partition_key=tenant,
                                  instance=instance, resources=local_resources).success
            before_delete = applied_events(hot, tenant)
            # the window's status is recorded after both writes (the hot graph, then Neo4j)
            wait_until(lambda: applied_events(hot, tenant) > before_delete, CLOSE_S, "the delete's window applied")
            after = graph_of(hot, tenant)
            assert any(doc == "tools.md" for doc, _ in built["chunks"])
            assert after["chunks"] == [(doc, chunk) for doc, chunk in built["chunks"] if doc != "tools.md"]
            assert after["edges"] and len(after["edges"]) < len(built["edges"])
            assert stores.graph.tenant(tenant).cooccurrence_edges() == after["edges"]
        finally:
            remove_tenant(tenant, stores, instance, force=True)


def test_a_curator_s_rejection_takes_the_fact_out_of_the_hot_graph(stream_job, hot, event_log, local_resources,
                                                                    tmp_path):
    from datacreek_assets.curation.repair_log import RepairLog
    from datacreek_assets.curation.review import EdgeReview, refresh_queue
    from datacreek_assets.curation.review_store import ReviewStore
    from datacreek_assets.streaming.events import graph_events
    from tests.integration.edge_review_fixtures import review_document

    tenant = "stream-curated"

    def hot_facts() -> set[str]:
        return {r[0] for r in hot.graph(tenant).ro_query("MATCH (f:Fact) RETURN f.fact_id").result_set}

    url = f"sqlite:///{tmp_path / 'curation.db'}"
    store = ReviewStore(url)
    with local_resources["graph_store"].admin() as admin:
        graph = admin.tenant(tenant)
        graph.delete_everything()
        admin.create_scope(tenant)
        try:
            graph.replace_documents([review_document(tenant)])
            event_log.publish(graph_events(graph))  # what the graph run publishes
            wait_until(lambda: f"{tenant}-f3" in hot_facts(), CLOSE_S, "the document's facts in the hot graph")
            before = hot_facts()
            refresh_queue(graph, store, tau=0.0)
            review = EdgeReview(graph, RepairLog(url), store, event_log.publish)
            review.decide(f"{tenant}-f3", 0, "reject", "ada", reason="not on this page")
            wait_until(lambda: f"{tenant}-f3" not in hot_facts(), CLOSE_S, "the rejected fact gone from the hot graph")
            assert hot_facts() == before - {f"{tenant}-f3"}  # the document's other facts stay
            review.undo(RepairLog(url).entries(tenant)[0].id, "ada")
            wait_until(lambda: f"{tenant}-f3" in hot_facts(), CLOSE_S, "the fact back after the undo")
        finally:
            graph.delete_everything()
