"""`datacreek tenant`: onboarding, removal, documents, credits, API keys, releases, manifests."""

from __future__ import annotations

import json

import click

from datacreek_assets.cli.common import (
    Context,
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    fail,
    handle_errors,
    ledger_of,
    require_registered,
    serving_store,
    tenant_argument,
)


@click.group()
def tenant() -> None:
    """Onboard, list and remove tenants."""


@tenant.command("add")
@tenant_argument
@click.pass_obj
@handle_errors
def tenant_add(obj: Context, tenant_id: str) -> None:
    """Register TENANT_ID and create its scope in every store (idempotent)."""
    from datacreek_assets.tenant_lifecycle import add_tenant
    from resources.factory import open_tenant_stores

    with open_tenant_stores(obj.resources()) as stores:
        report = add_tenant(tenant_id, stores, obj.instance())
    verb = "added" if report.created else "already present; scopes verified"
    click.echo(f"tenant {tenant_id}: {verb} ({', '.join(report.steps)})")


@tenant.command("list")
@click.pass_obj
@handle_errors
def tenant_list(obj: Context) -> None:
    """List registered tenants."""
    registry = obj.resources()["tenant_registry"].registry()
    for t in registry.list():
        click.echo(f"{t.tenant_id}\t{t.created_at:%Y-%m-%d %H:%M:%S}")


@tenant.command("remove")
@tenant_argument
@click.option("--force", is_flag=True, help="Delete the tenant even if it holds data, in every store.")
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="Seconds to wait for the tenant's cancelled runs to end before giving up (exit 4, no data "
                   "deleted); default 180.")
@click.pass_obj
@handle_errors
def tenant_remove(obj: Context, tenant_id: str, force: bool, wait_s: float) -> None:
    """Remove TENANT_ID: its partition, then its queued and running runs (cancelled, waited for),
    its data in every store, its registry entry."""
    from datacreek_assets.tenant_lifecycle import remove_tenant
    from resources.factory import open_tenant_stores

    resources = obj.resources()
    with open_tenant_stores(resources) as stores:
        waiting = {} if wait_s is None else {"run_stop_timeout_s": wait_s}  # else the library's default
        report = remove_tenant(tenant_id, stores, obj.instance(), force=force,
                               progress=lambda line: click.echo(line, err=True), **waiting)
    steps = list(report.steps)
    if obj.profile == "prod":  # locally there are no per-tenant credentials
        from datacreek_assets.tenant_credentials import revoke_credentials

        try:
            steps += [f"revoked {what}" for what in revoke_credentials(resources, tenant_id)]
        except Exception as err:  # the tenant is gone; its credentials can still be revoked by name
            raise RuntimeError(f"tenant {tenant_id} removed, but revoking its credentials failed ({err}); "
                               f"retry with `datacreek tenant credentials {tenant_id} --revoke`") from err
    click.echo(f"tenant {tenant_id}: removed ({', '.join(steps)})")


@tenant.command("delete-document")
@tenant_argument
@click.argument("doc_id")
@click.pass_obj
@handle_errors
def tenant_delete_document(obj: Context, tenant_id: str, doc_id: str) -> None:
    """Soft-delete DOC_ID (its path under the inbox) of TENANT_ID; `undo` restores it within 30 days."""
    from datacreek_assets.erasure.actions import NotDeletable, delete_document
    from datacreek_assets.graph.sync import OPERATOR
    from datacreek_assets.tenant_lifecycle import UnknownTenant

    resources = obj.resources()
    tenant_dir = resources["finetune"].tenant_dir(tenant_id)
    with resources["graph_store"].tenant(tenant_id) as graph, serving_store(obj) as store:
        try:
            report = delete_document(graph, resources["object_store"].for_tenant(tenant_id),
                                     feature_views(resources, tenant_id), tenant_dir, store.live(tenant_id).values(),
                                     doc_id, by=OPERATOR)
        except NotDeletable as err:
            raise UnknownTenant(str(err)) from err
    # its queued edges leave the review page now (an undo's graph run queues them again)
    resources["curation"].review_store().forget_documents(tenant_id, [doc_id])
    observe_erasure(obj, tenant_id, report)
    publish_document_events(obj, tenant_id, doc_id)
    if report["trainings"]:  # the adapter's page in the UI shows which trainings and releases learnt from it
        import dagster as dg

        obj.instance().report_runless_asset_event(dg.AssetObservation(
            asset_key="finetuned_adapter", partition=tenant_id,
            metadata={"tainted_by_deleted_document": report["document"], "tainted_trainings": report["trainings"],
                      "tainted_releases": report["releases"], "dataset_versions": report["dataset_versions"]}))
    counts = report["counts"]
    click.echo(f"{tenant_id}/{doc_id}: deleted; {counts['feature_rows_hidden']} feature rows and "
               f"{counts['retrieval_passages_hidden']} retrieval passages hidden at once; quoted by "
               f"{counts['dataset_records']} records of {counts['dataset_versions']} dataset version(s) "
               f"({', '.join(report['dataset_versions']) or 'none'}), which new versions leave out and the purge "
               f"removes; trainings on them: {', '.join(report['trainings']) or 'none'}; live releases: "
               f"{', '.join(report['releases']) or 'none'} (undo within 30 days: datacreek tenant undo {tenant_id} {doc_id})")


