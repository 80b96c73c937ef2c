"""FalkorDB hot layer: one graph per tenant (hard isolation by graph name)."""

from __future__ import annotations

from bisect import bisect_left
from datetime import datetime, timezone
from itertools import combinations
from typing import TYPE_CHECKING

from datacreek_assets.tenancy import validate_tenant_id

if TYPE_CHECKING:
    from datacreek_assets.streaming.windows import WindowDelta

GRAPH_PREFIX = "datacreek_tenant_"
HOT_INDEXES = (("Chunk", "chunk_id"), ("Chunk", "doc_id"), ("Entity", "entity_id"), ("Entity", "name"),
               ("Fact", "fact_id"), ("Fact", "doc_id"), ("Document", "doc_id"))
# event-to-queryable latency buckets (seconds) the stream job counts per tenant
# (fine below 10 s, where early firings put them; 32 s is a window plus 2 s, the bound)
LATENCY_BUCKETS = (0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0, 15.0, 20.0, 30.0, 32.0, 45.0, 60.0, 120.0, 300.0)
MAX_HOPS = 2
MAX_ROWS = 1000


# the hot queries and the stream's MERGEs, named so `query_plans` can show that each uses an index
NEIGHBOURS_1HOP = ("MATCH (:Entity {name: $name})-[r:CO_OCCURS]-(n:Entity) "
                   "RETURN n.name, r.weight ORDER BY r.weight DESC, n.name LIMIT $limit")
# Each window keeps on every entity it touched its TOP_NEIGHBOURS strongest neighbours (REFRESH_TOP,
# ordered by weight, then name): a hub's neighbourhood is thousands of edges, its top list one
# property. 1 hop reads the list when it is long enough for the limit.
TOP_NEIGHBOURS = 50
NEIGHBOURS_TOP = ("MATCH (s:Entity {name: $name}) "
                  "UNWIND range(0, size(coalesce(s.top_ids, [])) - 1) AS i "
                  "WITH s.top_ids[i] AS nid, s.top_weights[i] AS w "
                  "MATCH (n:Entity {entity_id: nid}) "
                  "RETURN n.name, w ORDER BY w DESC, n.name LIMIT $limit")
# 2 hops through the TWO_HOP_FANOUT strongest neighbours and theirs: at most 400 rows whatever the
# degrees (a hub's full 2-hop neighbourhood is most of the graph). Direct neighbours in the top list
# are left out; a 2-hop neighbour's weight is the weaker edge of its strongest path.
TWO_HOP_FANOUT = 20
NEIGHBOURS_2HOP = ("MATCH (s:Entity {name: $name}) "
                   "WITH s, coalesce(s.top_ids, []) AS near "
                   "UNWIND range(0, size(near[0..$fanout]) - 1) AS i "
                   "WITH s, near, near[i] AS mid, s.top_weights[i] AS w1 "
                   "MATCH (m:Entity {entity_id: mid}) "
                   "UNWIND range(0, size(coalesce(m.top_ids, [])[0..$fanout]) - 1) AS j "
                   "WITH s, near, w1, m.top_ids[j] AS nid, m.top_weights[j] AS w2 "
                   "WHERE nid <> s.entity_id AND NOT nid IN near "
                   "WITH nid, max(CASE WHEN w1 < w2 THEN w1 ELSE w2 END) AS w "
                   "MATCH (n:Entity {entity_id: nid}) "
                   "RETURN n.name, w ORDER BY w DESC, n.name LIMIT $limit")
# from the edge index on the window, not from every entity (startNode/endNode)
RECENT_EDGES = ("MATCH ()-[r:CO_OCCURS]->() WHERE r.window >= $since "
                "WITH startNode(r) AS a, endNode(r) AS b, r "
                "RETURN a.name, b.name, r.weight, r.window ORDER BY r.window DESC, r.weight DESC, a.name, b.name "
                "LIMIT $limit")
TOP_PAIRS = ("MATCH (a:Entity)-[r:CO_OCCURS]->(b:Entity) RETURN a.name, b.name, r.weight "
             "ORDER BY r.weight DESC, a.name, b.name LIMIT $limit")
