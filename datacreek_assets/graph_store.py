"""The one way Datacreek talks Cypher to Neo4j.

Neo4j Community (what runs locally) has a single user database, so every node
carries ``tenant_id`` and every query executed for a tenant goes through
:meth:`TenantGraph._execute`, which binds ``$tenant`` itself and refuses Cypher in which
any node pattern is not bound to it: each pattern carries ``{tenant_id: $tenant}`` or names a
variable that an earlier scoped pattern bound. On Neo4j Enterprise/Aura the same
repository also opens its sessions on the tenant's own database
(``isolation="database"``): the label scope stays as a second line of defence.

A test scans the code base for Cypher executed anywhere else.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, TypeVar

from datacreek_assets.graph.cypher_scope import ScopedTransaction, UnscopedQuery, check_scoped, is_schema_statement
from datacreek_assets.graph.fact_curation import FactCuration, carry_curation, restore_curation
from datacreek_assets.graph.revisions import NEXT_REVISION
from datacreek_assets.tenancy import validate_tenant_id

ISOLATION_MODES = ("label", "database")

# Uniqueness constraints on tenant-scoped keys back every MERGE (composite
# uniqueness constraints are available in Community Edition).
SCHEMA_STATEMENTS = [
    "CREATE CONSTRAINT tenant_key IF NOT EXISTS FOR (t:Tenant) REQUIRE t.tenant_id IS UNIQUE",
    "CREATE CONSTRAINT document_key IF NOT EXISTS FOR (d:Document) REQUIRE (d.tenant_id, d.doc_id) IS UNIQUE",
    "CREATE CONSTRAINT chunk_key IF NOT EXISTS FOR (c:Chunk) REQUIRE (c.tenant_id, c.chunk_id) IS UNIQUE",
    "CREATE CONSTRAINT entity_key IF NOT EXISTS FOR (e:Entity) REQUIRE (e.tenant_id, e.entity_id) IS UNIQUE",
    "CREATE CONSTRAINT fact_key IF NOT EXISTS FOR (f:Fact) REQUIRE (f.tenant_id, f.fact_id) IS UNIQUE",
    "CREATE CONSTRAINT migration_key IF NOT EXISTS FOR (m:SchemaMigration) REQUIRE (m.tenant_id, m.version) IS UNIQUE",
    "CREATE INDEX chunk_document IF NOT EXISTS FOR (c:Chunk) ON (c.tenant_id, c.doc_id)",
    "CREATE INDEX fact_document IF NOT EXISTS FOR (f:Fact) ON (f.tenant_id, f.doc_id)",
]

TENANT_LABELS = ("Document", "Chunk", "Entity", "Fact")
# relationship type -> (start label, end label): every pattern names both ends' labels
RELATIONSHIPS = {
    "HAS_CHUNK": ("Document", "Chunk"),
    "NEXT": ("Chunk", "Chunk"),
    "MENTIONS": ("Chunk", "Entity"),
    "SUBJECT": ("Fact", "Entity"),
    "OBJECT": ("Fact", "Entity"),
    "SOURCE": ("Fact", "Chunk"),
}



T = TypeVar("T")


# rows written per transaction (`_document_rows`): each commit re-merges its documents' entities
# and pays a round trip, so a group is as large as memory allows (at most ~40 MB of chunk text at
# 2 kB a chunk); two commits of 50 documents each wrote 17 % slower than one of 100
# (bench/graph_writer.py's tenant)
ROWS_PER_TRANSACTION = 20_000


def tenant_database_name(tenant_id: str) -> str:
    # Neo4j database names must start with a letter; tenant ids may start with a digit.
    return f"tenant-{validate_tenant_id(tenant_id)}"


class GraphAdmin:
    """Schema and per-tenant scope management (not tenant data)."""

    def __init__(self, driver, isolation: str = "label", migrations_dir: str | None = None):
        if isolation not in ISOLATION_MODES:
            raise ValueError(f"isolation must be one of {ISOLATION_MODES}, got {isolation!r}")
        self.driver = driver
        self.isolation = isolation
        self.migrations_dir = migrations_dir  # None: the project's db/migration

    def ensure_schema(self, database: str | None = None) -> None:
        for statement in SCHEMA_STATEMENTS:
            self.driver.execute_query(statement, database_=database)

    def tenant(self, tenant_id: str) -> "TenantGraph":
        return TenantGraph(self.driver, tenant_id, self.isolation)

    def apply_schema_statement(self, tenant_id: str, statement: str) -> None:
        """An idempotent index or constraint statement of a migration, on the tenant's database."""
        if not is_schema_statement(statement):
            raise UnscopedQuery("only CREATE/DROP INDEX or CONSTRAINT ... IF [NOT] EXISTS runs outside a tenant's scope")
        self.driver.execute_query(statement, database_=self.tenant(tenant_id).database)

    def create_scope(self, tenant_id: str) -> None:
        graph = self.tenant(tenant_id)
        if self.isolation == "database":
            self.driver.execute_query(
                "CREATE DATABASE $name IF NOT EXISTS WAIT", name=graph.database, database_="system"
            )
        self.ensure_schema(graph.database)
        graph.touch_scope()

    def drop_scope(self, tenant_id: str) -> int:
        graph = self.tenant(tenant_id)
        deleted = graph.delete_everything()
        if self.isolation == "database":
            self.driver.execute_query("DROP DATABASE $name IF EXISTS", name=graph.database, database_="system")
        return deleted


