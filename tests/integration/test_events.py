"""Graph events in the real Kafka (KRaft, started by the test session like every service): the
knowledge_graph asset publishes one per chunk, mention and fact it writes and one per deleted
document, keyed by tenant; `datacreek events replay` publishes a tenant's live graph."""

import subprocess
import uuid

import dagster as dg
import pytest

from datacreek_assets.defs.graph.assets import knowledge_graph
from datacreek_assets.defs.ingest.assets import parsed_chunks, raw_documents
from datacreek_assets.streaming.events import (DEAD_LETTER_TOPIC, EVENTS_TOPIC, EventLog, EventLogError, GraphEvent,
                                               tenant_partition)
from datacreek_assets.tenant_lifecycle import add_tenant, remove_tenant
from resources.factory import open_tenant_stores

pytestmark = pytest.mark.integration
TENANTS = ("events-a", "events-b")
CORPUS = {  # the same document names and entities in both tenants
    "rivers.txt": "The Danube flows through Vienna and Budapest. The Rhine rises in the Swiss Alps.",
    "tools.md": "# Tools\n\nGit is a distributed version control system. Neo4j stores data as nodes.",
}


def all_messages(bootstrap: str) -> list:
    """Every message of the events topic, from the start up to its end now, with key and partition."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(EVENTS_TOPIC, timeout=10).topics[EVENTS_TOPIC].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(EVENTS_TOPIC, p), timeout=10)[1] for p in partitions}
        consumer.assign([TopicPartition(EVENTS_TOPIC, p, 0) for p in partitions])
        found, left = [], {p: end for p, end in ends.items() if end > 0}
        while left:
            message = consumer.poll(10)
            assert message is not None, f"the topic ended early: {left} still to read"
            if message.error():
                continue
            found.append(message)
            if message.offset() + 1 >= left.get(message.partition(), 0):
                left.pop(message.partition(), None)
        return found
    finally:
        consumer.close()


@pytest.fixture
def tenants(local_resources, instance):
    with open_tenant_stores(local_resources) as stores:
        for tenant in TENANTS:
            add_tenant(tenant, stores, instance)
        yield stores
        for tenant in TENANTS:
            remove_tenant(tenant, stores, instance, force=True)


def test_the_graph_asset_publishes_events_keyed_by_tenant_and_replay_publishes_the_live_graph(
        local_resources, instance, tenants, cli_env, datacreek):
    from datacreek_assets.object_store import TenantObjectStore

    bootstrap = local_resources["event_log"].bootstrap_servers
    for tenant in TENANTS:
        objects = TenantObjectStore(tenants.objects, tenant)
        for name, text in CORPUS.items():
            objects.put(f"inbox/{name}", text.encode())
        result = dg.materialize([raw_documents, parsed_chunks, knowledge_graph], partition_key=tenant,
                                instance=instance, resources=local_resources)
        assert result.success
    published = result.asset_materializations_for_node("knowledge_graph")[0].metadata["events_published"].value
    graph = tenants.graph.tenant("events-b")
    live = {"chunk": len(graph.live_chunks()), "mention": len(graph.live_mentions()), "fact": len(graph.live_facts())}
    assert published == len(CORPUS) + sum(live.values()) and live["mention"] > 0  # + a document event each

    def events_of(messages, tenant):
        return [GraphEvent.from_bytes(m.value()) for m in messages if m.key() == tenant.encode()]

    messages = all_messages(bootstrap)
    # the key is the tenant, and a tenant's events keep one partition (the topic may also hold
    # other tests' events, hostile ones included, under other keys)
    for message in (m for m in messages if m.key() in {t.encode() for t in TENANTS}):
        assert GraphEvent.from_bytes(message.value()).tenant_id == message.key().decode()
    for tenant in TENANTS:
        assert {m.partition() for m in messages if m.key() == tenant.encode()} == {tenant_partition(tenant)}
        mine = events_of(messages, tenant)
        assert {kind: sum(e.kind == kind for e in mine) for kind in live} == live  # same corpus, same counts
        assert {e.doc_id for e in mine} == set(CORPUS) and {e.op for e in mine} == {"upsert"}

    # a document leaves the inbox: one delete event, for that tenant only
    TenantObjectStore(tenants.objects, "events-a").delete("inbox/tools.md")
    assert dg.materialize([raw_documents, parsed_chunks, knowledge_graph], partition_key="events-a",
                          instance=instance, resources=local_resources).success
    messages = all_messages(bootstrap)
    deletes = [(e.tenant_id, e.doc_id) for tenant in TENANTS for e in events_of(messages, tenant) if e.op == "delete"]
    assert deletes == [("events-a", "tools.md")]

    # replay: every live document and row of the tenant's graph again, and its deleted document
    before = len(events_of(messages, "events-a"))
    run = subprocess.run([datacreek, "events", "replay", "--tenant", "events-a"], env=cli_env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    graph = tenants.graph.tenant("events-a")
    rows = 1 + len(graph.live_chunks()) + len(graph.live_mentions()) + len(graph.live_facts())  # 1 document
    assert f"events-a: {rows + 1} events published" in run.stdout and "1 deleted documents" in run.stdout
    replayed = events_of(all_messages(bootstrap), "events-a")[before:]
    assert len(replayed) == rows + 1 and {e.doc_id for e in replayed if e.op == "upsert"} == {"rivers.txt"}
    assert [(e.op, e.doc_id) for e in replayed if e.op == "delete"] == [("delete", "tools.md")]

    # an operator's delete and undo reach the event log at once
    for args in (["tenant", "delete-document", "events-a", "rivers.txt"], ["tenant", "undo", "events-a", "rivers.txt"]):
        done = subprocess.run([datacreek, *args], env=cli_env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "warning" not in done.stderr, done.stderr
    after_cli = events_of(all_messages(bootstrap), "events-a")[before + rows + 1:]
    assert (after_cli[0].op, after_cli[0].doc_id) == ("delete", "rivers.txt")
    assert len(after_cli) == 1 + rows and {e.op for e in after_cli[1:]} == {"upsert"}
    # each state of the document has a newer revision (the hot graph orders them by it)
    written = {e.revision for e in replayed if e.doc_id == "rivers.txt"}
    assert len(written) == 1 and min(written) > 0
    undone = {e.revision for e in after_cli[1:]}
    assert len(undone) == 1 and min(written) < after_cli[0].revision < min(undone)
    for bad, code in (("../events-a", 2), ("events-z", 2)):  # invalid, and not registered
        refused = subprocess.run([datacreek, "events", "replay", "--tenant", bad], env=cli_env, capture_output=True,
                                 text=True, timeout=120)
        assert refused.returncode == code, refused.stderr


def test_the_topics_keep_events_no_longer_than_erasure_allows(local_resources):
    from confluent_kafka.admin import AdminClient, ConfigResource

    from datacreek_assets.streaming.events import DEAD_LETTER_TOPIC, RETENTION_MS

    bootstrap = local_resources["event_log"].bootstrap_servers
    local_resources["event_log"].event_log().ensure_topics()
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for topic in (EVENTS_TOPIC, DEAD_LETTER_TOPIC):
        resource = ConfigResource("topic", topic)
        config = admin.describe_configs([resource])[resource].result()
        assert int(config["retention.ms"].value) == RETENTION_MS < 30 * 24 * 3600 * 1000


def test_the_graph_is_written_when_the_event_log_is_down(local_resources, instance, tenants):
    from datacreek_assets.object_store import TenantObjectStore
    from resources.stores import EventLogResource

    TenantObjectStore(tenants.objects, "events-a").put("inbox/rivers.txt", CORPUS["rivers.txt"].encode())
    unreachable = {**local_resources, "event_log": EventLogResource(bootstrap_servers="127.0.0.1:1", timeout_s=2)}
    result = dg.materialize([raw_documents, parsed_chunks, knowledge_graph], partition_key="events-a",
                            instance=instance, resources=unreachable)
    assert result.success  # Neo4j, the truth, has the document; `events replay` catches the log up
    metadata = result.asset_materializations_for_node("knowledge_graph")[0].metadata
    assert metadata["events_published"].value == 0 and metadata["events_not_published"].value > 0
    assert metadata["documents_written"].value == 1


def test_a_tenant_s_kafka_user_writes_its_own_signed_events_and_nothing_else(local_resources):
    """`tenant credentials` gives a tenant's pods a SCRAM user on the tenant listener and the
    tenant's signing key: they publish the tenant's events, and cannot read any topic, write
    another, sign another tenant's events, or log in once revoked."""
    import redis
    from confluent_kafka import Consumer, Producer

    from datacreek_assets.streaming.event_auth import KEY_GENERATIONS, KeyGenerations, verified
    from datacreek_assets.tenant_credentials import (falkordb_user, grant_falkordb_user, kafka_credentials,
                                                     revoke_falkordb_user, revoke_kafka_user)
    from resources.stores import EventLogResource

    platform = local_resources["event_log"]
    falkordb = local_resources["hot_graph"].store().client.connection
    keys = KeyGenerations(falkordb)
    env = kafka_credentials(platform, falkordb, "events-a")
    assert env["DATACREEK_KAFKA_BOOTSTRAP"] == platform.tenant_bootstrap_servers != platform.bootstrap_servers
    assert env["DATACREEK_EVENT_SIGNING_SECRET"] == "" and env["DATACREEK_EVENT_SIGNING_KEY"]

    def own(env: dict):  # the event log as the tenant's pods configure it
        return EventLogResource(bootstrap_servers=env["DATACREEK_KAFKA_BOOTSTRAP"], timeout_s=8,
                                username=env["DATACREEK_KAFKA_USERNAME"], password=env["DATACREEK_KAFKA_PASSWORD"],
                                signing_key=env["DATACREEK_EVENT_SIGNING_KEY"]).event_log()

    doc = f"{uuid.uuid4().hex}.txt"
    mine = GraphEvent("events-a", doc, "document", "delete", "2026-12-02T00:00:00+00:00", revision=3)
    log = own(env)
    try:
        assert log.publish([mine]) == 1
        with pytest.raises(EventLogError, match="cannot publish tenant 'events-b'"):
            log.publish([GraphEvent("events-b", doc, "document", "delete", mine.event_time)])
    finally:
        log.close()
    # on the topic, signed with events-a's key (what the stream job checks)
    [message] = [m for m in all_messages(platform.bootstrap_servers) if doc.encode() in m.value()]
    assert verified(message.value(), platform.signing_secret, keys.current) == mine
    # credentials issued again rotate the key: the one issued before is refused from then on
    generation = keys.current("events-a")
    assert env["DATACREEK_EVENT_SIGNING_KEY"].startswith(f"{generation}:")
    env = kafka_credentials(platform, falkordb, "events-a")
    assert env["DATACREEK_EVENT_SIGNING_KEY"].startswith(f"{generation + 1}:")
    assert keys.current("events-a") == generation + 1
    with pytest.raises(EventLogError, match=f"retired key of tenant 'events-a' \\(generation {generation};"):
        verified(message.value(), platform.signing_secret, keys.current)
    # and a tenant's FalkorDB user reaches its own graph only, not the generations
    as_tenant = redis.Redis(port=falkordb.connection_pool.connection_kwargs["port"], username=falkordb_user("events-a"),
                            password=grant_falkordb_user(falkordb, "events-a"))
    try:
        for attempt in (lambda: as_tenant.hget(KEY_GENERATIONS, "events-a"),
                        lambda: as_tenant.hset(KEY_GENERATIONS, "events-a", 1)):
            with pytest.raises(redis.exceptions.NoPermissionError):
                attempt()
    finally:
        as_tenant.close()
        revoke_falkordb_user(falkordb, "events-a")

    sasl = {"bootstrap.servers": env["DATACREEK_KAFKA_BOOTSTRAP"], "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": env["DATACREEK_KAFKA_USERNAME"],
            "sasl.password": env["DATACREEK_KAFKA_PASSWORD"], "log_level": 0}
    reader = Consumer({**sasl, "group.id": f"test-{uuid.uuid4().hex}", "auto.offset.reset": "earliest"})
    try:
        reader.subscribe([EVENTS_TOPIC])
        message = reader.poll(10)
        assert message is not None and message.error() is not None  # no group, no read: other tenants' events
        assert "AUTHORIZATION_FAILED" in message.error().name()
    finally:
        reader.close()
    refused = []
    writer = Producer({**sasl, "message.timeout.ms": 8000})
    writer.produce(DEAD_LETTER_TOPIC, value=b"x", on_delivery=lambda err, _msg: refused.append(err))
    writer.flush(10)
    assert refused and refused[0] is not None and refused[0].name() == "TOPIC_AUTHORIZATION_FAILED"

    assert revoke_kafka_user(platform.bootstrap_servers, "events-a")
    assert not revoke_kafka_user(platform.bootstrap_servers, "events-a")  # already gone
    log = own(env)
    try:
        with pytest.raises(EventLogError, match="Authentication failed"):
            log.publish([mine])
    finally:
        log.close()


