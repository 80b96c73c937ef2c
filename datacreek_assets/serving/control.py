"""The serving control plane: runs a pool of replicas per base model on Ray Serve and loads
tenants' adapters there, records releases in the release store and tells the router, and
judges canaries.

Order of every change: deploy first (the pool runs and the adapter is loaded; nothing routes
to it yet), record in the store, reload the router; when a version stops serving: record,
reload the router (traffic leaves it); the pools' replicas drop its adapter when the store no
longer lists it. Pools are never deleted here: a release step may see its own tenant's releases
only (row-level security), so "no release uses this base" is not something it can know. The
store is the truth:
`reconcile` (run before every canary check and release) brings Ray Serve and the router back
in line with it, so a change that failed half-way is finished by the next pass instead of
being tripped over.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from datacreek_assets.serving.model_files import ModelRef, ModelSource, publish_adapter, publish_base
from datacreek_assets.serving.release_store import Release, ReleaseConflict, ServingStore
from datacreek_assets.serving.routing import (
    CanaryPolicy, InvalidVersion, Verdict, WindowStats, deployment_name, judge_canary, validate_version,
)
from datacreek_assets.tenancy import InvalidTenantId, validate_tenant_id

ROUTER_APP = "router"
ROUTERS_SETTLE_S = 15.0  # every router replica re-reads the store every 0.5 s; a starting one may take longer
LOG = logging.getLogger(__name__)
# the Ray Client proxy's answer when the server it starts for a driver dies (crashed in gRPC just
# after the fork, or already a zombie when the proxy reads its command line)
CLIENT_SERVER_FAILED = "Initialization failure from server"
CLIENT_SERVER_ATTEMPTS = 5


class ServingError(RuntimeError):
    """Ray Serve or the router cannot be reached or refused a change."""


class ReleaseRefused(ServingError):
    """The canary policy refuses the change asked for (no live canary, or one not ready)."""


@dataclass
class CanaryOutcome:
    tenant: str
    version: str
    verdict: Verdict | None
    acted: bool = False
    timings_s: dict = field(default_factory=dict)
    error: str | None = None


def parse_deployment(name: str) -> tuple[str, str] | None:
    """(tenant, version) of a `<tenant>-<version>` application name, or None for anything else
    (versions have no '-', so the last one splits them)."""
    tenant, _, version = name.rpartition("-")
    try:
        return validate_tenant_id(tenant), validate_version(version)
    except (InvalidTenantId, InvalidVersion):
        return None


class ServingControl:
    def __init__(self, ray_address: str, http_port: int, store_url: str, admin_token: str,
                 ray_auth_token_path: str | None = None, window_s: float = 60.0, max_prompt_chars: int = 8000,
                 n_ctx: int = 2048, threads: int = 1, http_host: str = "127.0.0.1", router_url: str = "",
                 models_dir: str = "", model_source: ModelSource | None = None, replica_cpus: float = 0.0,
                 pool_max_replicas: int = 1, router_replicas: int = 2, canary_weight: float = 0.05,
                 policy: CanaryPolicy | None = None):
        self.ray_address, self.http_port, self.ray_auth_token_path = ray_address, http_port, ray_auth_token_path
        self.store = ServingStore(store_url)
        self.store_url, self.admin_token = store_url, admin_token
        self.window_s, self.max_prompt_chars, self.n_ctx, self.threads = window_s, max_prompt_chars, n_ctx, threads
        self.http_host = http_host  # where Serve's proxy listens (0.0.0.0 in a cluster)
        self.url = (router_url or f"http://127.0.0.1:{http_port}").rstrip("/")  # where we reach it
        self.models_dir = models_dir  # the tenants' retrieval indexes, read by the router
        self.model_source = model_source  # where released model files go and replicas fetch them
        self.replica_cpus = replica_cpus
        self.pool_max_replicas = pool_max_replicas  # replicas per base pool (Serve autoscales on queue length)
        if router_replicas < 1:
            raise ValueError(f"router_replicas must be at least 1, not {router_replicas}")
        self.router_replicas = router_replicas
        self.canary_weight, self.policy = canary_weight, policy or CanaryPolicy()  # releases and promotions

    # -- Ray Serve ------------------------------------------------------------
    def connect(self) -> None:
        import ray
        from ray._private import auto_init_hook

        # Ray connects on its own at the first remote call when not connected; a Serve handle's
        # background thread (its metrics push) makes such calls. After the head died that would
        # start a cluster of its own in this process, or join the new head just before ray.init
        # below does (which then refuses: "ray.init twice"). Only this method connects.
        auto_init_hook.enable_auto_connect = False
        if ray.is_initialized():
            return
        from datacreek_assets.local_services import ray_auth_env

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # not a line per serve.start/run call
        if self.ray_auth_token_path:
            # Ray reads its auth settings from the environment when it is imported: set them, then
            # have it read them again (as ray's own test utilities do) before connecting.
            from ray._raylet import AuthenticationTokenLoader, Config

            os.environ.update(ray_auth_env(Path(self.ray_auth_token_path)))
            Config.initialize("")
            AuthenticationTokenLoader.instance().reset_cache()
        for attempt in range(1, CLIENT_SERVER_ATTEMPTS + 1):
            ray.shutdown()  # whatever a dead head's (or a failed attempt's) connection left behind
            try:
                ray.init(address=self.ray_address, log_to_driver=False, logging_level="warning")
                return
            except (ConnectionError, RuntimeError) as err:
                # Ray's client proxy forks a server per driver, and that fork sometimes dies in gRPC
                # (ray-project/ray#63202): the next driver gets a fresh one
                if CLIENT_SERVER_FAILED in str(err) and attempt < CLIENT_SERVER_ATTEMPTS:
                    LOG.warning("Ray's client server for this driver did not start (attempt %d of %d); "
                                "trying again", attempt, CLIENT_SERVER_ATTEMPTS)
                    time.sleep(1.0)  # the proxy frees the dead server's port
                    continue
                raise ServingError(f"Ray is not reachable at {self.ray_address} (`datacreek services up` "
                                   f"starts it): {err}") from None

    def ensure_router(self) -> None:
        """Serve and the router (`router_replicas` of it, and RouterStats) are running, and both
        agree with the store (`reconcile`)."""
        from ray import serve

        from datacreek_assets.serving.app import Router
        from datacreek_assets.serving.router_stats import RouterStats

        self.connect()
        serve.start(http_options={"host": self.http_host, "port": self.http_port})
        if not self._router_as_configured():
            serve.run(Router.options(num_replicas=self.router_replicas).bind(
                self.store_url, self.admin_token, RouterStats.bind(self.window_s), self.max_prompt_chars,
                self.models_dir), name=ROUTER_APP, route_prefix="/")
        self.reconcile()

    def _router_as_configured(self) -> bool:
        """The router application runs, healthy, with RouterStats and `router_replicas` routers.
        Anything else (not running, an older router without RouterStats, another count) is
        deployed again; a running one as configured is left alone (a redeploy restarts it)."""
        from ray import serve

        app = serve.status().applications.get(ROUTER_APP)
        if app is None or getattr(app.status, "value", str(app.status)) != "RUNNING":
            return False
        router, stats = app.deployments.get("Router"), app.deployments.get("RouterStats")
        return stats is not None and router is not None and sum(router.replica_states.values()) == self.router_replicas

    def reconcile(self) -> None:
        """Base pools missing from Serve are started for the live releases (after a Ray restart, or
        a start that failed) and their adapters loaded; per-version applications of earlier
        versions of this code are deleted; the router re-reads every route. A live release that cannot start (a file refused, a broken model) is logged and
        tried again on the next pass; the others go on."""
        from ray import serve

        from datacreek_assets.serving.pool_server import pool_name

        running = self.applications()
        live = self.store.live_releases()
        for release in live:
            if release.model is None or running.get(pool_name(release.model.sha256)) != "RUNNING":
                try:
                    self._deploy(release)
                except ServingError as err:  # one release that cannot start holds up no other tenant
                    LOG.warning("reconcile: %s", err)
        for name in running:
            if parse_deployment(name) is not None:  # a model per version, as releases were served before
                serve.delete(name)
        self._reload("/admin/v1/reload")

    def applications(self) -> dict[str, str]:
        from ray import serve

        self.connect()
        return {name: getattr(app.status, "value", str(app.status)) for name, app in serve.status().applications.items()}

    def _deploy(self, release: Release) -> None:
        """The release's base pool is running and its adapter loaded there: fetched, its digest
        checked and loaded once before a client's request (a refused file fails the release here)."""
        from ray import serve

        from datacreek_assets.serving.pool_server import AdapterServer, adapter_model_id

        name = deployment_name(release.tenant_id, release.version)
        if release.model is None:
            release = self.adopt_legacy_files(release)
        pool = self.ensure_pool(release.model)
        if release.adapter is None:
            return
        handle = serve.get_deployment_handle(AdapterServer.name, app_name=pool).options(
            multiplexed_model_id=adapter_model_id(release.tenant_id, release.version, release.adapter))
        probe = {"tenant": release.tenant_id, "version": release.version, "max_tokens": 1, "temperature": 0.0,
                 "messages": [{"role": "user", "content": "hello"}]}
        try:
            handle.remote(probe).result(timeout_s=300)
        except Exception as err:  # the replica's exception: its last line says what was refused
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            raise ServingError(f"deploying {name} failed: {lines[-1][:500] if lines else type(err).__name__}") \
                from err

    def ensure_pool(self, model: ModelRef) -> str:
        """The base pool of ``model`` runs (started if it does not): its application name. A pool
        that runs is never redeployed: that would restart every tenant's replicas of that base."""
        from ray import serve

        from datacreek_assets.serving.pool_server import AdapterServer, pool_name

        name = pool_name(model.sha256)
        deadline = time.monotonic() + 300
        while (status := self.applications().get(name)) in ("DEPLOYING", "DELETING") and time.monotonic() < deadline:
            time.sleep(0.5)  # another pass is starting (or removing) it
        if status == "RUNNING":
            return name
        app = AdapterServer.options(
            ray_actor_options={"num_cpus": self.replica_cpus},
            autoscaling_config={"min_replicas": 1, "max_replicas": self.pool_max_replicas,
                                "target_ongoing_requests": 2}).bind(
            model.as_dict(), self._source().as_dict(), self.store_url, self.n_ctx, self.threads)
        try:
            serve.run(app, name=name, route_prefix=None)
        except Exception as err:
            cause = self._replica_error(name)
            serve.delete(name)  # a pool that failed to start leaves nothing behind
            raise ServingError(f"starting the base pool {name} failed: {err}{f' ({cause})' if cause else ''}") \
                from err
        return name

    def adapters_loaded(self, timeout_s: float = 60.0) -> set[tuple[str, str]]:
        """(tenant, version) of the adapters the base pools hold (asked of one replica per pool)."""
        from ray import serve

        from datacreek_assets.serving.pool_server import POOL_PREFIX, AdapterServer

        loaded = set()
        for name, status in self.applications().items():
            if name.startswith(POOL_PREFIX) and status == "RUNNING":
                handle = serve.get_deployment_handle(AdapterServer.name, app_name=name)
                loaded.update(tuple(pair) for pair in handle.loaded.remote().result(timeout_s=timeout_s))
        return loaded

    @staticmethod
    def _replica_error(name: str) -> str:
        """The last line of what Serve reports for a deployment that failed: the exception its
        replica raised (Serve's own error names only the deployment)."""
        from ray import serve

        try:
            app = serve.status().applications.get(name)
            messages = [d.message for d in app.deployments.values() if d.message] if app else []
        except Exception:  # the status itself is unavailable: the deploy error alone is reported
            return ""
        lines = [line.strip() for message in messages for line in message.strip().splitlines() if line.strip()]
        return lines[-1][:500] if lines else ""

    def adopt_legacy_files(self, release: Release) -> Release:
        """A release recorded when releases held local paths: its files are published and the
        release store records their keys and digests instead (once); files that are gone are an error."""
        name = deployment_name(release.tenant_id, release.version)
        model_path, adapter_path = release.legacy_files or ("", None)
        missing = [p for p in (model_path, adapter_path) if p is not None and not Path(p).is_file()]
        if missing:
            raise ServingError(f"{name} was recorded with local files that are gone ({', '.join(missing)}): "
                               "release a new version")
        # only what the pipeline wrote for this tenant: its adapter under its own tenant folder,
        # a base outside every tenant's (a row naming other files is not published for it)
        tenant_parts = ("tenants", release.tenant_id, "gguf")
        adapter_parts = Path(adapter_path).resolve().parts if adapter_path else ()
        if adapter_path and not any(adapter_parts[i:i + 3] == tenant_parts for i in range(len(adapter_parts))):
            raise ServingError(f"{name} names an adapter outside its tenant's trainings: {adapter_path}")
        if "tenants" in Path(model_path).resolve().parts:
            raise ServingError(f"{name} names a base model inside a tenant's folder: {model_path}")
        try:
            store = self.model_store()
            model = publish_base(store, Path(model_path))
            adapter = publish_adapter(store, release.tenant_id, Path(adapter_path)) if adapter_path else None
            return self.store.record_files(release.tenant_id, release.version, model, adapter, release.run_key)
        except Exception as err:  # the store or the files: this release's problem, reported as such
            raise ServingError(f"{name}: publishing its files failed: {type(err).__name__}: {err}") from err

    def inject_delay(self, tenant: str, version: str, delay_s: float) -> None:
        """Canary drill: every request to `<tenant>-<version>` waits `delay_s` first (recorded in
        the release store; the router adds it to each request it sends that version)."""
        try:
            self.store.set_injected_delay(tenant, version, delay_s)
        except ReleaseConflict as err:
            raise ServingError(str(err)) from None
        self.reload_router(tenant)

    # -- the router's admin API ---------------------------------------------------
    def _admin(self, method: str, path: str) -> dict:
        try:
            reply = requests.request(method, f"{self.url}{path}", timeout=10,
                                     headers={"Authorization": f"Bearer {self.admin_token}"})
        except requests.RequestException as err:
            raise ServingError(f"the router at {self.url} is not reachable: {err}") from None
        if reply.status_code != 200:
            raise ServingError(f"router {method} {path}: HTTP {reply.status_code} {reply.text[:200]}")
        return reply.json()

    def reload_router(self, tenant: str) -> dict:
        return self._reload(f"/admin/v1/tenants/{validate_tenant_id(tenant)}/reload")

    def _reload(self, path: str) -> dict:
        """Tell the router: the replica that gets the call re-reads the store at once, and this
        returns once every router replica has read it since (each does every 0.5 s), so no
        replica routes by what was just changed. A replica that has not within
        ROUTERS_SETTLE_S is an error (the change is recorded: reconcile retries)."""
        changed = time.time()
        reply = self._admin("POST", path)
        self.routers_read_since(changed)
        return reply

    def routers_read_since(self, changed: float) -> float:
        """Wait until `router_replicas` router replicas report, every one of them having read the
        store after ``changed`` (epoch seconds; a replica that starts later reads it when it
        starts); returns the seconds since ``changed``. One that has stopped reporting (its
        report comes before its read) counts as missing, not as caught up. The replicas' and
        this process's clocks are compared: NTP keeps a cluster's within milliseconds, under the
        0.5 s between a replica's reads."""
        deadline = time.monotonic() + ROUTERS_SETTLE_S
        while True:
            routers = self.routers()
            behind = sorted(r for r, seen in routers.items() if seen["routes_read_at"] < changed)
            if len(routers) >= self.router_replicas and not behind:
                return time.time() - changed
            if time.monotonic() > deadline:
                raise ServingError(f"router replicas have not re-read the release store in {ROUTERS_SETTLE_S:.0f} s "
                                   f"({len(routers)} of {self.router_replicas} reporting; behind: "
                                   f"{', '.join(behind) or 'none'})")
            time.sleep(0.05)

    def window(self, tenant: str) -> dict:
        return self._admin("GET", f"/admin/v1/tenants/{validate_tenant_id(tenant)}/window")

    def routers(self) -> dict[str, dict]:
        """The router replicas alive: when each last read the store, how many requests it reported."""
        return self._admin("GET", "/admin/v1/routers")["routers"]

    # -- releases ------------------------------------------------------------------
    def release_newest(self, tenant: str, candidate) -> dict:
        """`candidate` (a `Candidate`: local GGUF files) becomes the canary with `canary_weight`
        of the tenant's traffic, unless it was
        released before (live, rolled back or retired: a rolled-back model is never redeployed
        by automation). A live canary of an older version is superseded."""
        self.ensure_router()
        if (unchanged := self._released_before(tenant, candidate.version)) is not None:
            return unchanged
        started = time.perf_counter()
        model, adapter = self._publish(tenant, candidate.base_path, candidate.adapter_path)
        return self._release_new(tenant, candidate.version, model, adapter, candidate.run_key,
                                 {"publish_s": round(time.perf_counter() - started, 2)})

    def release_files(self, tenant: str, version: str, model: ModelRef, adapter: ModelRef,
                      run_key: str | None) -> dict:
        """`release_newest` for files already in the object store (the control API's: a tenant's
        release step uploads them with its own credentials, the platform admits them)."""
        self.ensure_router()
        if (unchanged := self._released_before(tenant, version)) is not None:
            return unchanged
        return self._release_new(tenant, version, model, adapter, run_key, {})

    def _released_before(self, tenant: str, version: str) -> dict | None:
        existing = self.store.release(tenant, version)
        return None if existing is None else {"status": f"unchanged ({existing.status})", "version": version}

    def _release_new(self, tenant: str, version: str, model: ModelRef, adapter: ModelRef, run_key: str | None,
                     steps: dict) -> dict:
        weight = self.canary_weight
        superseded = self.store.live(tenant).get("canary")
        if superseded is not None:
            self.store.end(tenant, superseded.version, "retired", f"superseded by {version}", expect="canary")
            self.reload_router(tenant)
        steps.update(self._release_refs(tenant, version, model, adapter, model, weight, run_key))
        route = self.store.route(tenant)
        return {"status": "canary", "version": version, "canary_weight": weight, "production": route.production,
                "superseded": superseded.version if superseded else "none", **steps}

    def release_canary(self, tenant: str, version: str, model_path: str, adapter_path: str | None,
                       base_path: str, weight: float, run_key: str | None = None) -> dict:
        """Serve `version` as the tenant's canary with `weight` of its traffic. A tenant's first
        release is compared against the base model, which becomes its production (`base`).
        ``model_path`` and ``base_path`` are shared base GGUFs, ``adapter_path`` the tenant's own:
        they are published to the object store first, and replicas fetch them from there."""
        validate_tenant_id(tenant)
        self.ensure_router()
        started = time.perf_counter()
        model, adapter = self._publish(tenant, model_path, adapter_path)
        base = model  # (another base is published only where it becomes production: a first release)
        if base_path != model_path and "production" not in self.store.live(tenant):
            base = publish_base(self.model_store(), Path(base_path))
        steps = {"publish_s": round(time.perf_counter() - started, 2)}
        return {**steps, **self._release_refs(tenant, version, model, adapter, base, weight, run_key)}

    def _source(self) -> ModelSource:
        if self.model_source is None:
            raise ServingError("no model store is configured for serving (ServingResource.object_store)")
        return self.model_source

    def model_store(self):
        """The object store released model files are published to and fetched from."""
        return self._source().store()

    def _publish(self, tenant: str, model_path: str, adapter_path: str | None) -> tuple[ModelRef, ModelRef | None]:
        store = self.model_store()
        model = publish_base(store, Path(model_path))
        return model, publish_adapter(store, tenant, Path(adapter_path)) if adapter_path else None

    def _release_refs(self, tenant: str, version: str, model: ModelRef, adapter: ModelRef | None,
                      base: ModelRef, weight: float, run_key: str | None = None) -> dict:
        steps = {"model_key": model.key, "model_sha256": model.sha256, "adapter_key": adapter.key if adapter else "none",
                 "adapter_sha256": adapter.sha256 if adapter else "none"}
        try:
            if "production" not in self.store.live(tenant):
                started = time.perf_counter()
                self._deploy_and_record(tenant, "base", "production", base, None, 0.0)
                steps["base_production_s"] = round(time.perf_counter() - started, 2)
            started = time.perf_counter()
            self._deploy_and_record(tenant, version, "canary", model, adapter, weight, run_key)
            steps["canary_deploy_s"] = round(time.perf_counter() - started, 2)
        finally:  # whatever was recorded is routed, also when the canary's deploy failed
            self.reload_router(tenant)
        return steps

    def _deploy_and_record(self, tenant: str, version: str, status: str, model: ModelRef,
                           adapter: ModelRef | None, weight: float, run_key: str | None = None) -> None:
        if self.store.release(tenant, version) is not None:
            raise ReleaseConflict(f"version {version} of tenant {tenant!r} was released before")
        if status in self.store.live(tenant):
            raise ReleaseConflict(f"tenant {tenant!r} already has a {status} release")
        probe = Release(tenant, version, status, model, adapter, weight, None, None, None, {}, run_key)
        # (a release that is not recorded after all leaves an adapter loaded that no route
        # reaches: the pool's replicas drop it at their next check of the store)
        self._deploy(probe)
        self.store.start(tenant, version, status, model, adapter, weight, run_key)

    def rollback(self, tenant: str, version: str, reason: str, numbers: dict) -> dict:
        """Record the rollback and take the traffic off; the pool's replicas drop the adapter at
        their next check of the store (`LIVE_CHECK_S`) and never load it again. Once recorded, a
        failure of the router's reload is left to the next `reconcile` (and said in the result)."""
        started = time.perf_counter()
        self.store.end(tenant, version, "rolled_back", reason, numbers, expect="canary")
        try:
            self.reload_router(tenant)
        except Exception as err:  # the router's: reconcile finishes the job
            return {"unfinished": f"{type(err).__name__}: {err}; the next reconcile finishes it"}
        traffic_off = round(time.perf_counter() - started, 3)  # every router replica routes without it
        # (removed: out of every route; nothing else is left to remove on Serve's side)
        return {"traffic_off_s": traffic_off, "removed_s": traffic_off, "router_replicas": self.router_replicas}

    def promote(self, tenant: str, version: str, reason: str, numbers: dict) -> str | None:
        """The canary takes all traffic; the old production version is retired (its adapter, if
        it has one, is dropped by the pool's replicas)."""
        retired = self.store.promote(tenant, version, reason, numbers)
        self.reload_router(tenant)
        return retired.version if retired else None

    def promote_ready(self, tenant: str) -> dict:
        """`production_release`: the live canary is judged again by `policy` (a manual run cannot
        skip it) and promoted if it says so; `ReleaseRefused` otherwise."""
        outcome = self.judge(tenant, self.policy)
        if outcome is None:
            raise ReleaseRefused(f"tenant {tenant} has no live canary to promote")
        if outcome.verdict.action != "promote":
            raise ReleaseRefused(f"the canary {tenant}-{outcome.version} is not ready for production: "
                                 f"{outcome.verdict.reason}")
        numbers = outcome.verdict.numbers()
        retired = self.promote(tenant, outcome.version, outcome.verdict.reason, numbers)
        return {"production": outcome.version, "retired": retired or "none", "reason": outcome.verdict.reason,
                **{k: v for k, v in numbers.items() if v is not None}}

    def remove_tenant(self, tenant: str, drop_timeout_s: float = 30.0) -> list[str]:
        """Tenant removal: its keys are revoked, its live releases end and its routes go, the pools'
        replicas drop its adapters, then its release history goes. Returns the versions that were live.

        The history goes last: a replica drops the adapter of an ended release at its next check
        of the store (`LIVE_CHECK_S`), but one with no record only after `LOAD_GRACE_S` (it may be
        a release being recorded), so forgetting first kept a removed tenant's weights in memory
        about 15 s. The wait asks one replica of each running pool (as `adapters_loaded` does);
        if they still hold adapters after ``drop_timeout_s``, or cannot be asked, the history goes
        anyway and that grace drops them."""
        validate_tenant_id(tenant)
        for key_id, _ in self.store.keys(tenant):  # its clients are refused from now on
            self.store.revoke_key(tenant, key_id)
        ended = []
        for release in self.store.live(tenant).values():
            self.store.end(tenant, release.version, "retired", "tenant removed")
            ended.append(release.version)
        if self.store.releases(tenant):  # only then can Serve or the router hold something of it
            self.ensure_router()  # (reconcile: every route re-read)
            self._wait_adapters_dropped(tenant, drop_timeout_s)
        self.store.forget_tenant(tenant)
        return ended

    def _wait_adapters_dropped(self, tenant: str, timeout_s: float) -> bool:
        from datacreek_assets.serving.pool_server import LOAD_GRACE_S

        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                loaded = self.adapters_loaded(timeout_s=max(1.0, min(left, 10.0)))
            except Exception as err:  # a pool not answering: the removal goes on without it
                LOG.warning("could not ask the base pools whether they dropped the adapters of %s (%s); "
                            "they drop them within %.0f s of its history going", tenant, err, LOAD_GRACE_S)
                return False
            if not any(held == tenant for held, _ in loaded):
                return True
            time.sleep(0.5)
        LOG.warning("the base pools still held adapters of %s after %.0f s; they drop them within "
                    "%.0f s of its history going", tenant, timeout_s, LOAD_GRACE_S)
        return False

    # -- canary health -----------------------------------------------------------------
    def judge(self, tenant: str, policy: CanaryPolicy) -> CanaryOutcome | None:
        canary = self.store.live(tenant).get("canary")
        if canary is None:
            return None
        window = self.window(tenant)

        def stats(side: str) -> WindowStats:
            data = window.get(side) or {}
            return WindowStats(data.get("count", 0), data.get("p50_s"), data.get("p99_s"), data.get("errors", 0))

        age = time.time() - canary.started_at.timestamp()
        total = (window.get("canary") or {}).get("total") or 0
        return CanaryOutcome(tenant, canary.version,
                             judge_canary(stats("canary"), stats("production"), total, age, policy))

    def check_canaries(self, policy: CanaryPolicy) -> list[CanaryOutcome]:
        """One pass of the canary health loop: bring Serve and the router in line with the store,
        then judge each live canary and roll back the unhealthy ones at once (promotion is left
        to the caller: a `production_release` run). One tenant's failure is reported in its
        outcome and does not stop the others'."""
        self.ensure_router()
        outcomes = []
        for tenant in self.store.tenants_with_canary():
            try:
                outcome = self.judge(tenant, policy)
                if outcome is None:
                    continue
                if outcome.verdict.action == "rollback":
                    outcome.timings_s = self.rollback(tenant, outcome.version, outcome.verdict.reason,
                                                      outcome.verdict.numbers())
                    outcome.acted = True
            except (ServingError, ReleaseConflict) as err:
                live = self.store.live(tenant).get("canary")
                outcome = CanaryOutcome(tenant, live.version if live else "?", None, error=str(err))
            outcomes.append(outcome)
        return outcomes

    def close(self) -> None:
        self.store.close()