def feature_views(resources: dict, tenant_id: str) -> list:
    from datacreek_assets.embeddings.feature_store import FEATURE_VIEWS

    return [resources["feature_store"].for_tenant(tenant_id, view=view) for view in FEATURE_VIEWS]


def observe_erasure(obj: Context, tenant_id: str, entry: dict) -> None:
    from datacreek_assets.defs.graph.schedules import erasure_observation

    obj.instance().report_runless_asset_event(erasure_observation(tenant_id, entry))


def publish_document_events(obj: Context, tenant_id: str, doc_id: str) -> None:
    """Tell the real-time path: a delete event, or the restored document's rows. Neo4j is already
    written, so an unreachable event log is a warning with the way to catch up, not a failure."""
    from datacreek_assets.streaming.events import EventLogError, graph_events

    resources = obj.resources()
    with resources["graph_store"].tenant(tenant_id) as graph:  # its state now, with its revision
        events = graph_events(graph, [doc_id])
    log = resources["event_log"].event_log()
    try:
        log.publish(events)
    except EventLogError as err:
        click.secho(f"warning: the graph events were not published ({err}); catch up with "
                    f"`datacreek events replay --tenant {tenant_id}`", fg="yellow", err=True)
    finally:
        log.close()


@tenant.command("undo")
@tenant_argument
@click.argument("doc_id")
@click.pass_obj
@handle_errors
def tenant_undo(obj: Context, tenant_id: str, doc_id: str) -> None:
    """Restore a document soft-deleted less than 30 days ago: its graph data, vectors and passages."""
    from datacreek_assets.defs.graph.schedules import UNDO_WINDOW
    from datacreek_assets.erasure.actions import NotDeletable, undo_delete
    from datacreek_assets.tenant_lifecycle import UnknownTenant

    resources = obj.resources()
    with resources["graph_store"].tenant(tenant_id) as graph:
        try:
            entry = undo_delete(graph, resources["object_store"].for_tenant(tenant_id),
                                feature_views(resources, tenant_id), resources["finetune"].tenant_dir(tenant_id),
                                doc_id, UNDO_WINDOW)
        except NotDeletable as err:
            raise UnknownTenant(str(err)) from err
    observe_erasure(obj, tenant_id, entry)
    publish_document_events(obj, tenant_id, doc_id)
    import dagster as dg

    # the adapter's page said which trainings the deletion tainted: say the document is back
    obj.instance().report_runless_asset_event(dg.AssetObservation(
        asset_key="finetuned_adapter", partition=tenant_id, metadata={"restored_document": entry["document"]}))
    click.echo(f"{tenant_id}/{doc_id}: restored, with {entry['counts']['feature_rows_restored']} feature rows "
               f"and {entry['counts'].get('retrieval_passages_restored', 0)} retrieval passages")


@tenant.command("top-up")
@tenant_argument
@click.argument("amount", type=float)
@click.option("--note", default="", help="Why (kept with the transaction).")
@click.pass_obj
@handle_errors
def tenant_top_up(obj: Context, tenant_id: str, amount: float, note: str) -> None:
    """Add AMOUNT credits to the tenant's balance (an append-only ledger transaction)."""
    require_registered(obj, tenant_id)
    balance = ledger_of(obj).top_up(tenant_id, amount, note=note or "CLI top-up")
    click.echo(f"{tenant_id}: balance {balance:.6f} credits")


@tenant.command("set-price")
@tenant_argument
@click.argument("price", type=float)
@click.option("--resource", type=click.Choice(["gpu", "cpu"]), default="gpu", show_default=True,
              help="gpu: credits per GPU-minute; cpu: per CPU-fallback minute.")
@click.pass_obj
@handle_errors
def tenant_set_price(obj: Context, tenant_id: str, price: float, resource: str) -> None:
    """Set the tenant's price per GPU-minute (or CPU-fallback minute), from now on."""
    require_registered(obj, tenant_id)
    ledger_of(obj).set_price(tenant_id, price, resource)
    click.echo(f"{tenant_id}: {resource} price {price} credits/minute")