def test_an_unreachable_event_log_is_a_clear_error():
    log = EventLog("127.0.0.1:1", timeout_s=3)
    event = GraphEvent("events-a", "a.txt", "document", "delete", "2026-12-02T00:00:00+00:00")
    with pytest.raises(EventLogError, match="not reachable at 127.0.0.1:1"):
        log.publish([event])


@pytest.mark.parametrize("value, reason", [
    (b"not json", "Expecting value"),
    (b'{"tenant_id": "../x", "doc_id": "a", "kind": "chunk", "op": "upsert", "event_time": "t", "ids": {}}',
     "tenant id"),
    (b'{"tenant_id": "acme", "doc_id": "a", "kind": "drop", "op": "upsert", "event_time": "t", "ids": {}}',
     "kind='drop'"),
    (b'{"tenant_id": "acme", "doc_id": "a"}', "kind"),
    (b'{"tenant_id": "acme", "doc_id": 7, "kind": "chunk", "op": "upsert", "event_time": "t", "ids": []}',
     "strings"),
    (b'{"tenant_id": "acme", "doc_id": "a", "kind": "chunk", "op": "upsert", "event_time": "t", "ids": {}}',
     "chunk_id"),
    (b'{"tenant_id": "acme", "doc_id": "a", "kind": "chunk", "op": "upsert", "event_time": "t",'
     b' "ids": {"chunk_id": {"nested": 1}}}', "strings"),
    (b'{"tenant_id": "acme", "doc_id": "a", "kind": "document", "op": "delete", "event_time": "yesterday",'
     b' "ids": {}}', "event_time"),
    (b"[" * 70_000, "over 65536"),
    (b'{"tenant_id": "acme", "doc_id": "a", "kind": "document", "op": "delete", "event_time": "2026-01-01T00:00:00+00:00",'
     b' "ids": {}, "revision": "7"}', "revision"),
    (b'{"tenant_id": "acme", "doc_id": "a", "kind": "document", "op": "delete", "event_time": "2026-01-01T00:00:00+00:00",'
     b' "ids": {}, "revision": -1}', "revision"),
])
def test_hostile_event_bytes_are_refused_with_a_reason(value, reason):
    with pytest.raises(EventLogError, match=reason):
        GraphEvent.from_bytes(value)