@dataclass
class GraphCounts:
    nodes: dict[str, int]
    relationships: dict[str, int]


class TenantGraph(FactCuration):
    """Everything one tenant may do in the graph. Nothing here can name another tenant."""

    def __init__(self, driver, tenant_id: str, isolation: str = "label"):
        self.driver = driver
        self.tenant_id = validate_tenant_id(tenant_id)
        self.isolation = isolation
        self.database = tenant_database_name(tenant_id) if isolation == "database" else None

    # The two choke points for tenant Cypher: single statements and write transactions.
    def _execute(self, cypher: str, **params: Any) -> list[dict]:
        check_scoped(cypher, params)
        records, _, _ = self.driver.execute_query(cypher, {**params, "tenant": self.tenant_id}, database_=self.database)
        return [record.data() for record in records]

    def _write(self, work: Callable[[ScopedTransaction], T]) -> tuple[T, Counter]:
        """Run ``work`` in one write transaction: all of it lands, or none of it."""
        box: dict = {}

        def unit(tx):
            scoped = ScopedTransaction(tx, self.tenant_id)  # fresh tally on each retry
            box["counters"] = scoped.counters
            return work(scoped)

        with self.driver.session(database=self.database) as session:
            value = session.execute_write(unit)
        return value, box["counters"]

    # -- scope -------------------------------------------------------------
    def touch_scope(self) -> None:
        self._execute("MERGE (t:Tenant {tenant_id: $tenant}) ON CREATE SET t.created_at = datetime()")

    def scope_exists(self) -> bool:
        return bool(self._execute("MATCH (t:Tenant {tenant_id: $tenant}) RETURN t.tenant_id AS id"))

    def has_data(self) -> bool:
        rows = self._execute(
            "MATCH (d:Document {tenant_id: $tenant}) RETURN count(d) AS n"
        )
        return rows[0]["n"] > 0

    def delete_everything(self, batch: int = 5000) -> int:
        deleted = 0
        for label in (*TENANT_LABELS, "SchemaMigration", "Tenant"):
            while True:
                rows = self._execute(
                    f"MATCH (n:{label} {{tenant_id: $tenant}}) WITH n LIMIT $batch DETACH DELETE n RETURN count(*) AS n",
                    batch=batch,
                )
                deleted += rows[0]["n"]
                if rows[0]["n"] < batch:
                    break
        return deleted

    def counts(self) -> GraphCounts:
        nodes = {}
        for label in TENANT_LABELS:
            rows = self._execute(
                f"MATCH (n:{label} {{tenant_id: $tenant}}) WHERE n.deleted_at IS NULL RETURN count(n) AS n"
            )
            nodes[label] = rows[0]["n"]
        rels = {}
        for rel, (a, b) in RELATIONSHIPS.items():
            rows = self._execute(
                f"MATCH (a:{a} {{tenant_id: $tenant}})-[r:{rel}]->(b:{b} {{tenant_id: $tenant}}) "
                "WHERE a.deleted_at IS NULL AND b.deleted_at IS NULL RETURN count(r) AS n"
            )
            if rows[0]["n"]:
                rels[rel] = rows[0]["n"]
        return GraphCounts(nodes, rels)

    def total_node_count(self) -> int:
        """Every node of the tenant, soft-deleted ones included (what removal would destroy)."""
        return sum(
            self._execute(f"MATCH (n:{label} {{tenant_id: $tenant}}) RETURN count(n) AS n")[0]["n"]
            for label in TENANT_LABELS
        )


    # -- schema migrations (graph/migrations.py decides what to apply) ----------
    def applied_migrations(self) -> list[dict]:
        return self._execute(
            "MATCH (m:SchemaMigration {tenant_id: $tenant}) RETURN m.version AS version, m.rank AS rank, "
            "m.description AS description, m.checksum AS checksum, m.script AS script, m.applied_at AS applied_at "
            "ORDER BY m.rank"
        )

    def apply_migration(self, statements: list[str], record: dict) -> Counter:
        """A data migration's statements and its version row in one write transaction: a failure
        changes nothing and records nothing; the row's uniqueness refuses a concurrent second run."""

        def work(tx: ScopedTransaction) -> None:
            for statement in statements:
                tx.run(statement)
            tx.run("CREATE (m:SchemaMigration {tenant_id: $tenant}) SET m += $record, m.applied_at = datetime()",
                   record=record)

        return self._write(work)[1]

    def record_migration(self, record: dict) -> None:
        """The version row of a schema migration, whose statements cannot share a transaction."""
        self._execute("CREATE (m:SchemaMigration {tenant_id: $tenant}) SET m += $record, m.applied_at = datetime()",
                      record=record)

    # -- documents: incremental writes ----------------------------------------
    def document_states(self) -> dict[str, dict]:
        """doc_id -> {signature, deleted_at, deleted_by, revision} for every document, live or
        soft-deleted."""
        rows = self._execute(
            "MATCH (d:Document {tenant_id: $tenant}) "
            "RETURN d.doc_id AS doc_id, d.signature AS signature, d.deleted_at AS deleted_at, "
            "d.deleted_by AS deleted_by, coalesce(d.revision, 0) AS revision"
        )
        return {r["doc_id"]: r for r in rows}

    def replace_documents(self, docs: list[dict], batch_size: int = 500,
                          rows_per_transaction: int = ROWS_PER_TRANSACTION) -> Counter:
        """Replace each document's subgraph (chunks, mentions, facts); a document is never half
        written: documents commit together in groups of at most ``rows_per_transaction`` rows
        (``_document_rows``; one larger document alone), which bounds transaction memory on
        large first loads.

        ``docs`` items: {doc_id, props, chunks:[{chunk_id, doc_id, props}], next:[(a,b)],
        entities:[{entity_id,name,type}], mentions:[{chunk_id, entity_id, count}],
        facts:[{fact_id, chunk_id, subject, predicate, object, sentence}]}.
        """
        counters: Counter = Counter()
        for group in _transaction_groups(docs, rows_per_transaction):
            counters += self._write(lambda tx, group=group: self._replace_group(tx, group, batch_size))[1]
        if docs:
            counters += self._write(_refresh_entities)[1]
        return counters

    def _replace_group(self, tx: "ScopedTransaction", docs: list[dict], batch_size: int) -> None:
        doc_ids = [d["doc_id"] for d in docs]
        flat = {key: [row for d in docs for row in d[key]] for key in ("chunks", "next", "entities", "mentions", "facts")}
        entities = list({e["entity_id"]: e for e in flat["entities"]}.values())
        carried = [row for ids in batched(doc_ids, batch_size) for row in carry_curation(tx, ids)]
        for ids in batched(doc_ids, batch_size):
            tx.run("UNWIND $ids AS id MATCH (c:Chunk {tenant_id: $tenant, doc_id: id}) DETACH DELETE c", ids=ids)
            tx.run("UNWIND $ids AS id MATCH (f:Fact {tenant_id: $tenant, doc_id: id}) DETACH DELETE f", ids=ids)
        # each document's and entity's element id: a chunk and a mention find their node by id
        # (a seek), not by an index look-up per row (the writer's largest cost, bench/graph_writer.py)
        document_node: dict[str, str] = {}
        for batch in batched([{"doc_id": d["doc_id"], "props": d["props"]} for d in docs], batch_size):
            document_node.update((r["id"], r["node"]) for r in tx.run(
                "UNWIND $rows AS row MERGE (d:Document {tenant_id: $tenant, doc_id: row.doc_id}) "
                "SET d += row.props, d.deleted_at = null, d.deleted_by = null, " + NEXT_REVISION +
                " RETURN row.doc_id AS id, elementId(d) AS node", rows=batch))
        entity_node: dict[str, str] = {}
        for batch in batched(entities, batch_size):
            entity_node.update((r["id"], r["node"]) for r in tx.run(
                "UNWIND $rows AS row MERGE (e:Entity {tenant_id: $tenant, entity_id: row.entity_id}) "
                "ON CREATE SET e.name = row.name, e.type = row.type RETURN row.entity_id AS id, elementId(e) AS node",
                rows=batch))
        # the group's chunks were deleted above (by their doc_id property) and a chunk id is the
        # SHA-256 of its document and text, so a chunk listed once, under a document of the group
        # that its doc_id property names, is new: CREATE, with no look-up first (MERGE's cost),
        # and its mentions with it, from the node just created. Any other chunk is merged.
        mentions_of: dict[str, dict[str, dict]] = {}
        elsewhere = []  # mentions of an entity outside these documents (none from the extractor)
        for m in flat["mentions"]:
            if m["entity_id"] in entity_node:
                mentions_of.setdefault(m["chunk_id"], {})[m["entity_id"]] = m  # the last count, as SET left it
            else:
                elsewhere.append(m)
        listings = Counter(c["chunk_id"] for c in flat["chunks"])

        def new(c: dict) -> bool:
            return (listings[c["chunk_id"]] == 1 and c.get("doc_id") in document_node
                    and c["props"].get("doc_id") == c["doc_id"])

        ours = [c for c in flat["chunks"] if new(c)]
        _unwind(tx, [{"chunk_id": c["chunk_id"], "props": c["props"], "document": document_node[c["doc_id"]],
                      "mentions": [{"node": entity_node[m["entity_id"]], "count": m["count"]}
                                   for m in mentions_of.pop(c["chunk_id"], {}).values()]} for c in ours], batch_size,
                "UNWIND $rows AS row MATCH (d:Document {tenant_id: $tenant}) WHERE elementId(d) = row.document "
                "CREATE (c:Chunk {tenant_id: $tenant, chunk_id: row.chunk_id}) SET c += row.props "
                "CREATE (d)-[:HAS_CHUNK]->(c) "
                "WITH c, row UNWIND row.mentions AS m "
                "MATCH (e:Entity {tenant_id: $tenant}) WHERE elementId(e) = m.node "
                "CREATE (c)-[:MENTIONS {count: m.count}]->(e)")
        # listed twice, under another document, or naming another (none from the extractor): as before
        _unwind(tx, [c for c in flat["chunks"] if not new(c)], batch_size,
                "UNWIND $rows AS row MATCH (d:Document {tenant_id: $tenant, doc_id: row.doc_id}) "
                "MERGE (c:Chunk {tenant_id: $tenant, chunk_id: row.chunk_id}) SET c += row.props "
                "MERGE (d)-[:HAS_CHUNK]->(c)")
        _unwind(tx, [{"a": a, "b": b} for a, b in dict.fromkeys(map(tuple, flat["next"]))], batch_size,
                "UNWIND $rows AS row MATCH (a:Chunk {tenant_id: $tenant, chunk_id: row.a}) "
                "MATCH (b:Chunk {tenant_id: $tenant, chunk_id: row.b}) MERGE (a)-[:NEXT]->(b)")
        # mentions of a chunk or an entity outside these documents: both looked up
        _unwind(tx, [m for rows in mentions_of.values() for m in rows.values()] + elsewhere, batch_size,
                "UNWIND $rows AS row MATCH (c:Chunk {tenant_id: $tenant, chunk_id: row.chunk_id}) "
                "MATCH (e:Entity {tenant_id: $tenant, entity_id: row.entity_id}) "
                "MERGE (c)-[m:MENTIONS]->(e) SET m.count = row.count")
        _unwind(tx, flat["facts"], batch_size,
                "UNWIND $rows AS row MATCH (c:Chunk {tenant_id: $tenant, chunk_id: row.chunk_id}) "
                "MATCH (s:Entity {tenant_id: $tenant, entity_id: row.subject}) "
                "MATCH (o:Entity {tenant_id: $tenant, entity_id: row.object}) "
                "MERGE (f:Fact {tenant_id: $tenant, fact_id: row.fact_id}) "
                "SET f.predicate = row.predicate, f.sentence = row.sentence, f.doc_id = row.doc_id "
                "MERGE (f)-[:SUBJECT]->(s) MERGE (f)-[:OBJECT]->(o) MERGE (f)-[:SOURCE]->(c)")
        restore_curation(tx, carried)  # a curator's decisions outlive a re-ingestion of the same facts

    def merge_rows_one_by_one(self, docs: list[dict]) -> None:
        """Baseline for the writer benchmark: one transaction per row, no UNWIND."""
        for d in docs:
            self._execute("MERGE (x:Document {tenant_id: $tenant, doc_id: $id}) SET x += $props", id=d["doc_id"], props=d["props"])
            for c in d["chunks"]:
                self._execute(
                    "MATCH (x:Document {tenant_id: $tenant, doc_id: $doc}) "
                    "MERGE (c:Chunk {tenant_id: $tenant, chunk_id: $id}) SET c += $props MERGE (x)-[:HAS_CHUNK]->(c)",
                    doc=d["doc_id"], id=c["chunk_id"], props=c["props"],
                )
            for e in d["entities"]:
                self._execute("MERGE (e:Entity {tenant_id: $tenant, entity_id: $id}) ON CREATE SET e.name = $name, e.type = $type",
                              id=e["entity_id"], name=e["name"], type=e["type"])
            for m in d["mentions"]:
                self._execute(
                    "MATCH (c:Chunk {tenant_id: $tenant, chunk_id: $c}) MATCH (e:Entity {tenant_id: $tenant, entity_id: $e}) "
                    "MERGE (c)-[m:MENTIONS]->(e) SET m.count = $n",
                    c=m["chunk_id"], e=m["entity_id"], n=m["count"],
                )

    # -- soft delete, undo, purge -------------------------------------------------
    def soft_delete_documents(self, doc_ids: list[str], by: str, now: datetime | None = None) -> int:
        now = now or datetime.now(timezone.utc)

        def work(tx: ScopedTransaction) -> int:
            rows = tx.run(
                "UNWIND $ids AS id MATCH (d:Document {tenant_id: $tenant, doc_id: id}) WHERE d.deleted_at IS NULL "
                "SET d.deleted_at = $now, d.deleted_by = $by, " + NEXT_REVISION + " RETURN count(d) AS n",
                ids=doc_ids, now=now, by=by,
            )
            for label in ("Chunk", "Fact"):
                tx.run(
                    f"UNWIND $ids AS id MATCH (n:{label} {{tenant_id: $tenant, doc_id: id}}) "
                    "WHERE n.deleted_at IS NULL SET n.deleted_at = $now",
                    ids=doc_ids, now=now,
                )
            _refresh_entities(tx, now)
            return rows[0]["n"] if rows else 0

        return self._write(work)[0]

    def restore_document(self, doc_id: str, max_age: timedelta, now: datetime | None = None) -> bool:
        now = now or datetime.now(timezone.utc)

        def work(tx: ScopedTransaction) -> bool:
            rows = tx.run(
                "MATCH (d:Document {tenant_id: $tenant, doc_id: $id}) WHERE d.deleted_at >= $cutoff "
                "AND d.purged_at IS NULL SET d.deleted_at = null, d.deleted_by = null, " + NEXT_REVISION +
                " RETURN count(d) AS n",
                id=doc_id, cutoff=now - max_age,
            )
            if rows and rows[0]["n"]:
                for label in ("Chunk", "Fact"):
                    tx.run(f"MATCH (n:{label} {{tenant_id: $tenant, doc_id: $id}}) SET n.deleted_at = null", id=doc_id)
            _refresh_entities(tx, now)
            return bool(rows and rows[0]["n"])

        return self._write(work)[0]

    def documents_due_for_purge(self, older_than: timedelta, now: datetime | None = None) -> list[str]:
        """Documents soft-deleted before ``now - older_than`` whose copies are still to be erased."""
        now = now or datetime.now(timezone.utc)
        rows = self._execute(
            "MATCH (d:Document {tenant_id: $tenant}) WHERE d.deleted_at < $cutoff AND d.purged_at IS NULL "
            "RETURN d.doc_id AS doc_id ORDER BY doc_id",
            cutoff=now - older_than,
        )
        return [r["doc_id"] for r in rows]

    def document_chunk_texts(self, doc_id: str) -> list[str]:
        """The document's chunk texts, soft-deleted ones included (what a purge looks for elsewhere)."""
        rows = self._execute("MATCH (c:Chunk {tenant_id: $tenant, doc_id: $id}) RETURN c.text AS text", id=doc_id)
        return [r["text"] for r in rows if r["text"]]

    def purge_deleted(self, older_than: timedelta, now: datetime | None = None) -> int:
        """Hard-delete what was soft-deleted before ``now - older_than``."""
        now = now or datetime.now(timezone.utc)

        def work(tx: ScopedTransaction) -> int:
            purged = 0
            for label in ("Chunk", "Fact"):
                purged += tx.run(
                    f"MATCH (n:{label} {{tenant_id: $tenant}}) WHERE n.deleted_at < $cutoff "
                    "DETACH DELETE n RETURN count(*) AS n",
                    cutoff=now - older_than,
                )[0]["n"]
            purged += tx.run(
                "MATCH (d:Document {tenant_id: $tenant}) WHERE d.deleted_at < $cutoff AND d.deleted_by <> $operator "
                "DETACH DELETE d RETURN count(*) AS n",
                cutoff=now - older_than, operator="operator",
            )[0]["n"]
            # An operator's delete must hold even if the file stays in the inbox: keep an
            # emptied tombstone (no content, no signature) that sync still sees as held.
            purged += tx.run(
                "MATCH (d:Document {tenant_id: $tenant}) WHERE d.deleted_at < $cutoff AND d.deleted_by = $operator "
                "AND d.purged_at IS NULL SET d.purged_at = $now, d.signature = null, d.content_hash = null "
                "RETURN count(d) AS n",
                cutoff=now - older_than, operator="operator", now=now,
            )[0]["n"]
            _refresh_entities(tx, now)
            return purged

        return self._write(work)[0]

    # -- reads for downstream assets (soft-deleted data is invisible) ------------
    # the live rows of the tenant, or of some of its documents (``doc_ids``)
    def live_chunks(self, doc_ids: list[str] | None = None) -> list[dict]:
        return self._execute(
            "MATCH (d:Document {tenant_id: $tenant})-[:HAS_CHUNK]->(c:Chunk {tenant_id: $tenant}) "
            "WHERE d.deleted_at IS NULL AND c.deleted_at IS NULL AND ($docs IS NULL OR d.doc_id IN $docs) "
            "RETURN c.chunk_id AS chunk_id, d.doc_id AS doc_id, c.position AS position, c.text AS text "
            "ORDER BY doc_id, position", docs=doc_ids,
        )

    def live_facts(self, doc_ids: list[str] | None = None) -> list[dict]:
        return self._execute(
            "MATCH (f:Fact {tenant_id: $tenant})-[:SUBJECT]->(s:Entity {tenant_id: $tenant}), "
            "(f)-[:OBJECT]->(o:Entity {tenant_id: $tenant}), (f)-[:SOURCE]->(c:Chunk {tenant_id: $tenant}) "
            "WHERE f.deleted_at IS NULL AND f.rejected_at IS NULL AND c.deleted_at IS NULL "
            "AND ($docs IS NULL OR f.doc_id IN $docs) "
            "RETURN f.fact_id AS fact_id, s.name AS subject, f.predicate AS predicate, o.name AS object, "
            "f.sentence AS sentence, c.chunk_id AS chunk_id, f.doc_id AS doc_id, "
            "f.confirmed_at IS NOT NULL AS confirmed ORDER BY fact_id", docs=doc_ids,
        )

    def live_mentions(self, doc_ids: list[str] | None = None) -> list[dict]:
        return self._execute(
            "MATCH (c:Chunk {tenant_id: $tenant})-[:MENTIONS]->(e:Entity {tenant_id: $tenant}) "
            "WHERE c.deleted_at IS NULL AND ($docs IS NULL OR c.doc_id IN $docs) "
            "RETURN c.chunk_id AS chunk_id, c.doc_id AS doc_id, e.entity_id AS entity_id, e.name AS entity "
            "ORDER BY chunk_id, entity_id", docs=doc_ids,
        )

    def document_subgraph(self, doc_id: str, limit: int = 60) -> list[dict]:
        """Edges (source, type, target) around one live document, for pictures."""
        return self._execute(
            "MATCH (d:Document {tenant_id: $tenant, doc_id: $id})-[:HAS_CHUNK]->(c:Chunk {tenant_id: $tenant}) "
            "WHERE c.deleted_at IS NULL "
            "OPTIONAL MATCH (c)-[:MENTIONS]->(e:Entity {tenant_id: $tenant}) "
            "RETURN c.position AS chunk, e.name AS entity ORDER BY chunk LIMIT $limit",
            id=doc_id, limit=limit,
        )

    # -- co-occurrence: the stream's windows write it (weights recomputed from the live chunks) --
    def write_cooccurrence(self, pairs: list[tuple[str, str]], window_id: str) -> Counter:
        """Set each (entity_id, entity_id) pair's CO_OCCURS weight to the number of live chunks
        naming both, or remove the edge at 0; idempotent, the window recorded on the edge."""
        def work(tx: ScopedTransaction) -> None:
            for batch in batched([list(p) for p in pairs], 500):
                tx.run("UNWIND $rows AS p MATCH (a:Entity {tenant_id: $tenant, entity_id: p[0]}) "
                       "MATCH (b:Entity {tenant_id: $tenant, entity_id: p[1]}) "
                       "OPTIONAL MATCH (a)<-[:MENTIONS]-(c:Chunk {tenant_id: $tenant})-[:MENTIONS]->(b) "
                       "WHERE c.deleted_at IS NULL "
                       "WITH a, b, count(DISTINCT c) AS weight "
                       "FOREACH (_ IN CASE WHEN weight > 0 THEN [1] ELSE [] END | "
                       "  MERGE (a)-[r:CO_OCCURS]->(b) SET r.weight = weight, r.window = $w) "
                       "WITH a, b, weight WHERE weight = 0 "
                       "OPTIONAL MATCH (a)-[r:CO_OCCURS]->(b) DELETE r", rows=batch, w=window_id)

        return self._write(work)[1]

    def cooccurrence_edges(self) -> list[tuple[str, str, int]]:
        """Every CO_OCCURS edge as (name, name, weight), ordered."""
        rows = self._execute(
            "MATCH (a:Entity {tenant_id: $tenant})-[r:CO_OCCURS]->(b:Entity {tenant_id: $tenant}) "
            "RETURN a.name AS a, b.name AS b, r.weight AS weight ORDER BY a, b")
        return [(r["a"], r["b"], r["weight"]) for r in rows]

    def entity_neighbours(self, entity_id: str, limit: int = 50) -> list[dict]:
        """Entities named in a live chunk with ``entity_id``, weighted by those chunks: the hot
        layer's 1-hop neighbours question, answered from the chunks."""
        return self._execute(
            "MATCH (s:Entity {tenant_id: $tenant, entity_id: $id})<-[:MENTIONS]-(c:Chunk {tenant_id: $tenant})"
            "-[:MENTIONS]->(n:Entity {tenant_id: $tenant}) WHERE c.deleted_at IS NULL AND n <> s "
            "RETURN n.name AS entity, count(DISTINCT c) AS weight ORDER BY weight DESC, entity LIMIT $limit",
            id=entity_id, limit=limit)

    def document_cooccurrence(self, doc_ids: list[str], limit: int = 100) -> list[dict]:
        """The entity pairs that the documents' live chunks name together, each weighted by every
        live chunk naming both: the hot layer's recent-edges question, answered from the chunks
        (what the stream's windows keep precomputed in FalkorDB; bench/hot_graph.py compares)."""
        return self._execute(
            "MATCH (c:Chunk {tenant_id: $tenant})-[:MENTIONS]->(a:Entity {tenant_id: $tenant}), "
            "(c)-[:MENTIONS]->(b:Entity {tenant_id: $tenant}) "
            "WHERE c.doc_id IN $docs AND c.deleted_at IS NULL AND a.entity_id < b.entity_id "
            "WITH DISTINCT a, b "
            "MATCH (a)<-[:MENTIONS]-(x:Chunk {tenant_id: $tenant})-[:MENTIONS]->(b) WHERE x.deleted_at IS NULL "
            "RETURN a.name AS a, b.name AS b, count(DISTINCT x) AS weight "
            "ORDER BY weight DESC, a, b LIMIT $limit", docs=doc_ids, limit=limit)

    def fingerprint(self) -> list[tuple]:
        """A canonical listing of the tenant's graph, to prove a rerun changed nothing."""
        nodes, rels = [], []
        for label in (*TENANT_LABELS, "Tenant"):
            nodes += self._execute(
                f"MATCH (n:{label} {{tenant_id: $tenant}}) RETURN labels(n) AS labels, properties(n) AS props"
            )
        for rel, (a, b) in RELATIONSHIPS.items():
            rels += self._execute(
                f"MATCH (a:{a} {{tenant_id: $tenant}})-[r:{rel}]->(b:{b} {{tenant_id: $tenant}}) "
                "RETURN type(r) AS type, coalesce(a.chunk_id, a.doc_id, a.entity_id, a.fact_id) AS a, "
                "coalesce(b.chunk_id, b.doc_id, b.entity_id, b.fact_id) AS b, properties(r) AS props"
            )
        return sorted(repr(sorted(n.items())) for n in nodes) + sorted(repr(sorted(r.items())) for r in rels)


