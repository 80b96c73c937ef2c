"""A curator's decisions on a tenant's facts, in Neo4j (``TenantGraph`` mixes this in: every
statement passes its tenant-scope choke points).

A decision changes the fact's curated state and raises its ``version``; it names the version it
was made on, and a fact changed since (another curator was faster) refuses it. Rejection is its
own state (``rejected_at``, ``_by``, ``_reason``), not the ``deleted_at`` a document's soft
delete sets on its facts: restoring the document must not bring rejected facts back. A
document ingested again keeps its facts' curated states (``carry_curation``).

A decision on a proposed edge (a co-occurrence the review queue offers, ``proposal``) makes it a
fact first, in the same transaction: ``origin`` "cooccurrence", its source the chunk that named
both entities. Such a fact is not the extractor's, so a re-ingestion puts it back itself while
its chunk and entities are still there.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from datacreek_assets.graph.revisions import NEXT_REVISION

PROPOSED = "cooccurrence"  # the origin of a fact a curator made from a proposed edge
# what a decision changes, and so what undo puts back
CURATED = ("predicate", "extracted_predicate", "confirmed_at", "confirmed_by", "rejected_at", "rejected_by",
           "rejected_reason")
_STATE = ("f {" + ", ".join(f".{k}" for k in CURATED) + "} AS state, coalesce(f.version, 0) AS version, "
          "f.deleted_at IS NOT NULL AS document_deleted, f.origin AS origin")


class UnknownFact(LookupError):
    pass


class StaleFactVersion(Exception):
    """The fact changed since the version the decision was made on."""

    def __init__(self, fact_id: str, expected: int, current: int):
        super().__init__(f"fact {fact_id} is at version {current}, not {expected}: another decision came first")
        self.fact_id, self.expected, self.current = fact_id, expected, current


class FactCuration:
    def fact_state(self, fact_id: str) -> dict | None:
        """The fact's curated fields and version (None: no such fact in this tenant)."""
        rows = self._execute(f"MATCH (f:Fact {{tenant_id: $tenant, fact_id: $id}}) RETURN {_STATE}", id=fact_id)
        return _as_state(rows[0]) if rows else None

    def curate_fact(self, fact_id: str, expected_version: int, change: dict[str, Any],
                    proposal: dict | None = None) -> tuple[dict, dict]:
        """Apply ``change`` (curated fields) to the fact if it is still at ``expected_version``;
        returns its state before and after (the version raised by one). ``proposal``: the
        co-occurrence this id proposes, made a fact first if it is not one yet."""
        unknown = set(change) - set(CURATED)
        if unknown:
            raise ValueError(f"not curated fields: {sorted(unknown)}")

        def work(tx) -> tuple[dict, dict]:
            if proposal is not None:
                _propose(tx, [{**proposal, "fact_id": fact_id}])
            before = _locked_state(tx, fact_id, expected_version)
            after = tx.run("MATCH (f:Fact {tenant_id: $tenant, fact_id: $id}) SET f += $change, "
                           f"f.version = f.version + 1 RETURN {_STATE}", id=fact_id, change=change)
            # the document's events, published again, must win over any published before it
            tx.run("MATCH (f:Fact {tenant_id: $tenant, fact_id: $id}) "
                   "MATCH (d:Document {tenant_id: $tenant, doc_id: f.doc_id}) SET " + NEXT_REVISION, id=fact_id)
            return before, _as_state(after[0])

        return self._write(work)[0]

    def fact_document(self, fact_id: str) -> str | None:
        rows = self._execute("MATCH (f:Fact {tenant_id: $tenant, fact_id: $id}) RETURN f.doc_id AS doc_id", id=fact_id)
        return rows[0]["doc_id"] if rows else None

    def review_facts(self) -> list[dict]:
        """Every live fact, with what a review needs: its entities' ids, the source chunk's text,
        its version and whether a curator confirmed it (undecided facts have version 0)."""
        return self._execute(
            "MATCH (f:Fact {tenant_id: $tenant})-[:SUBJECT]->(s:Entity {tenant_id: $tenant}), "
            "(f)-[:OBJECT]->(o:Entity {tenant_id: $tenant}), (f)-[:SOURCE]->(c:Chunk {tenant_id: $tenant}) "
            "WHERE f.deleted_at IS NULL AND f.rejected_at IS NULL AND c.deleted_at IS NULL "
            "RETURN f.fact_id AS fact_id, s.entity_id AS subject_id, s.name AS subject, f.predicate AS predicate, "
            "o.entity_id AS object_id, o.name AS object, f.sentence AS sentence, c.chunk_id AS chunk_id, "
            "c.text AS chunk_text, f.doc_id AS doc_id, coalesce(f.version, 0) AS version, "
            "f.confirmed_at IS NOT NULL AS confirmed ORDER BY fact_id")

    def rejected_facts(self) -> list[dict]:
        """Facts a curator rejected (of live documents), with who and why: what ``sft_dataset``
        says it dropped."""
        return self._execute(
            "MATCH (f:Fact {tenant_id: $tenant})-[:SUBJECT]->(s:Entity {tenant_id: $tenant}), "
            "(f)-[:OBJECT]->(o:Entity {tenant_id: $tenant}), (f)-[:SOURCE]->(c:Chunk {tenant_id: $tenant}) "
            "WHERE f.rejected_at IS NOT NULL AND f.deleted_at IS NULL AND c.deleted_at IS NULL "
            "RETURN f.fact_id AS fact_id, s.name AS subject, f.predicate AS predicate, o.name AS object, "
            "f.sentence AS sentence, c.chunk_id AS chunk_id, f.doc_id AS doc_id, f.rejected_by AS rejected_by, "
            "f.rejected_reason AS rejected_reason ORDER BY fact_id")

    def withdraw_proposal(self, fact_id: str, expected_version: int) -> tuple[dict, dict]:
        """Make a fact a curator made from a proposed edge a proposal again (undo of that decision):
        it is removed if still at ``expected_version``; returns its state before and the proposal's."""
        def work(tx) -> tuple[dict, dict]:
            before = _locked_state(tx, fact_id, expected_version)
            if before["origin"] != PROPOSED:
                raise ValueError(f"fact {fact_id} was extracted, not proposed: it is decided, not withdrawn")
            tx.run("MATCH (f:Fact {tenant_id: $tenant, fact_id: $id}) "
                   "MATCH (d:Document {tenant_id: $tenant, doc_id: f.doc_id}) SET " + NEXT_REVISION, id=fact_id)
            tx.run("MATCH (f:Fact {tenant_id: $tenant, fact_id: $id}) DETACH DELETE f", id=fact_id)
            return before, {**{k: None for k in CURATED}, "version": 0, "document_deleted": False, "origin": None}

        return self._write(work)[0]

    def fact_pairs(self) -> set[tuple[str, str]]:
        """(subject id, object id) of every fact of a live document, rejected ones too: the pairs
        the review queue does not propose again."""
        rows = self._execute("MATCH (s:Entity {tenant_id: $tenant})<-[:SUBJECT]-(f:Fact {tenant_id: $tenant})"
                             "-[:OBJECT]->(o:Entity {tenant_id: $tenant}) WHERE f.deleted_at IS NULL "
                             "RETURN DISTINCT s.entity_id AS s, o.entity_id AS o")
        return {(r["s"], r["o"]) for r in rows}

    def curated_facts(self) -> list[dict]:
        """Facts a curator decided on: id, state and version (what a re-ingestion carries over)."""
        rows = self._execute("MATCH (f:Fact {tenant_id: $tenant}) WHERE f.version > 0 "
                             f"RETURN f.fact_id AS fact_id, {_STATE} ORDER BY fact_id")
        return [{"fact_id": r["fact_id"], **_as_state(r)} for r in rows]