MERGE_CHUNKS = "UNWIND $rows AS r MERGE (c:Chunk {chunk_id: r.chunk_id}) SET c.doc_id = r.doc_id, c.window = $w"
MERGE_MENTIONS = ("UNWIND $rows AS r MERGE (e:Entity {entity_id: r.entity_id}) SET e.name = r.name "
                  "WITH r, e MATCH (c:Chunk {chunk_id: r.chunk_id}) MERGE (c)-[m:MENTIONS]->(e) SET m.window = $w")
MERGE_FACTS = ("UNWIND $rows AS r MERGE (f:Fact {fact_id: r.fact_id}) "
               "SET f.doc_id = r.doc_id, f.predicate = r.predicate, f.subject = r.subject, f.object = r.object, "
               "f.chunk_id = r.chunk_id, f.window = $w")
# each document's newest revision applied, and whether it is deleted (kept as a tombstone): events
# of an older revision that arrive later are stale
DOCUMENT_REVISIONS = "UNWIND $docs AS id MATCH (d:Document {doc_id: id}) RETURN d.doc_id, d.revision"
MERGE_DOCUMENTS = ("UNWIND $rows AS r MERGE (d:Document {doc_id: r.doc_id}) "
                   "SET d.revision = r.revision, d.deleted = r.deleted")
MENTION_DEGREES = "UNWIND $ids AS id MATCH (e:Entity {entity_id: id}) RETURN id, indegree(e, 'MENTIONS')"
PAIR_WEIGHTS = ("UNWIND $pairs AS p MATCH (a:Entity {entity_id: p[0]}), (b:Entity {entity_id: p[1]}) "
                "OPTIONAL MATCH (a)<-[:MENTIONS]-(c:Chunk)-[:MENTIONS]->(b) RETURN p[0], p[1], count(DISTINCT c)")
# a cleared document's rows, through the doc_id indexes (one label per MATCH: an OR of labels scans)
CLEARED_MENTIONS = ("UNWIND $docs AS id MATCH (c:Chunk {doc_id: id})-[:MENTIONS]->(e:Entity) "
                    "RETURN c.chunk_id, e.entity_id")
CLEAR_CHUNKS = "UNWIND $docs AS id MATCH (c:Chunk {doc_id: id}) DETACH DELETE c"
CLEAR_FACTS = "UNWIND $docs AS id MATCH (f:Fact {doc_id: id}) DETACH DELETE f"
DROP_UNNAMED = ("UNWIND $ids AS id MATCH (e:Entity {entity_id: id}) WHERE NOT (e)<-[:MENTIONS]-(:Chunk) "
                "DETACH DELETE e")
# every entity no chunk names (a scan): what a write that failed between a clear and DROP_UNNAMED left
SWEEP_UNNAMED = "MATCH (e:Entity) WHERE NOT (e)<-[:MENTIONS]-(:Chunk) DETACH DELETE e"
REFRESH_TOP = ("UNWIND $ids AS id MATCH (e:Entity {entity_id: id}) "
               "OPTIONAL MATCH (e)-[r:CO_OCCURS]-(n:Entity) "
               "WITH e, n, r.weight AS w ORDER BY w DESC, n.name "
               "WITH e, collect(CASE WHEN n IS NULL THEN null ELSE [n.entity_id, w] END)[0..$k] AS top "
               "SET e.top_ids = [x IN top | x[0]], e.top_weights = [x IN top | x[1]]")
MERGE_PAIRS = ("UNWIND $rows AS r MATCH (a:Entity {entity_id: r.a}), (b:Entity {entity_id: r.b}) "
               "MERGE (a)-[e:CO_OCCURS]->(b) SET e.weight = r.weight, e.window = $w")


class UnknownEntity(LookupError):
    pass


def hot_graph_name(tenant_id: str) -> str:
    return GRAPH_PREFIX + validate_tenant_id(tenant_id)


# The longest one FalkorDB command (or connect) waits. Without it a server that stops answering
# hangs its callers for good: FalkorDB 4.16.3 has been seen deadlocked on its graph registry,
# accepting connections into its backlog and answering none. The hot graph's commands take well
# under a second (a window of 30,000 events folds in 2.7 s), so 30 s is far above a slow one.
FALKORDB_TIMEOUT_S = 30.0


