"""The curator loop over one tenant: build its review queue from the graph, and carry a decision
(or its undo) through everything that follows it: the graph and `edge_repair_log` together
(``decisions``), the queue's row, and the hot layer (the document's events published again,
at the revision the decision gave it)."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Callable

from datacreek_assets.curation.decisions import DecisionError, decide, undo
from datacreek_assets.curation.queue import DEFAULT_LIMIT, entity_graph, neighbourhood, scored_candidates, select
from datacreek_assets.curation.repair_log import RepairEntry, RepairLog
from datacreek_assets.curation.review_store import ReviewStore
from datacreek_assets.graph.fact_curation import StaleFactVersion, UnknownFact

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueueSummary:
    version: str
    queued: int
    undecided: int
    facts: int
    tau: float
    structural: int
    low_confidence: int
    proposed: int
    untrusted: int
    top: list  # the first QueueItems, for the asset's page
    scores: list  # every undecided fact's Δλ, for the asset's picture


def refresh_queue(graph, store: ReviewStore, tau: float, limit: int = DEFAULT_LIMIT) -> QueueSummary:
    """Score the tenant's undecided facts and proposed co-occurrence edges and replace its queue with
    those that pass τ (and the doubtful facts)."""
    facts, mentions = graph.review_facts(), graph.live_mentions()
    chunk_texts = {c["chunk_id"]: c["text"] or "" for c in graph.live_chunks()}
    scored = scored_candidates(mentions, facts, fact_pairs=graph.fact_pairs(), chunk_texts=chunk_texts)
    items = select(scored, tau, limit)
    edges = entity_graph(mentions, facts)
    names = {m["entity_id"]: m["entity"] for m in mentions}
    names.update({f["subject_id"]: f["subject"] for f in facts})
    names.update({f["object_id"]: f["object"] for f in facts})
    pictures = {i.fact_id: neighbourhood(edges, names, i.subject_id, i.object_id) for i in items}
    version = hashlib.sha256("\0".join(f"{i.fact_id}:{i.version}:{i.score:.6g}" for i in items).encode()).hexdigest()[:12]
    store.replace_queue(graph.tenant_id, version, items, chunk_texts, pictures)
    return QueueSummary(version, len(items), sum(1 for f in facts if not f["confirmed"]), len(facts), tau,
                        sum("structural" in i.reasons for i in items), sum("low_confidence" in i.reasons for i in items),
                        sum(i.proposed for i in items), sum(not i.trusted for i in items), items[:10],
                        [i.score for i in scored if not i.proposed])


class EdgeReview:
    """One tenant's decisions. ``publish``: sends graph events to the hot layer (None: no hot layer)."""

    def __init__(self, graph, repair_log: RepairLog, store: ReviewStore, publish: Callable[[list], None] | None = None):
        self.graph, self.repair_log, self.store, self.publish = graph, repair_log, store, publish

    def decide(self, fact_id: str, version: int, decision: str, curator: str, predicate: str | None = None,
               reason: str | None = None) -> RepairEntry:
        queued = self.store.edge(self.graph.tenant_id, fact_id)
        try:
            entry = decide(self.graph, self.repair_log, fact_id, version, decision, curator, predicate=predicate,
                           reason=reason, delta_lambda=queued.delta_lambda if queued else None,
                           proposal=queued.proposal() if queued else None)
        except (StaleFactVersion, UnknownFact, DecisionError):
            raise
        except Exception:
            self._resync(fact_id)  # reverted (the log refused it): the row names the version there is now
            raise
        self.store.mark(self.graph.tenant_id, fact_id, decision, entry.version, entry.after.get("predicate"))
        self._follow(fact_id)
        return entry

    def undo(self, entry_id: int, curator: str) -> RepairEntry:
        entry = undo(self.graph, self.repair_log, entry_id, curator)
        self.store.mark(self.graph.tenant_id, entry.edge_id, None, entry.version, entry.after.get("predicate"))
        self._follow(entry.edge_id)
        return entry

    def _resync(self, fact_id: str) -> None:
        state = self.graph.fact_state(fact_id)
        queued = self.store.edge(self.graph.tenant_id, fact_id)
        if queued is not None:
            self.store.mark(self.graph.tenant_id, fact_id, queued.decision if state else None,
                            state["version"] if state else 0)

    def _follow(self, fact_id: str) -> None:
        """The hot layer follows: the fact's document, as Neo4j holds it now, published again. The
        decision stands when the event log is down; `datacreek events replay` catches up."""
        if self.publish is None:
            return
        from datacreek_assets.streaming.events import EventLogError, graph_events

        doc = self.graph.fact_document(fact_id)
        if doc is None:
            return
        try:
            self.publish(graph_events(self.graph, [doc]))
        except EventLogError as err:  # the decision is made and logged either way
            log.warning("the hot layer was not told of a decision on %s (%s): replay the tenant's events", fact_id, err)