def carry_curation(tx, doc_ids: list[str]) -> list[dict]:
    """Read the curated states of these documents' facts (before their rows are replaced);
    ``restore_curation`` puts them back on the facts the new extraction makes with the same ids,
    and makes the facts curators made from proposals again. The facts are locked first (a write):
    a decision committed after this read would otherwise be lost with the rows it replaces."""
    tx.run("UNWIND $ids AS id MATCH (f:Fact {tenant_id: $tenant, doc_id: id}) SET f.version = coalesce(f.version, 0)",
           ids=doc_ids)
    return tx.run("UNWIND $ids AS id MATCH (f:Fact {tenant_id: $tenant, doc_id: id}) WHERE f.version > 0 "
                  "OPTIONAL MATCH (f)-[:SUBJECT]->(s:Entity {tenant_id: $tenant}) "
                  "OPTIONAL MATCH (f)-[:OBJECT]->(o:Entity {tenant_id: $tenant}) "
                  "OPTIONAL MATCH (f)-[:SOURCE]->(c:Chunk {tenant_id: $tenant}) "
                  "RETURN f.fact_id AS fact_id, f.origin AS origin, s.entity_id AS subject_id, "
                  "o.entity_id AS object_id, c.chunk_id AS chunk_id, f.doc_id AS doc_id, f.sentence AS sentence, "
                  "f {" + ", ".join(f".{k}" for k in CURATED) + ", .version} AS state", ids=doc_ids)


