"""`datacreek hot`: the FalkorDB hot graphs the stream job keeps, queried from the shell or served
over HTTP."""

from __future__ import annotations

import json

import click

from datacreek_assets.cli.common import EXIT_BAD_INPUT, Context, fail, handle_errors, tenant_option


@click.group()
def hot() -> None:
    """Hot-graph queries (neighbours, recent edges, top pairs) and their HTTP API."""


@hot.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8110, show_default=True, type=int)
@click.pass_obj
@handle_errors
def hot_serve(obj: Context, host: str, port: int) -> None:
    """Serve the hot-query API: /v1/hot/neighbours|recent-edges|top-pairs with a tenant's serving API
    key, /admin/v1/hot/TENANT/... with the serving admin token, and /metrics (query latency, stream
    lag, event-to-queryable latency). Ctrl-C stops it."""
    import uvicorn

    from datacreek_assets.serving.release_store import ServingStore
    from datacreek_assets.streaming.hot_queries import hot_query_app

    resources = obj.resources()
    serving = resources["serving"]
    app = hot_query_app(resources["hot_graph"].store(), ServingStore(serving.store_url), serving.admin_token,
                        resources["event_log"].bootstrap_servers)
    click.echo(f"hot queries: http://{host}:{port}/v1/hot/... and /metrics (Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning")


@hot.command("query")
@tenant_option(required=True, help="The tenant whose hot graph is asked.")
@click.argument("query", type=click.Choice(["neighbours", "recent-edges", "top-pairs"]))
@click.option("--entity", help="For neighbours: the entity's name.")
@click.option("--hops", default=1, show_default=True, type=click.IntRange(1, 2))
@click.option("--windows", default=1, show_default=True, type=click.IntRange(1, 2880),
              help="For recent-edges: how many 30 s windows back.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.pass_obj
@handle_errors
def hot_query(obj: Context, tenant_id: str, query: str, entity: str | None, hops: int, windows: int,
              limit: int) -> None:
    """Ask TENANT's hot graph one QUERY and print the rows as JSON lines. Exit 2 for an entity the
    graph does not hold or a tenant without a hot graph, 3 if FalkorDB cannot be reached."""
    from datacreek_assets.hot_graph import UnknownEntity
    from datacreek_assets.streaming.hot_queries import HotQueries

    store = obj.resources()["hot_graph"].store()
    if not store.scope_exists(tenant_id):
        fail(f"tenant {tenant_id!r} has no hot graph", EXIT_BAD_INPUT)
    queries = HotQueries(store, tenant_id)
    try:
        if query == "neighbours":
            if not entity:
                fail("neighbours needs --entity", EXIT_BAD_INPUT)
            rows = queries.neighbours(entity, hops, limit)
        elif query == "recent-edges":
            rows = queries.recent_edges(windows, limit)
        else:
            rows = queries.top_pairs(limit)
    except UnknownEntity as err:
        fail(err, EXIT_BAD_INPUT)
    for row in rows:
        click.echo(json.dumps(row, sort_keys=True))