def _refresh_entities(tx: ScopedTransaction, now: datetime | None = None) -> None:
    """Entities follow the chunks and facts that mention them: orphans go, entities
    mentioned only by soft-deleted data are hidden, re-mentioned ones come back.
    Only entities whose state changes are written, so a no-op sync writes nothing."""
    # the stream's CO_OCCURS edges between entities keep no entity alive: they go with it
    tx.run("MATCH (e:Entity {tenant_id: $tenant}) WHERE NOT (e)-[:MENTIONS|SUBJECT|OBJECT]-({tenant_id: $tenant}) "
           "DETACH DELETE e")
    tx.run(
        "MATCH (e:Entity {tenant_id: $tenant}) "
        "OPTIONAL MATCH (c:Chunk {tenant_id: $tenant})-[:MENTIONS]->(e) WHERE c.deleted_at IS NULL "
        "WITH e, count(c) AS live_mentions "
        "OPTIONAL MATCH (f:Fact {tenant_id: $tenant})-[:SUBJECT|OBJECT]->(e) WHERE f.deleted_at IS NULL "
        "WITH e, live_mentions, count(f) AS live_facts "
        "WITH e, live_mentions + live_facts AS live "
        "WITH e, live WHERE (live > 0 AND e.deleted_at IS NOT NULL) OR (live = 0 AND e.deleted_at IS NULL) "
        "SET e.deleted_at = CASE WHEN live > 0 THEN null ELSE $now END",
        now=now or datetime.now(timezone.utc),
    )


def _document_rows(doc: dict) -> int:
    """The rows ``replace_documents`` writes for a document: itself, its chunks, links, entities,
    mentions and facts."""
    return 1 + sum(len(doc[key]) for key in ("chunks", "next", "entities", "mentions", "facts"))


def _transaction_groups(docs: list[dict], max_rows: int) -> Iterable[list[dict]]:
    """Consecutive documents, as many as fit ``max_rows`` rows; a larger document is a group of its own."""
    group: list[dict] = []
    rows = 0
    for doc in docs:
        size = _document_rows(doc)
        if group and rows + size > max_rows:
            yield group
            group, rows = [], 0
        group.append(doc)
        rows += size
    if group:
        yield group


def batched(rows: list, size: int) -> Iterable[list]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _unwind(tx: ScopedTransaction, rows: list, batch_size: int, cypher: str) -> None:
    """Run an `UNWIND $rows` statement over ``rows`` in batches of ``batch_size``."""
    for batch in batched(rows, batch_size):
        tx.run(cypher, rows=batch)