def restore_curation(tx, carried: list[dict]) -> None:
    proposed = [r for r in carried if r["origin"] == PROPOSED and r["subject_id"] and r["object_id"] and r["chunk_id"]]
    if proposed:
        _propose(tx, [{**r, "predicate": r["state"].get("predicate")} for r in proposed])
    if carried:
        tx.run("UNWIND $rows AS row MATCH (f:Fact {tenant_id: $tenant, fact_id: row.fact_id}) SET f += row.state",
               rows=[{"fact_id": r["fact_id"], "state": r["state"]} for r in carried])


def _propose(tx, rows: list[dict]) -> None:
    """Proposed edges made facts (where their chunk and entities exist; one already a fact is left
    as it is)."""
    tx.run("UNWIND $rows AS row MATCH (c:Chunk {tenant_id: $tenant, chunk_id: row.chunk_id}) "
           "WHERE c.deleted_at IS NULL "
           "MATCH (s:Entity {tenant_id: $tenant, entity_id: row.subject_id}) "
           "MATCH (o:Entity {tenant_id: $tenant, entity_id: row.object_id}) "
           "MERGE (f:Fact {tenant_id: $tenant, fact_id: row.fact_id}) "
           "ON CREATE SET f.predicate = row.predicate, f.sentence = row.sentence, f.doc_id = row.doc_id, "
           "f.origin = $origin, f.version = 0 "
           "MERGE (f)-[:SUBJECT]->(s) MERGE (f)-[:OBJECT]->(o) MERGE (f)-[:SOURCE]->(c)", rows=rows, origin=PROPOSED)


def _locked_state(tx, fact_id: str, expected_version: int) -> dict:
    """The fact's state, locked for this transaction, if it is at ``expected_version``. A write
    first: it takes the fact's lock, so the version read next is the committed one."""
    locked = tx.run("MATCH (f:Fact {tenant_id: $tenant, fact_id: $id}) SET f.version = coalesce(f.version, 0) "
                    "RETURN f.fact_id AS id", id=fact_id)
    if not locked:
        raise UnknownFact(f"no fact {fact_id!r} in this tenant's graph")
    state = _as_state(tx.run(f"MATCH (f:Fact {{tenant_id: $tenant, fact_id: $id}}) RETURN {_STATE}", id=fact_id)[0])
    if state["version"] != expected_version:
        raise StaleFactVersion(fact_id, expected_version, state["version"])
    return state


def _as_state(row: dict) -> dict:
    state = {k: _plain(row["state"].get(k)) for k in CURATED}
    return {**state, "version": int(row["version"]), "document_deleted": bool(row.get("document_deleted")),
            "origin": row.get("origin")}


def _plain(value: Any) -> Any:
    """Neo4j's temporal values as ISO strings (what the repair log stores and the UI shows)."""
    if hasattr(value, "to_native"):
        value = value.to_native()
    return value.isoformat() if isinstance(value, datetime) else value
