"""`datacreek serving`: the platform's side of serving in a cluster."""

from __future__ import annotations

from pathlib import Path

import click

from datacreek_assets.cli.common import Context, handle_errors


@click.group()
def serving() -> None:
    """The serving control API that tenants' release steps call in a cluster."""


@serving.command("control-api")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8200, show_default=True, type=int)
@click.pass_obj
@handle_errors
def control_api_cmd(obj: Context, host: str, port: int) -> None:
    """Serve the control API: POST /v1/tenants/TENANT/releases and /production, each with that
    registered tenant's control token (`datacreek tenant credentials`). It drives Ray Serve, the
    router and the release store with the platform's credentials. Ctrl-C stops it; exit 3 without
    DATACREEK_SERVING_CONTROL_SECRET or when Ray cannot be reached."""
    import uvicorn

    from datacreek_assets.serving.control_api import control_api, require_secret

    resources = obj.resources(only=("serving", "tenant_registry"))  # what its pod's Secret holds
    serving_resource, registry = resources["serving"], resources["tenant_registry"].registry()
    require_secret(serving_resource.control_secret)  # before Ray: the first thing to set
    control = serving_resource.control()  # now: a missing Ray address or admin token is exit 3, not a 500 later
    control.connect()
    app = control_api(lambda: control, serving_resource.control_secret,
                      Path(serving_resource.model_cache_dir or obj.settings.state_dir) / "admitting",
                      lambda tenant: registry.get(tenant) is not None)
    click.echo(f"serving control API: http://{host}:{port}/v1/tenants/... (Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
