"""`datacreek billing`: the metering exporter and admin API."""

from __future__ import annotations

import os

import click

from datacreek_assets.cli.common import Context, handle_errors, ledger_of
from datacreek_assets.settings import ConfigError


@click.group()
def billing() -> None:
    """GPU metering: the Prometheus exporter and the admin API."""


@billing.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=9464, show_default=True, type=int)
@click.pass_obj
@handle_errors
def billing_serve(obj: Context, host: str, port: int) -> None:
    """Serve /metrics (gpu_minutes_total, gpu_cost_total per tenant, the model volume's disk usage) and
    the admin API (/admin/tenants/ID/balance|top-up|price, bearer token from DATACREEK_ADMIN_TOKEN)."""
    from datacreek_assets.billing.server import make_server
    from datacreek_assets.retention.disk_usage import StateDiskCollector

    token = os.environ.get("DATACREEK_ADMIN_TOKEN", "")
    if len(token) < 16:
        raise ConfigError("set DATACREEK_ADMIN_TOKEN (at least 16 characters) for the admin API")
    registry = obj.resources()["tenant_registry"].registry()

    def is_registered(tenant_id: str) -> bool:
        return registry.get(tenant_id) is not None

    disk = StateDiskCollector(obj.resources()["finetune"].models_dir)
    server = make_server(ledger_of(obj), token, host, port, is_registered, collectors=(disk,))
    click.echo(f"billing: http://{host}:{port}/metrics and /admin/tenants/<id>/... (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        registry.close()


