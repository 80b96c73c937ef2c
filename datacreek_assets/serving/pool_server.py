"""The base pools: one Ray Serve application per base model (`pool-<digest>`) whose
`AdapterServer` replicas serve every tenant's versions of that base, each tenant's LoRA
adapter set per request (`AdapterPool`). Only the router calls them."""

import asyncio
import time

from ray import serve

from datacreek_assets.serving.adapter_pool import DEFAULT_CAPACITY

POOL_PREFIX = "pool-"
LIVE_CHECK_S = 5.0  # how often a base pool's replicas drop the adapters of versions no longer live
LOAD_GRACE_S = 10.0  # an adapter with no release record stays this long: its release may be being recorded


def pool_name(base_sha256: str) -> str:
    """The Serve application of the base pool for a base model's digest: `pool-<16 hex>`."""
    return f"{POOL_PREFIX}{base_sha256[:16]}"


def adapter_model_id(tenant: str, version: str, adapter) -> str:
    """Serve's multiplexed model id of a release's adapter: all a replica needs to fetch it (the
    key follows from tenant and digest) and all the router needs to pick a replica that has it."""
    return f"{tenant}/{version}/{adapter.sha256}/{adapter.size}"


def parse_adapter_model_id(model_id: str):
    """(tenant, version, ModelRef of the tenant's adapter) of a multiplexed model id."""
    from datacreek_assets.serving.model_files import ModelRef, adapter_key
    from datacreek_assets.serving.routing import validate_version
    from datacreek_assets.tenancy import validate_tenant_id

    tenant, version, sha256, size = model_id.split("/")
    return (validate_tenant_id(tenant), validate_version(version),
            ModelRef(adapter_key(tenant, sha256), sha256, int(size)))


