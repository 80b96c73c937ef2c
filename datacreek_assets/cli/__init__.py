"""The `datacreek` command: one module per command group."""

from __future__ import annotations

import click

from datacreek_assets.cli.billing import billing
from datacreek_assets.cli.common import EXIT_UNAVAILABLE, Context, fail
from datacreek_assets.cli.curate import curate
from datacreek_assets.cli.events import events
from datacreek_assets.cli.hot import hot
from datacreek_assets.cli.maintenance import migrate
from datacreek_assets.cli.runs import backfill, demo, materialize
from datacreek_assets.cli.services import services
from datacreek_assets.cli.serving import serving
from datacreek_assets.cli.storage import storage
from datacreek_assets.cli.tenant import tenant
from datacreek_assets.settings import ConfigError, current_profile


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--profile",
    type=click.Choice(["local", "prod"]),
    default=None,
    help="Resource profile (default: $DATACREEK_PROFILE or 'local').",
)
@click.pass_context
def cli(ctx: click.Context, profile: str | None) -> None:
    """Datacreek: turn each tenant's documents into a fine-tuned, served model.

    Local state lives under $DATACREEK_STATE_DIR (default ./.datacreek).
    Exit codes: 0 ok, 1 run failed, 2 bad input, 3 service/config unavailable,
    4 refused without --force.
    """
    from datacreek_assets.quiet import quiet_third_party
    from datacreek_assets.signals import let_children_take_default_signals

    quiet_third_party()  # before any library is imported: runs execute their steps in this process
    let_children_take_default_signals()  # services and log tailers it starts must stop on SIGTERM
    try:
        ctx.obj = Context(profile or current_profile())
    except ConfigError as err:
        fail(err, EXIT_UNAVAILABLE)


for command in (services, storage, tenant, events, hot, curate, billing, serving, materialize, backfill, demo,
                migrate):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="datacreek")