def connect_hot_graph(host: str, port: int, username: str = "", password: str = "",
                      timeout_s: float = FALKORDB_TIMEOUT_S) -> "HotGraphStore":
    """A store on a FalkorDB that answered its first commands (INFO, PING) within ``timeout_s``
    each; every later command is bounded by it too (redis' TimeoutError), tried once.
    ``ServiceError`` when it does not answer."""
    import falkordb
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from datacreek_assets.local_services import ServiceError

    if not timeout_s > 0:
        raise ValueError(f"the FalkorDB timeout must be above 0 s, not {timeout_s}")
    try:  # no retries: a frozen server would otherwise cost each command several timeouts
        client = falkordb.FalkorDB(host=host, port=port, username=username or None, password=password or None,
                                   socket_connect_timeout=timeout_s, socket_timeout=timeout_s,
                                   retry=Retry(NoBackoff(), 0))
        client.connection.ping()
    except (redis.RedisError, OSError) as err:
        waited = f" after {timeout_s:g} s" if isinstance(err, redis.TimeoutError) else ""
        raise ServiceError(f"FalkorDB is not reachable at {host}:{port} ({err.__class__.__name__}{waited}); "
                           "locally, start it with `datacreek services up` (`datacreek services down` "
                           "first where it runs but stopped answering)") from None
    return HotGraphStore(client)