class LoadedAdapter:
    """What Serve's multiplexer holds for an adapter: when it drops it from its least recently
    used set, the adapter is freed from the pool."""

    def __init__(self, pool, adapter):
        self.pool, self.file, self.freed = pool, adapter, False

    def __del__(self):
        # Serve calls this in an executor when it unloads the adapter, and the interpreter again
        # when the object goes: only the first may wait for the pool's lock
        if self.freed:
            return
        self.freed = True
        try:
            self.pool.evict(self.file)
        except Exception:  # the replica is shutting down: its context goes with it
            pass


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=8, health_check_period_s=2.0,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 2})
class AdapterServer:
    """Every tenant's versions of one base model: the base GGUF loaded once per replica, each
    tenant's adapter loaded on demand (Serve's model multiplexing sends a request to a replica
    that has its adapter when one has it) and set for its request alone (`AdapterPool`). Files
    are fetched from the object store into the node's cache and checked against the release's
    SHA-256 first: a mismatch fails that request, or the replica for the base, and nothing
    unchecked is ever served. Replicas drop the adapters of versions the release store no longer
    lists as live (a rollback): the router stops routing to them first."""

    def __init__(self, model: dict, source: dict, store_url: str, n_ctx: int = 2048, threads: int = 1):
        from datacreek_assets.serving.adapter_pool import AdapterPool
        from datacreek_assets.serving.model_files import ModelRef, ModelSource
        from datacreek_assets.serving.release_store import ServingStore, replica_store_url

        self.cache = ModelSource(**source).cache()
        self.base_path = self.cache.fetch_base(ModelRef.from_dict(model))
        self.pool = AdapterPool(self.base_path, n_ctx=n_ctx, threads=threads)
        self.store = ServingStore(replica_store_url(store_url))
        self.touched = self.swept = self.live_checked = time.monotonic()
        # warm up (first evaluation allocates buffers): the first client must not pay for it,
        # nor the canary's latency window count it
        self.pool.warm_up()

    @serve.multiplexed(max_num_models_per_replica=DEFAULT_CAPACITY)
    async def adapter(self, model_id: str) -> LoadedAdapter:
        return LoadedAdapter(self.pool, await asyncio.to_thread(self._load, model_id))

    def _load(self, model_id: str):
        """The adapter of a multiplexed model id, fetched (the tenant's own key, its digest
        checked) and loaded; refused for a version that was rolled back or retired, whatever a
        stale router asks (no release yet: one being deployed, loaded before it is recorded)."""
        from datacreek_assets.serving.adapter_pool import AdapterError, AdapterFile
        from datacreek_assets.serving.release_store import LIVE

        tenant, version, ref = parse_adapter_model_id(model_id)
        release = self.store.release(tenant, version)
        if release is not None and release.status not in LIVE:
            raise AdapterError(f"{tenant}-{version} is {release.status}: its adapter is not served")
        adapter = AdapterFile(tenant, version, ref.sha256, self.cache.fetch(ref, tenant))
        self.pool.load(adapter)
        return adapter

    async def check_health(self) -> None:
        """Serve's periodic health check. It also drops the adapters of ended releases, keeps this
        replica's files marked in use in the node's cache and sweeps the cache now and then
        (off the event loop: a completion holding the pool must not hold up requests' routing)."""
        await asyncio.to_thread(self._housekeeping)

    def _housekeeping(self) -> None:
        from datacreek_assets.serving.model_files import SWEEP_EVERY_S, TOUCH_EVERY_S

        now = time.monotonic()
        if now - self.live_checked > LIVE_CHECK_S:
            self.live_checked = now
            try:
                live = {(r.tenant_id, r.version) for r in self.store.live_releases()}
            except Exception:  # the store, not this replica: its adapters stay until it answers
                live = None
            if live is not None:
                self._drop_ended(live)
        if now - self.touched > TOUCH_EVERY_S:
            self.touched = now
            self.cache.touch([self.base_path, *(a.path for a in self.pool.loaded_adapters())])
        if now - self.swept > SWEEP_EVERY_S:
            self.swept = now
            try:
                self.cache.sweep()
            except OSError:  # the cache's disk, not this replica: the replica stays healthy
                pass

    def _drop_ended(self, live: set[tuple[str, str]]) -> None:
        """Free the adapters of versions no longer live: a version with a record that says so
        (rolled back, retired) at once, one with no record (a removed tenant's, or one being
        released right now) after LOAD_GRACE_S."""
        from datacreek_assets.serving.release_store import LIVE

        pending = {(a.tenant, a.version) for a in self.pool.loaded_adapters()} - live
        try:
            ended = {pair for pair in pending
                     if (release := self.store.release(*pair)) is not None and release.status not in LIVE}
        except Exception:  # the store: the grace period alone decides
            ended = set()
        if pending:
            self.pool.evict_ended(live, LOAD_GRACE_S, ended)

    def loaded(self) -> list[tuple[str, str]]:
        """(tenant, version) of the adapters this replica holds."""
        return [(a.tenant, a.version) for a in self.pool.loaded_adapters()]

    async def __call__(self, request: dict) -> dict:
        """``request``: the chat completion plus the tenant and version it is for (the router's);
        the adapter comes from the request's multiplexed model id, and must be that version's."""
        from ray.serve import get_multiplexed_model_id

        tenant, version = request["tenant"], request["version"]
        adapter = None
        model_id = get_multiplexed_model_id()
        if model_id:
            adapter = (await self.adapter(model_id)).file
            if (adapter.tenant, adapter.version) != (tenant, version):
                raise ValueError(f"the adapter of {adapter.name} was asked for {tenant}-{version}")
            if not self.pool.is_loaded(adapter):  # dropped (its release ended) since Serve cached it
                adapter = await asyncio.to_thread(self._load, model_id)
        return await asyncio.to_thread(self._complete, tenant, version, request, adapter)

    def _complete(self, tenant: str, version: str, request: dict, adapter) -> dict:
        from datacreek_assets.serving.adapter_pool import PromptTooLong

        try:
            # load=False: an adapter dropped between the check above and now is refused, not reloaded
            reply = self.pool.complete(tenant, request, adapter, load=False)
        except PromptTooLong as err:
            return {"error": {"type": "prompt_too_long", "message": str(err)}}
        reply["model"] = f"{tenant}-{version}"
        return reply
