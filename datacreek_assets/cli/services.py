"""`datacreek services`: the local services (Neo4j, FalkorDB, Ray, PostgreSQL)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from datacreek_assets.cli.common import EXIT_UNAVAILABLE, Context, handle_errors, local_only
from datacreek_assets.cli.storage import apply_lifecycle
from datacreek_assets.settings import ensure_dagster_home


@click.group()
def services() -> None:
    """Start, stop and inspect the local services (Neo4j, FalkorDB).

    Ports: $DATACREEK_NEO4J_PORT (7687) and $DATACREEK_FALKORDB_PORT (6380).
    """


@services.command("up")
@click.option("--timeout", default=180.0, show_default=True, help="Seconds to wait for each service.")
@click.pass_obj
@handle_errors
def services_up_cmd(obj: Context, timeout: float) -> None:
    """Start every local service (idempotent); fetch Neo4j on first use."""
    from datacreek_assets.local_services import services_up

    local_only(obj)
    ensure_dagster_home(Path(os.environ.get("DAGSTER_HOME", obj.settings.dagster_home)))
    started = time.monotonic()
    services_up(obj.settings, timeout=timeout, progress=lambda msg: click.echo(f"  {msg}"))
    apply_lifecycle(obj, echo=lambda msg: click.echo(f"  {msg}"))
    click.echo(f"services up in {time.monotonic() - started:.1f}s")


@services.command("down")
@click.pass_obj
@handle_errors
def services_down_cmd(obj: Context) -> None:
    """Stop the services that `up` started (and nothing else)."""
    from datacreek_assets.local_services import services_down

    local_only(obj)
    services_down(obj.settings, progress=lambda msg: click.echo(f"  {msg}"))


@services.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
@handle_errors
def services_status_cmd(obj: Context, as_json: bool) -> None:
    """Show each service, its address and whether it answers (exit 3 if any does not)."""
    from datacreek_assets.local_services import services_status

    local_only(obj)
    statuses = services_status(obj.settings)
    if as_json:
        click.echo(json.dumps([s.as_dict() for s in statuses], indent=2))
    else:
        for s in statuses:
            state = "answers" if s.answers else "not answering"
            owner = f"pid {s.pid}" if s.started_by_us else "not started by datacreek"
            click.echo(f"{s.name:<10} {s.address:<18} {state:<14} {owner}")
    if not all(s.answers for s in statuses):
        sys.exit(EXIT_UNAVAILABLE)


