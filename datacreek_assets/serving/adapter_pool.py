"""Many tenants' LoRA adapters on one base model in memory.

A replica per (tenant, version) holds its own copy of the base weights: at a thousand tenants
with a canary each that is thousands of copies of the same file. An `AdapterPool` loads the
base once (memory-mapped, so the replicas of one node share its pages too) and keeps a bounded,
least-recently-used set of adapters loaded against it; each completion sets its own adapter on
the one llama.cpp context (`llama_set_adapters_lora`) before it runs.

Isolation: an adapter is loaded under its (tenant, version, digest) and a completion names the
tenant it answers for; one naming another tenant's adapter is refused. The context's cached
prompt is dropped whenever the adapter or the tenant changes: its keys and values were computed
with another adapter's weights, and even on the base alone a tenant must not find another's
prompt there (a prefix that matches answers faster). What is kept instead, per adapter, is the
start of its own last prompt (`prefix_tokens`, the chat template's opening that its requests
share), as the keys and values its own weights gave (llama.cpp's sequence state, ~23 KiB a
token for SmolLM2-135M): set again, the adapter gets them back and evaluates only the rest,
so a switch costs about what a request for the same adapter does. An adapter is freed only under the lock
that completions hold, after it is taken off the context: no completion ever runs with an
adapter that is not its own or is gone.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from datacreek_assets.retrieval.extractive import logits_processor
from datacreek_assets.serving.routing import validate_version
from datacreek_assets.tenancy import validate_tenant_id

DEFAULT_CAPACITY = 32  # adapters per replica (a rank-8 SmolLM2 adapter holds ~9 MiB)
PREFIX_TOKENS = 64  # of an adapter's last prompt, kept while it is loaded (~1.5 MiB for SmolLM2-135M)


class AdapterError(RuntimeError):
    """An adapter cannot be loaded, or a completion names an adapter it may not use."""


class PromptTooLong(ValueError):
    """The prompt does not fit the context window."""


@dataclass(frozen=True)
class AdapterFile:
    """One tenant's adapter for one of its model versions: a GGUF file already fetched and
    checked against ``sha256`` (`ModelCache.fetch_all`)."""

    tenant: str
    version: str
    sha256: str
    path: Path

    def __post_init__(self) -> None:
        validate_tenant_id(self.tenant)
        validate_version(self.version)

    @property
    def name(self) -> str:
        return f"{self.tenant}-{self.version}"


class AdapterPool:
    """One base model, one context, and up to ``capacity`` adapters loaded against it."""

    def __init__(self, model_path: Path, capacity: int = DEFAULT_CAPACITY, n_ctx: int = 2048, threads: int = 1,
                 prefix_tokens: int = PREFIX_TOKENS):
        from llama_cpp import Llama

        if capacity < 1:
            raise ValueError(f"an adapter pool holds at least one adapter, not {capacity}")
        self.capacity = capacity
        # mmap: the base's pages come from the page cache, shared by every process that maps it
        self.llm = Llama(model_path=str(model_path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                         use_mmap=True, verbose=False, seed=0)
        self.lock = threading.Lock()  # one context: one completion (or load, or eviction) at a time
        self.loaded: OrderedDict[AdapterFile, int] = OrderedDict()  # adapter -> llama.cpp handle, LRU first
        self.loaded_at: dict[AdapterFile, float] = {}
        self.active: AdapterFile | None = None  # the adapter set on the context (None: the base alone)
        self.cached_for: str | None = None  # the tenant whose prompt the context holds
        self.prefix_tokens = prefix_tokens
        self.prefixes: dict[AdapterFile, tuple[object, bytes]] = {}  # adapter -> (token ids, its sequence state)
        self.loads = self.evictions = self.swaps = self.prefix_hits = 0

    # -- adapters -----------------------------------------------------------------------
    def load(self, adapter: AdapterFile) -> None:
        """Load ``adapter`` now (a completion would load it anyway; this takes the cost up front)."""
        with self.lock:
            self._ensure_loaded(adapter)

    def evict(self, adapter: AdapterFile) -> bool:
        """Free ``adapter`` (a rolled-back or retired version); False if it was not loaded."""
        with self.lock:
            return self._free(adapter)

    def evict_ended(self, live: set[tuple[str, str]], grace_s: float = 0.0,
                    ended: set[tuple[str, str]] = frozenset()) -> list[AdapterFile]:
        """Free every adapter whose (tenant, version) is not in ``live``: at once if it is in
        ``ended``, else once it was loaded ``grace_s`` ago (a release is loaded before it is
        recorded, and a version with no record may be that); the freed ones."""
        with self.lock:
            now = time.monotonic()
            gone = [adapter for adapter in self.loaded if (adapter.tenant, adapter.version) not in live
                    and ((adapter.tenant, adapter.version) in ended or now - self.loaded_at[adapter] >= grace_s)]
            for adapter in gone:
                self._free(adapter)
            return gone

    def loaded_adapters(self) -> list[AdapterFile]:
        """Least recently used first."""
        with self.lock:
            return list(self.loaded)

    def _ensure_loaded(self, adapter: AdapterFile) -> int:
        import llama_cpp

        handle = self.loaded.get(adapter)
        if handle is not None:
            self.loaded.move_to_end(adapter)
            return handle
        while len(self.loaded) >= self.capacity:
            self._free(next(iter(self.loaded)))
        if not adapter.path.is_file():
            raise AdapterError(f"the adapter of {adapter.name} is not on this node: {adapter.path}")
        handle = llama_cpp.llama_adapter_lora_init(self.llm._model.model, str(adapter.path).encode())
        if not handle:
            raise AdapterError(f"llama.cpp could not load the adapter of {adapter.name} (not a LoRA adapter "
                               "of this base model?)")
        self.loaded[adapter] = handle
        self.loaded_at[adapter] = time.monotonic()
        self.loads += 1
        return handle

    def _free(self, adapter: AdapterFile) -> bool:
        import llama_cpp

        handle = self.loaded.pop(adapter, None)
        if handle is None:
            return False
        if self.active == adapter:  # off the context before it is freed
            self._set_on_context(None, None)
        self.loaded_at.pop(adapter, None)
        self.prefixes.pop(adapter, None)
        llama_cpp.llama_adapter_lora_free(handle)
        self.evictions += 1
        return True

    def _set_on_context(self, adapter: AdapterFile | None, handle: int | None) -> None:
        import llama_cpp

        self._keep_prefix()  # before the weights change
        if adapter is None:
            status = llama_cpp.llama_set_adapters_lora(self.llm._ctx.ctx, None, 0, None)
        else:
            handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(handle)
            status = llama_cpp.llama_set_adapters_lora(self.llm._ctx.ctx, handles, 1, (ctypes.c_float * 1)(1.0))
        if status != 0:
            self.llm.reset()  # whatever the context holds now, no cached prompt is trusted
            raise AdapterError(f"llama.cpp refused to set the adapter of {adapter.name if adapter else 'the base'} "
                               f"(status {status})")
        self.llm.reset()  # the cached prompt's keys and values came from the previous adapter
        self.cached_for = None
        self.active = adapter
        self.swaps += 1
        if adapter is not None:
            self._restore_prefix(adapter)

    def _keep_prefix(self) -> None:
        """The first `prefix_tokens` of the active adapter's cached prompt, as its sequence state."""
        import llama_cpp

        adapter = self.active
        if adapter is None or self.cached_for != adapter.tenant or not self.prefix_tokens or not self.llm.n_tokens:
            return
        n = min(self.llm.n_tokens, self.prefix_tokens)
        self.llm._ctx.kv_cache_seq_rm(0, n, -1)
        self.llm.n_tokens = n
        ctx = self.llm._ctx.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(ctx, buffer, size, 0)
        if written:
            self.prefixes[adapter] = (self.llm.input_ids[:n].copy(), bytes(buffer)[:written])

    def _restore_prefix(self, adapter: AdapterFile) -> None:
        """The adapter's kept prefix back on the (reset) context, if it has one."""
        import llama_cpp

        kept = self.prefixes.get(adapter)
        if kept is None:
            return
        ids, state = kept
        self.llm._ctx.kv_cache_seq_rm(0, 0, -1)
        source = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if llama_cpp.llama_state_seq_set_data(self.llm._ctx.ctx, source, len(state), 0) != len(state):
            self.llm._ctx.kv_cache_seq_rm(0, 0, -1)  # not restored: the context starts empty
            del self.prefixes[adapter]
            return
        self.llm.input_ids[:len(ids)] = ids
        self.llm.n_tokens = len(ids)
        self.llm._requires_eval = True  # the logits are not this prompt's: the next token is evaluated
        self.cached_for = adapter.tenant
        self.prefix_hits += 1

    # -- completions -------------------------------------------------------------------
    def is_loaded(self, adapter: AdapterFile) -> bool:
        """A peek without the lock (a replica's event loop asks; a completion may hold the lock):
        `complete(load=False)` checks again under it."""
        return adapter in self.loaded

    def complete(self, tenant: str, request: dict, adapter: AdapterFile | None, load: bool = True) -> dict:
        """An OpenAI chat completion of ``request`` for ``tenant``, with its adapter (None: the
        base model alone, every tenant's `base` version). Loads the adapter if it is not loaded,
        unless ``load`` is False: then an adapter freed meanwhile (an ended release's) is refused."""
        validate_tenant_id(tenant)
        if adapter is not None and adapter.tenant != tenant:
            raise AdapterError(f"a completion for tenant {tenant!r} cannot use the adapter of another tenant")
        with self.lock:
            self._prepare(tenant, adapter, load)
            # a grounded greedy request: the answer is held to its passages (retrieval/extractive.py)
            span_of = request.get("span_of") if request["temperature"] == 0 else None
            processors = [logits_processor(self.llm, span_of)] if span_of else None
            try:
                return self.llm.create_chat_completion(
                    messages=request["messages"], max_tokens=request["max_tokens"],
                    temperature=request["temperature"], stop=request.get("stop"), seed=0,
                    logits_processor=processors)
            except ValueError as err:  # llama.cpp's "Requested tokens exceed context window"
                raise PromptTooLong(str(err)) from None

    def _prepare(self, tenant: str, adapter: AdapterFile | None, load: bool = True) -> None:
        """The context set for ``tenant`` with ``adapter``, holding no other tenant's prompt (under the lock)."""
        if adapter is not None and adapter not in self.loaded and not load:
            raise AdapterError(f"the adapter of {adapter.name} is not loaded here")
        if adapter != self.active:
            self._set_on_context(adapter, self._ensure_loaded(adapter) if adapter else None)
        elif adapter is not None:
            self.loaded.move_to_end(adapter)
        if self.cached_for != tenant:  # the base alone is shared: one tenant's prompt is not another's
            self.llm.reset()
        self.cached_for = tenant

    def warm_up(self) -> None:
        """One short completion with the base alone: the first evaluation allocates buffers."""
        with self.lock:
            if self.active is not None:
                self._set_on_context(None, None)
            self.llm.create_chat_completion(messages=[{"role": "user", "content": "hello"}], max_tokens=2,
                                            temperature=0.0, seed=0)
            self.llm.reset()