class HotGraphStore:
    def __init__(self, client):
        self.client = client  # falkordb.FalkorDB

    def graph(self, tenant_id: str):
        return self.client.select_graph(hot_graph_name(tenant_id))

    def create_scope(self, tenant_id: str) -> None:
        import redis

        graph = self.graph(tenant_id)
        graph.query("MERGE (:Tenant {tenant_id: $tenant})", {"tenant": tenant_id})
        indexes = [f"CREATE INDEX FOR (n:{label}) ON (n.{key})" for label, key in HOT_INDEXES]
        for statement in [*indexes, "CREATE INDEX FOR ()-[r:CO_OCCURS]-() ON (r.window)"]:  # recent edges
            try:
                graph.query(statement)
            except redis.ResponseError as err:
                if "already indexed" not in str(err):
                    raise

    def scope_exists(self, tenant_id: str) -> bool:
        # EXISTS on the graph's key, not GRAPH.LIST: a tenant's ACL user may touch its own key only
        return bool(self.client.connection.exists(hot_graph_name(tenant_id)))

    def node_count(self, tenant_id: str) -> int:
        if not self.scope_exists(tenant_id):
            return 0
        result = self.graph(tenant_id).ro_query("MATCH (n) RETURN count(n)")
        return int(result.result_set[0][0])

    def delete_document(self, tenant_id: str, doc_id: str) -> int:
        """Erasure: the document's chunks and facts go as a stream window's delete takes them (the
        co-occurrence weights recomputed, entities no chunk names removed); returns the nodes removed.
        Its tombstone (id, revision) stays, as Neo4j keeps the purged Document node: an event read
        before the delete still finds it newer."""
        from datacreek_assets.streaming.events import document_events
        from datacreek_assets.streaming.windows import fold, window_of

        if not self.scope_exists(tenant_id):
            return 0
        graph = self.graph(tenant_id)
        before = self.node_count(tenant_id)
        now = datetime.now(timezone.utc)
        stored = graph.query(DOCUMENT_REVISIONS, {"docs": [doc_id]}).result_set  # the delete is its newest state
        revisions = {doc_id: int(stored[0][1] or 0)} if stored else None
        self.apply_window(fold(tenant_id, window_of(now), document_events(tenant_id, [], [], [], deleted=[doc_id],
                                                                           at=now, revisions=revisions)))
        self.drop_unnamed_entities(tenant_id)  # and any name an earlier, failed attempt left
        return max(0, before - self.node_count(tenant_id))  # a graph older than tombstones gains one

    def apply_window(self, delta: WindowDelta) -> dict[str, int]:
        """Write one window's delta (``streaming.windows.fold``) to its tenant's graph; idempotent."""
        graph, w = self.graph(delta.tenant_id), delta.window_id
        stored = dict(graph.query(DOCUMENT_REVISIONS, {"docs": sorted(delta.revisions)}).result_set
                      ) if delta.revisions else {}
        stale = {d for d, revision in delta.revisions.items() if (stored.get(d) or 0) > revision}
        delta.without(stale)
        touched: set[tuple[str, str]] = set()
        cleared = sorted(delta.cleared_docs)
        cleared_entities: set[str] = set()
        if cleared:  # the pairs their older chunks joined lose them
            rows = graph.query(CLEARED_MENTIONS, {"docs": cleared}).result_set
            touched |= _chunk_pairs(rows)
            cleared_entities = {entity_id for _, entity_id in rows}
            graph.query(CLEAR_CHUNKS, {"docs": cleared})
            graph.query(CLEAR_FACTS, {"docs": cleared})
        if delta.chunks:
            graph.query(MERGE_CHUNKS, {"rows": [{"chunk_id": c, "doc_id": d} for c, d in sorted(delta.chunks.items())], "w": w})
        if delta.mentions:
            graph.query(
                MERGE_MENTIONS, {"rows": [{"chunk_id": c, "entity_id": e, "name": n} for c, e, n in sorted(delta.mentions)], "w": w})
        if delta.facts:
            graph.query(
                MERGE_FACTS, {"rows": [delta.facts[f] for f in sorted(delta.facts)], "w": w})
        # every pair in a chunk this window wrote to: its mentions may have come in an earlier window
        touched |= _chunk_pairs(graph.query(
            "UNWIND $chunks AS id MATCH (c:Chunk {chunk_id: id})-[:MENTIONS]->(e:Entity) RETURN c.chunk_id, e.entity_id",
            {"chunks": sorted(delta.chunks)}).result_set) if delta.chunks else set()
        weights = _recompute_pairs(graph, sorted(touched), w)
        if delta.revisions:
            graph.query(MERGE_DOCUMENTS, {"rows": [{"doc_id": d, "revision": r, "deleted": d in delta.deleted_docs}
                                                   for d, r in sorted(delta.revisions.items())]})
        if cleared_entities:  # those no chunk names any more
            graph.query(DROP_UNNAMED, {"ids": sorted(cleared_entities)})
        entities = sorted({e for pair in touched for e in pair})
        for start in range(0, len(entities), 2000):  # their strongest neighbours, for 2-hop queries
            graph.query(REFRESH_TOP, {"ids": entities[start:start + 2000], "k": TOP_NEIGHBOURS})
        return {"chunks": len(delta.chunks), "mentions": len(delta.mentions), "facts": len(delta.facts),
                "deleted_documents": len(delta.deleted_docs), "stale_documents": len(stale), "pairs": len(touched),
                "edges_removed": sum(1 for weight in weights.values() if weight == 0),
                "touched_pairs": sorted(touched)}  # what Neo4j's co-occurrence recomputes too

    def drop_unnamed_entities(self, tenant_id: str) -> None:
        """Remove every entity no chunk names (a scan of the tenant's entities). ``apply_window``
        drops those of the documents it clears; this heals a write that failed in between, whose
        replay no longer finds the chunks (the stream job runs it once per tenant and start)."""
        self.graph(tenant_id).query(SWEEP_UNNAMED)

    # -- the stream job's status, per tenant (on its :Tenant node) ----------------
    def record_window(self, tenant_id: str, window_id: str, window_end_ms: int, events: int,
                      latencies_s: list[float], applied_ms: int) -> None:
        """A window was written: when, how many events, and their event-to-queryable latencies
        (cumulative histogram buckets; the stream job is a tenant's one writer)."""
        graph = self.graph(tenant_id)
        row = graph.query("MERGE (t:Tenant {tenant_id: $tenant}) RETURN t.latency_counts, t.latency_sum",
                          {"tenant": tenant_id}).result_set[0]
        counts, total = _latency_counts(row[0]), float(row[1] or 0.0)
        if counts != row[0]:  # started over: the sum with the counts
            total = 0.0
        for seconds in latencies_s:
            counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        graph.query(
            "MATCH (t:Tenant {tenant_id: $tenant}) SET t.last_window = $w, t.last_applied_ms = $applied, "
            "t.last_window_end_ms = CASE WHEN coalesce(t.last_window_end_ms, 0) > $end "
            "THEN t.last_window_end_ms ELSE $end END, t.events = coalesce(t.events, 0) + $n, "
            "t.windows = coalesce(t.windows, 0) + 1, t.latency_counts = $counts, t.latency_sum = $sum",
            {"tenant": tenant_id, "w": window_id, "applied": applied_ms, "end": window_end_ms, "n": events,
             "counts": counts, "sum": total + sum(latencies_s)})

    def record_late(self, tenant_id: str, dropped: int) -> None:
        self.graph(tenant_id).query("MERGE (t:Tenant {tenant_id: $tenant}) "
                                    "SET t.late_dropped = coalesce(t.late_dropped, 0) + $n",
                                    {"tenant": tenant_id, "n": dropped})

    def status(self, tenant_id: str) -> dict:
        """The stream's status of a tenant and its hot graph's size (all zero before any window)."""
        if not self.scope_exists(tenant_id):
            return {"exists": False}
        graph = self.graph(tenant_id)
        row = graph.ro_query(
            "MATCH (t:Tenant {tenant_id: $tenant}) RETURN t.last_window, t.last_window_end_ms, t.last_applied_ms, "
            "t.events, t.windows, t.late_dropped, t.latency_counts, t.latency_sum", {"tenant": tenant_id}).result_set
        keys = ("last_window", "last_window_end_ms", "last_applied_ms", "events", "windows", "late_dropped",
                "latency_counts", "latency_sum")
        status = dict(zip(keys, row[0] if row else [None] * len(keys)))
        for key in ("events", "windows", "late_dropped", "latency_sum"):
            status[key] = status[key] or 0
        if _latency_counts(status["latency_counts"]) != status["latency_counts"]:  # counted on other buckets
            status["latency_sum"] = 0.0
        status["latency_counts"] = _latency_counts(status["latency_counts"])
        status["nodes"] = int(graph.ro_query("MATCH (n) RETURN count(n)").result_set[0][0])
        status["edges"] = int(graph.ro_query("MATCH ()-[e:CO_OCCURS]->() RETURN count(e)").result_set[0][0])
        return {"exists": True, **status}

    # -- hot queries (read-only; every one inside the tenant's own graph) --------
    def neighbours(self, tenant_id: str, entity: str, hops: int = 1, limit: int = 50) -> list[dict]:
        """Entities co-occurring with ``entity`` (its name), strongest first; with ``hops=2`` also
        those reached through its strongest neighbours (NEIGHBOURS_2HOP)."""
        if hops not in range(1, MAX_HOPS + 1):
            raise ValueError(f"hops must be 1 or {MAX_HOPS}")
        graph = self.graph(tenant_id)
        params = {"name": entity, "limit": limit, "fanout": TWO_HOP_FANOUT}
        near = graph.ro_query(NEIGHBOURS_TOP if limit <= TOP_NEIGHBOURS else NEIGHBOURS_1HOP, params).result_set
        found = [{"entity": n, "weight": int(w), "hops": 1} for n, w in near]
        if hops == 2:
            found += [{"entity": n, "weight": int(w), "hops": 2} for n, w in graph.ro_query(NEIGHBOURS_2HOP, params).result_set]
        if not found and not graph.ro_query("MATCH (e:Entity {name: $name}) RETURN count(e)", params).result_set[0][0]:
            raise UnknownEntity(f"no entity named {entity!r} in this tenant's hot graph")
        return found[:limit]

    def recent_edges(self, tenant_id: str, since_window: str, limit: int = 100) -> list[dict]:
        """Co-occurrence edges a window at or after ``since_window`` wrote, newest first."""
        rows = self.graph(tenant_id).ro_query(RECENT_EDGES, {"since": since_window, "limit": limit}).result_set
        return [{"a": a, "b": b, "weight": int(w), "window": win} for a, b, w, win in rows]

    def top_pairs(self, tenant_id: str, limit: int = 20) -> list[dict]:
        """The most co-occurring entity pairs."""
        rows = self.graph(tenant_id).ro_query(TOP_PAIRS, {"limit": limit}).result_set
        return [{"a": a, "b": b, "weight": int(w)} for a, b, w in rows]

    def query_plans(self, tenant_id: str) -> dict[str, str]:
        """FalkorDB's plan (GRAPH.EXPLAIN) of each hot query and each of the stream's MERGEs."""
        graph = self.graph(tenant_id)
        one = {"rows": [{"chunk_id": "c", "doc_id": "d", "entity_id": "e", "name": "n", "fact_id": "f",
                         "predicate": "p", "subject": "s", "object": "o", "a": "e", "b": "e", "weight": 1}], "w": "w"}
        queries = {"neighbours_1hop": (NEIGHBOURS_1HOP, {"name": "n", "limit": 1}),
                   "neighbours_top": (NEIGHBOURS_TOP, {"name": "n", "limit": 1}),
                   "neighbours_2hop": (NEIGHBOURS_2HOP, {"name": "n", "limit": 1, "fanout": TWO_HOP_FANOUT}),
                   "merge_chunks": (MERGE_CHUNKS, one), "merge_mentions": (MERGE_MENTIONS, one),
                   "recent_edges": (RECENT_EDGES, {"since": "w", "limit": 1}),
                   "merge_facts": (MERGE_FACTS, one), "merge_pairs": (MERGE_PAIRS, one),
                   "document_revisions": (DOCUMENT_REVISIONS, {"docs": ["d"]}),
                   "merge_documents": (MERGE_DOCUMENTS, {"rows": [{"doc_id": "d", "revision": 1, "deleted": False}]}),
                   "refresh_top": (REFRESH_TOP, {"ids": ["e"], "k": TOP_NEIGHBOURS})}
        return {name: str(graph.explain(cypher, params)) for name, (cypher, params) in queries.items()}

    def drop_scope(self, tenant_id: str) -> bool:
        if not self.scope_exists(tenant_id):
            return False
        self.graph(tenant_id).delete()
        return True

    def tenants(self) -> list[str]:
        return sorted(g[len(GRAPH_PREFIX):] for g in self.client.list_graphs() if g.startswith(GRAPH_PREFIX))


