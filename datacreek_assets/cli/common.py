"""What every `datacreek` command shares: the context built from the environment, the
error handling that turns failures into one line and an exit code, and small helpers.

Exit codes: 0 done; 1 a run or step failed; 2 bad input (usage, invalid tenant
id, unknown tenant or document); 3 a service or the configuration is not
usable; 4 refused to destroy data without --force.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path

import click

from datacreek_assets.settings import ConfigError, LocalSettings, ensure_dagster_home
from datacreek_assets.tenancy import InvalidTenantId, validate_tenant_id

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_UNAVAILABLE, EXIT_REFUSED = 1, 2, 3, 4


class Context:
    """What every command needs, built lazily from the environment at run time."""

    def __init__(self, profile: str):
        self.profile = profile
        self.settings = LocalSettings.from_env()

    def resources(self, only: tuple[str, ...] = ()):
        """The profile's resources, set up; ``only``: just those (a command that needs few then
        needs only their variables)."""
        from resources.factory import build_resources, initialized

        stack = contextlib.ExitStack()
        command = click.get_current_context(silent=True)
        if command is not None:  # torn down with the command
            command.call_on_close(stack.close)
        resources = build_resources(self.profile, self.settings)
        return initialized({name: resources[name] for name in only} if only else resources, stack)

    def instance(self):
        from dagster import DagsterInstance

        if "DAGSTER_HOME" not in os.environ:
            if self.profile != "local":
                raise ConfigError("DAGSTER_HOME must point at the prod Dagster instance config")
            os.environ["DAGSTER_HOME"] = str(self.settings.dagster_home)
        if self.profile == "local":
            ensure_dagster_home(Path(os.environ["DAGSTER_HOME"]))
        instance = DagsterInstance.get()
        if self.profile == "local":
            from datacreek_assets.automation import set_gpu_slots

            set_gpu_slots(instance, 1)  # this machine has at most one accelerator
        return instance

    def definitions(self):
        from datacreek_assets.defs import build_definitions

        return build_definitions(self.profile, self.settings)


def handle_errors(func):
    """Turn known failures into one clear line and a meaningful exit code."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from datacreek_assets.backfills import BackfillError, WebserverUnavailable
        from datacreek_assets.billing.ledger import LedgerError
        from datacreek_assets.curation.decisions import DecisionError
        from datacreek_assets.local_services import ServiceError
        from datacreek_assets.object_store import InvalidObjectKey
        from datacreek_assets.retention.lifecycle import LifecycleError
        from datacreek_assets.runner import UnknownAsset
        from datacreek_assets.serving.control import ServingError
        from datacreek_assets.serving.release_store import ReleaseConflict
        from datacreek_assets.serving.routing import InvalidVersion
        from datacreek_assets.streaming.events import EventLogError
        from datacreek_assets.tenant_lifecycle import TenantBusy, TenantHasData, UnknownTenant

        try:
            return func(*args, **kwargs)
        except (InvalidTenantId, UnknownTenant, UnknownAsset, InvalidObjectKey, LedgerError, InvalidVersion,
                DecisionError) as err:
            fail(err, EXIT_BAD_INPUT)
        except (TenantHasData, TenantBusy, ReleaseConflict) as err:
            fail(err, EXIT_REFUSED)
        except (ServiceError, ConfigError, WebserverUnavailable, ServingError, LifecycleError, EventLogError) as err:
            fail(err, EXIT_UNAVAILABLE)
        except BackfillError as err:
            fail(err, EXIT_FAILED)
        except (SystemExit, click.ClickException):
            raise
        except Exception as err:  # a store or driver said no: one line, not a stack trace
            code = EXIT_UNAVAILABLE if _is_service_error(err) else EXIT_FAILED
            fail(RuntimeError(f"{err.__class__.__name__}: {str(err).splitlines()[0] if str(err) else ''}"), code)

    return wrapper


def _is_service_error(err: Exception) -> bool:
    """Errors raised by a store's client (Neo4j, Redis/FalkorDB, S3, SQL, Dagster config)."""
    module = type(err).__module__.split(".")[0]
    return module in {"neo4j", "redis", "botocore", "boto3", "sqlalchemy", "falkordb", "confluent_kafka"} or (
        type(err).__name__ == "DagsterInvalidConfigError")


def fail(err: Exception, code: int) -> None:
    click.secho(f"error: {err}", fg="red", err=True)
    sys.exit(code)


def _valid_tenant(_ctx, _param, value):
    if value is None:
        return None
    try:
        return validate_tenant_id(value)
    except InvalidTenantId as err:
        raise click.BadParameter(str(err)) from None


def tenant_argument(func):
    return click.argument("tenant_id", callback=_valid_tenant)(func)


def tenant_option(required: bool = False, help: str = "Only this tenant (default: every registered one)."):
    return click.option("--tenant", "tenant_id", callback=_valid_tenant, required=required, help=help)


def local_only(obj: Context) -> None:
    if obj.profile != "local":
        raise ConfigError("`datacreek services` manages local services only; prod services are external")


def ledger_of(obj: Context):
    return obj.resources()["credit_ledger"].ledger()


def require_registered(obj: Context, tenant_id: str) -> None:
    from datacreek_assets.tenant_lifecycle import UnknownTenant

    registry = obj.resources()["tenant_registry"].registry()
    try:
        if registry.get(tenant_id) is None:
            raise UnknownTenant(f"tenant {tenant_id!r} is not registered: `datacreek tenant add {tenant_id}` first")
    finally:
        registry.close()


@contextlib.contextmanager
def serving_store(obj: Context):
    store = obj.resources()["serving"].store()
    try:
        yield store
    finally:
        store.close()