@tenant.command("balance")
@tenant_argument
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@handle_errors
def tenant_balance(obj: Context, tenant_id: str, as_json: bool) -> None:
    """The tenant's credit balance and prices."""
    require_registered(obj, tenant_id)
    account = ledger_of(obj).account(tenant_id)
    if as_json:
        click.echo(json.dumps(account.__dict__))
    else:
        click.echo(f"{tenant_id}: balance {account.balance:.6f} credits; gpu {account.gpu_price}/min, "
                   f"cpu fallback {account.cpu_price}/min")


@tenant.command("issue-key")
@tenant_argument
@click.pass_obj
@handle_errors
def tenant_issue_key(obj: Context, tenant_id: str) -> None:
    """Issue an API key for the tenant's served model. The key is printed once; only its hash is kept."""
    require_registered(obj, tenant_id)
    with serving_store(obj) as store:
        key_id, key = store.issue_key(tenant_id)
    click.echo(f"key id {key_id} for {tenant_id} (keep the key now; it is not shown again):")
    click.echo(key)


@tenant.command("revoke-key")
@tenant_argument
@click.argument("key_id")
@click.pass_obj
@handle_errors
def tenant_revoke_key(obj: Context, tenant_id: str, key_id: str) -> None:
    """Revoke one of the tenant's API keys by its id (the router forgets it within seconds)."""
    with serving_store(obj) as store:
        revoked = store.revoke_key(tenant_id, key_id)
    if not revoked:
        fail(LookupError(f"tenant {tenant_id} has no key {key_id!r}"), EXIT_BAD_INPUT)
    click.echo(f"revoked key {key_id} of {tenant_id}")


@tenant.command("releases")
@tenant_argument
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@handle_errors
def tenant_releases(obj: Context, tenant_id: str, as_json: bool) -> None:
    """The tenant's model releases: live production and canary, rolled back and retired ones."""
    with serving_store(obj) as store:
        releases = store.releases(tenant_id)
    rows = [{"version": r.version, "status": r.status, "canary_weight": r.canary_weight,
             "started_at": r.started_at.isoformat(), "reason": r.reason, "run_key": r.run_key,
             "adapter_sha256": r.adapter.sha256 if r.adapter else None, **r.numbers} for r in releases]
    if as_json:
        click.echo(json.dumps(rows, default=str))
        return
    if not rows:
        click.echo(f"{tenant_id}: nothing released yet")
    for row in rows:
        click.echo(f"{tenant_id}-{row['version']:<6} {row['status']:<12} weight {row['canary_weight']:.2f}  "
                   f"{row['reason'] or ''}")


@tenant.command("manifests")
@tenant_argument
@click.option("--gpus", default=1, show_default=True, type=int, help="GPUs in the namespace's quota.")
@click.pass_obj
@handle_errors
def tenant_manifests(obj: Context, tenant_id: str, gpus: int) -> None:
    """Render the tenant's Kubernetes manifests (namespace, quota, limits, network policies, RBAC)
    from the tenant chart, for a tenant that exists in the registry; validated before printing."""
    from datacreek_assets import kubernetes as k8s

    require_registered(obj, tenant_id)
    values = k8s.tenant_values(tenant_id, quota={"gpus": gpus})
    docs = k8s.render_tenant(k8s.helm_binary(obj.settings.download_cache), values)
    errors = k8s.validate(docs)
    if errors:
        fail(RuntimeError("invalid manifests: " + "; ".join(errors)), EXIT_FAILED)
    import yaml

    click.echo(yaml.safe_dump_all(docs, sort_keys=False), nl=False)


@tenant.command("credentials")
@tenant_argument
@click.option("--revoke", is_flag=True, help="Drop them instead (also for a tenant already removed).")
@click.pass_obj
@handle_errors
def tenant_credentials(obj: Context, tenant_id: str, revoke: bool) -> None:
    """Create (or rotate) TENANT_ID's own credentials, a PostgreSQL role that reaches only its rows
    of the registry, ledger and release store and a FalkorDB user that reaches only its graph, and
    print them as the Secret its run and step pods read: `... | kubectl apply -f -`. Prod profile."""
    import yaml

    from datacreek_assets.tenant_credentials import issue_credentials, revoke_credentials, secret_manifest

    if revoke:
        dropped = revoke_credentials(obj.resources(), tenant_id)
        click.echo(f"tenant {tenant_id}: revoked {', '.join(dropped) or 'nothing (none were issued)'}")
        return
    require_registered(obj, tenant_id)
    env = issue_credentials(obj.resources(), tenant_id)
    click.echo(yaml.safe_dump(secret_manifest(tenant_id, env), sort_keys=False), nl=False)
