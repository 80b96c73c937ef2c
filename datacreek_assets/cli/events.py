"""`datacreek events`: the tenant-keyed graph events in Kafka."""

from __future__ import annotations

import click

from datacreek_assets.cli.common import Context, handle_errors, require_registered, tenant_option


@click.group()
def events() -> None:
    """The graph events the real-time path consumes (Kafka topic datacreek.graph-events)."""


@events.command("replay")
@tenant_option(required=True, help="The tenant whose live graph is published.")
@click.pass_obj
@handle_errors
def replay(obj: Context, tenant_id: str) -> None:
    """Publish TENANT's graph in Neo4j as events: every live document with its chunks, mentions and
    facts, and a delete for every soft-deleted one.

    How a lost hot layer is rebuilt and an existing tenant is bootstrapped: the stream merges on
    deterministic ids, so events it has seen before change nothing. Exit 3 if Kafka or Neo4j
    cannot be reached.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from datacreek_assets.streaming.events import EVENTS_TOPIC, graph_events

    require_registered(obj, tenant_id)
    resources = obj.resources()
    with resources["graph_store"].tenant(tenant_id) as graph:  # a delete the log missed is said again
        deleted = sorted(d for d, state in graph.document_states().items() if state["deleted_at"] is not None)
        found = graph_events(graph, deleted=deleted)
    log = resources["event_log"].event_log()
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      transient=True) as bar:
            task = bar.add_task(f"{tenant_id}: publishing", total=len(found))
            published = log.publish(found, on_progress=lambda done, _total: bar.update(task, completed=done))
    finally:
        log.close()
    kinds = {kind: sum(e.kind == kind and e.op == "upsert" for e in found) for kind in ("document", "chunk",
                                                                                        "mention", "fact")}
    click.echo(f"{tenant_id}: {published} events published to {EVENTS_TOPIC} "
               f"({', '.join(f'{n} {kind}s' for kind, n in kinds.items())}, {len(deleted)} deleted documents)")
