"""`datacreek storage`: the object store's retention settings."""

from __future__ import annotations

import click

from datacreek_assets.cli.common import Context, handle_errors


@click.group()
def storage() -> None:
    """The object store's lifecycle rules (run at deploy; `services up` runs it locally)."""


def apply_lifecycle(obj: Context, echo=click.echo) -> None:
    result = obj.resources()["object_store"].ensure_lifecycle()
    if result is None:
        echo("lifecycle: the local directory store expires nothing; the retention_audit asset enforces "
             "ingest-toxic/'s 7 days")
        return
    state = "written" if result.changed else "already in place"
    echo(f"lifecycle of bucket {result.bucket}: rule {result.rule['ID']} {state} "
         f"(ingest-toxic/ expires after {result.rule['Expiration']['Days']} days"
         f"{', noncurrent versions too' if result.versioned else ''}); rules: {', '.join(result.rule_ids)}")


@storage.command("lifecycle")
@click.pass_obj
@handle_errors
def lifecycle_cmd(obj: Context) -> None:
    """Put the 7-day expiry of ingest-toxic/ into the bucket's lifecycle, keeping its other rules.

    Idempotent: nothing is written when the rule is already in place. Exit 3 if the bucket cannot
    be read or the rule does not read back as written.
    """
    apply_lifecycle(obj)
