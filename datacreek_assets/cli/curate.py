"""`datacreek curate`: the curator loop from the shell: serve `/ui/edge_review`, issue and revoke
curator keys, set a tenant's τ, and list what its queue holds."""

from __future__ import annotations

import click

from datacreek_assets.cli.common import EXIT_BAD_INPUT, Context, fail, handle_errors, require_registered, tenant_argument


@click.group()
def curate() -> None:
    """The edge review: its web UI and API, curator keys, τ, the queue."""


@curate.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8120, show_default=True, type=int)
@click.pass_obj
@handle_errors
def curate_serve(obj: Context, host: str, port: int) -> None:
    """Serve /ui/edge_review (sign in with a curator key, or the serving admin token and a tenant) and
    its API, PATCH /api/v1/edges/ID and POST /api/v1/repairs/ID/undo. Decisions patch Neo4j, are
    logged in edge_repair_log and republish the document's graph events. Ctrl-C stops it."""
    import uvicorn

    from datacreek_assets.curation.web import curation_app

    resources = obj.resources()
    curation = resources["curation"]
    event_log = resources["event_log"].event_log()
    with resources["graph_store"].admin() as admin:
        app = curation_app(admin, curation.review_store(), curation.repair_log(), resources["serving"].admin_token,
                           event_log.publish)
        click.echo(f"edge review: http://{host}:{port}/ui/edge_review (Ctrl-C stops)")
        try:
            uvicorn.run(app, host=host, port=port, log_level="warning")
        finally:
            event_log.close()


@curate.command("issue-key")
@tenant_argument
@click.argument("curator")
@click.pass_obj
@handle_errors
def curate_issue_key(obj: Context, tenant_id: str, curator: str) -> None:
    """A new curator key for CURATOR on the tenant's edges. It is shown once; only its hash is kept."""
    require_registered(obj, tenant_id)
    key_id, key = obj.resources()["curation"].review_store().issue_key(tenant_id, curator)
    click.echo(f"key id {key_id} ({curator} on {tenant_id}); the key, shown once:")
    click.echo(key)


@curate.command("revoke-key")
@tenant_argument
@click.argument("key_id")
@click.pass_obj
@handle_errors
def curate_revoke_key(obj: Context, tenant_id: str, key_id: str) -> None:
    """Revoke one of the tenant's curator keys (exit 2 if it has none of that id)."""
    if not obj.resources()["curation"].review_store().revoke_key(tenant_id, key_id):
        fail(LookupError(f"tenant {tenant_id} has no curator key {key_id!r}"), EXIT_BAD_INPUT)
    click.echo(f"revoked {key_id}")


@curate.command("keys")
@tenant_argument
@click.pass_obj
@handle_errors
def curate_keys(obj: Context, tenant_id: str) -> None:
    """The tenant's curator keys: id, curator, issued."""
    for key_id, curator, created in obj.resources()["curation"].review_store().keys(tenant_id):
        click.echo(f"{key_id}  {curator}  {created:%Y-%m-%d %H:%M}")


@curate.command("set-tau")
@tenant_argument
@click.argument("tau", type=click.FloatRange(min=0.0))
@click.pass_obj
@handle_errors
def curate_set_tau(obj: Context, tenant_id: str, tau: float) -> None:
    """The Δλ a fact needs to reach the tenant's queue (larger: a shorter queue). Takes effect at the
    next edge_review_queue."""
    require_registered(obj, tenant_id)
    obj.resources()["curation"].review_store().set_tau(tenant_id, tau)
    click.echo(f"{tenant_id}: τ = {tau:g} (materialize edge_review_queue to apply it)")


@curate.command("queue")
@tenant_argument
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 500))
@click.option("--status", default="open", show_default=True, type=click.Choice(["open", "decided", "all"]))
@click.pass_obj
@handle_errors
def curate_queue(obj: Context, tenant_id: str, limit: int, status: str) -> None:
    """The tenant's queued edges, strongest Δλ first."""
    page = obj.resources()["curation"].review_store().page(tenant_id, 0, limit, status)
    click.echo(f"{page.total} {status} edges")
    for e in page.edges:
        flags = ("exact" if e.exact else "estimate") + ("" if e.trusted else ", untrusted")
        click.echo(f"{e.rank:4d}  Δλ {e.delta_lambda:.3g} ({flags})  conf {e.confidence:.2f}  "
                   f"{e.subject} —{e.predicate}→ {e.object}  [{e.fact_id} v{e.current_version}]")