def _latency_counts(stored: list[int] | None) -> list[int]:
    """A tenant's latency histogram; counted on other buckets (an older release's), it starts over."""
    if not stored or len(stored) != len(LATENCY_BUCKETS) + 1:
        return [0] * (len(LATENCY_BUCKETS) + 1)
    return list(stored)


def _chunk_pairs(rows) -> set[tuple[str, str]]:
    """Entity pairs mentioned by one chunk, from (chunk_id, entity_id) rows; each pair ordered."""
    by_chunk: dict[str, set[str]] = {}
    for chunk_id, entity_id in rows:
        by_chunk.setdefault(chunk_id, set()).add(entity_id)
    return {pair for entities in by_chunk.values() for pair in combinations(sorted(entities), 2)}


def _recompute_pairs(graph, pairs: list[tuple[str, str]], window_id: str) -> dict[tuple[str, str], int]:
    """Each pair's weight from the chunks mentioning both (0: the edge goes)."""
    if not pairs:
        return {}
    entities = sorted({e for pair in pairs for e in pair})
    mentioned = dict(graph.query(MENTION_DEGREES, {"ids": entities}).result_set)
    # the count walks the first entity's chunks: start from the one fewer chunks mention (a hub's
    # pairs, most of a skewed window's, then cost the other entity's few chunks; measured in bench/)
    rows = graph.query(PAIR_WEIGHTS, {"pairs": [[a, b] if mentioned.get(a, 0) <= mentioned.get(b, 0) else [b, a]
                                                for a, b in pairs]}).result_set
    weights = {(a, b) if a < b else (b, a): int(n) for a, b, n in rows}
    live = [{"a": a, "b": b, "weight": n} for (a, b), n in weights.items() if n > 0]
    gone = [[a, b] for (a, b), n in weights.items() if n == 0]
    if live:
        graph.query(MERGE_PAIRS, {"rows": live, "w": window_id})
    if gone:
        graph.query("UNWIND $pairs AS p MATCH (:Entity {entity_id: p[0]})-[e:CO_OCCURS]->(:Entity {entity_id: p[1]}) "
                    "DELETE e", {"pairs": gone})
    return weights
