"""Document revisions in Neo4j.

Every write of a document's state (written, soft-deleted, restored, a curator's decision on one of
its facts) gives it a newer revision: the database's clock in ms, or one more than the last when
the clock has not moved past it. The graph events carry it, so the hot graph can order a graph
run's events, a concurrent delete's and a republished document's."""

NEXT_REVISION = ("d.revision = CASE WHEN coalesce(d.revision, 0) >= timestamp() THEN d.revision + 1 "
                 "ELSE timestamp() END")
