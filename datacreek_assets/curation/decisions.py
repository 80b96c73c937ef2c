"""A curator's decision on an edge (a fact): accept, reject or edit its predicate, or undo an
earlier decision. The graph (through ``TenantGraph``) and ``edge_repair_log`` change together:
the log row is written in a transaction that commits after the graph's, and a graph change whose
row cannot be committed is reverted."""

from __future__ import annotations

import re
from datetime import datetime, timezone

from datacreek_assets.curation.repair_log import RepairEntry, RepairLog, as_entry
from datacreek_assets.graph.fact_curation import CURATED, PROPOSED, StaleFactVersion

MAX_PREDICATE = 80
_PREDICATE = re.compile(r"^[\w][\w \-']*$")
_CURATOR = re.compile(r"^[\w.@\-]{1,80}$")


class DecisionError(ValueError):
    """A decision that cannot be made as asked (bad predicate, nothing to undo...)."""


def decide(graph, log: RepairLog, fact_id: str, version: int, decision: str, curator: str,
           predicate: str | None = None, reason: str | None = None, delta_lambda: float | None = None,
           now: datetime | None = None, proposal: dict | None = None) -> RepairEntry:
    """Accept, reject or edit the fact at ``version`` (StaleFactVersion if it moved on; UnknownFact
    if the tenant has none of that id). ``proposal``: the co-occurrence the id proposes (the
    queue's ``QueueItem.proposal()``), made a fact by the decision."""
    curator = valid_curator(curator)
    at = (now or datetime.now(timezone.utc)).isoformat()
    if decision == "accept":
        change = {"confirmed_at": at, "confirmed_by": curator, "rejected_at": None, "rejected_by": None,
                  "rejected_reason": None}
    elif decision == "reject":
        change = {"rejected_at": at, "rejected_by": curator, "rejected_reason": _reason(reason),
                  "confirmed_at": None, "confirmed_by": None}
    elif decision == "edit":
        state = graph.fact_state(fact_id)
        original = (state and (state["extracted_predicate"] or state["predicate"])) or (proposal or {}).get("predicate")
        change = {"predicate": _predicate(predicate), "extracted_predicate": original, "confirmed_at": at,
                  "confirmed_by": curator, "rejected_at": None, "rejected_by": None, "rejected_reason": None}
    else:
        raise DecisionError(f"a decision is accept, reject or edit, not {decision!r} (undo names a log entry)")
    return _apply(graph, log, fact_id, version, change, decision, curator, delta_lambda, now, proposal=proposal)


def undo(graph, log: RepairLog, entry_id: int, curator: str, now: datetime | None = None) -> RepairEntry:
    """Put the fact back as it was before the decision ``entry_id``, if nothing changed it since."""
    curator = valid_curator(curator)
    entry = log.entry(graph.tenant_id, entry_id)
    if entry is None:
        raise DecisionError(f"no decision {entry_id} in this tenant's repair log")
    if entry.decision == "undo":
        raise DecisionError(f"decision {entry_id} is an undo; decide again instead")
    if log.undone(graph.tenant_id, entry_id):
        raise DecisionError(f"decision {entry_id} was undone already")
    # a decision that made a proposed edge a fact is undone by making it a proposal again
    withdraw = entry.before.get("origin") == PROPOSED and entry.before.get("version") == 0
    return _apply(graph, log, entry.edge_id, entry.version, _curated(entry.before), "undo", curator, entry.delta_lambda, now,
                  undoes=entry_id, withdraw=withdraw)


def _apply(graph, log: RepairLog, fact_id: str, version: int, change: dict, decision: str, curator: str,
           delta_lambda: float | None, now: datetime | None, undoes: int | None = None,
           proposal: dict | None = None, withdraw: bool = False) -> RepairEntry:
    if withdraw:
        before, after = graph.withdraw_proposal(fact_id, version)
    else:
        before, after = graph.curate_fact(fact_id, version, change, proposal)
    with log.session() as session:
        try:
            row = log.add(session, graph.tenant_id, fact_id, curator, decision, before, after, delta_lambda,
                          after["version"], now or datetime.now(timezone.utc), undoes)
            session.commit()
            return as_entry(row)
        except Exception:
            session.rollback()
            try:  # the graph keeps no decision the log does not hold
                if before.get("origin") == PROPOSED and before["version"] == 0:
                    graph.withdraw_proposal(fact_id, after["version"])  # the fact this decision made
                elif not withdraw:
                    graph.curate_fact(fact_id, after["version"], _curated(before))
            except StaleFactVersion:
                pass  # someone decided again meanwhile: theirs stands, and is logged
            raise


def _curated(state: dict) -> dict:
    """A logged state's curated fields: what putting it back sets."""
    return {k: v for k, v in state.items() if k in CURATED}


def _predicate(predicate: str | None) -> str:
    """The extractor's form ("depends_on"): words joined by _, which is how sft_dataset reads a
    relation's verb and particle (an edit written "depends on" would leave the dataset)."""
    text = (predicate or "").strip()
    if not text or len(text) > MAX_PREDICATE or not _PREDICATE.match(text):
        raise DecisionError(f"a predicate is 1 to {MAX_PREDICATE} letters, digits, spaces, - or ' "
                            f"(got {predicate!r})")
    return "_".join(text.split())


def _reason(reason: str | None) -> str:
    text = (reason or "rejected by a curator").strip()
    if len(text) > 500:
        raise DecisionError("a reason is at most 500 characters")
    return text


def valid_curator(curator: str) -> str:
    if not isinstance(curator, str) or not _CURATOR.match(curator):
        raise DecisionError(f"a curator is named by 1 to 80 letters, digits, . @ _ or - (got {curator!r})")
    return curator
