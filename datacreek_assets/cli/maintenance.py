"""`datacreek migrate`: the tenants' versioned graph migrations."""

from __future__ import annotations

import sys

import click

from datacreek_assets.cli.common import EXIT_FAILED, Context, handle_errors, require_registered, tenant_option


@click.command("migrate")
@tenant_option()
@click.option("--dry-run", is_flag=True, help="Validate and list what would be applied; change nothing.")
@click.pass_obj
@handle_errors
def migrate(obj: Context, tenant_id: str | None, dry_run: bool) -> None:
    """Apply db/migration/ (every tenant) and db/migration/<tenant>/ in version order.

    Each tenant's graph records the versions it has, with checksums: a changed applied migration
    is refused, and a failed one leaves the recorded version unchanged. One tenant's failure does
    not stop the others; the exit code is 1 if any failed.
    """
    from datacreek_assets.graph.migrations import MigrationError, migrate_tenant

    resources = obj.resources()
    if tenant_id:
        require_registered(obj, tenant_id)
        tenants = [tenant_id]
    else:
        registry = resources["tenant_registry"].registry()
        try:
            tenants = [t.tenant_id for t in registry.list()]
        finally:
            registry.close()
    failed = 0
    with resources["graph_store"].admin() as admin:
        for done, tenant in enumerate(tenants, 1):  # a line per tenant as it finishes: the progress
            try:
                click.echo(f"[{done}/{len(tenants)}] {migrate_tenant(admin, tenant, dry_run=dry_run).line()}")
            except MigrationError as err:
                failed += 1
                click.secho(f"[{done}/{len(tenants)}] {err}", fg="red", err=True)
    if failed:
        sys.exit(EXIT_FAILED)
    if not tenants:
        click.echo("no tenants registered")
