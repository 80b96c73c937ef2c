"""Many tenants' adapters on one base model (real llama.cpp): every answer is the one its own
tenant's adapter gives, under concurrent requests, forced evictions and evictions racing them."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from datacreek_assets.finetune.fixtures import random_adapter_release
from datacreek_assets.serving.adapter_pool import AdapterError, AdapterFile, AdapterPool
from datacreek_assets.serving.model_files import file_sha256

pytestmark = pytest.mark.integration

TENANTS = [f"pool-{name}" for name in ("alpha", "beta", "gamma", "delta", "eps", "zeta")]
REQUEST = {"messages": [{"role": "user", "content": "Which port does the service listen on?"}],
           "max_tokens": 8, "temperature": 0.0}
# another question with the same chat-template prefix: a context switching back to an adapter
# reuses its own cached prefix, never one computed with another adapter
OTHER = {**REQUEST, "messages": [{"role": "user", "content": "Who owns the billing pipeline?"}]}


def answer(reply: dict) -> str:
    return reply["choices"][0]["message"]["content"]


@pytest.fixture(scope="module")
def tenant_models(settings, tmp_path_factory):
    """(base GGUF, {tenant: its adapter}, {tenant or None: the answer its own model gives}): each
    reference answer comes from a context that loads nothing but that one adapter."""
    from llama_cpp import Llama

    base, paths = random_adapter_release(settings.download_cache / "models", tmp_path_factory.mktemp("pool"),
                                         adapters=len(TENANTS), std=0.5)
    adapters = {tenant: AdapterFile(tenant, "v1", file_sha256(path), path) for tenant, path in zip(TENANTS, paths)}
    expected, other = {}, {}
    for tenant in [None, *TENANTS]:
        llm = Llama(model_path=str(base), lora_path=str(adapters[tenant].path) if tenant else None, n_ctx=512,
                    n_threads=1, verbose=False, seed=0)
        expected[tenant] = answer(llm.create_chat_completion(**REQUEST, seed=0))
        llm.reset()
        other[tenant] = answer(llm.create_chat_completion(**OTHER, seed=0))
        del llm
    # the checks below can only fail if the tenants' models answer differently
    assert len(set(expected.values())) == len(expected), expected
    assert len(set(other.values())) == len(other), other
    return base, adapters, {"expected": expected, "other": other}


def test_each_answer_is_its_own_tenants_under_concurrent_load_and_forced_evictions(tenant_models):
    base, adapters, answers = tenant_models
    pool = AdapterPool(base, capacity=2, n_ctx=512)  # six tenants, room for two: most requests evict one
    stop = threading.Event()

    def evict_at_random() -> int:  # an operator's rollback racing the completions
        rng, count = random.Random(7), 0
        while not stop.is_set():
            count += pool.evict(adapters[rng.choice(TENANTS)])
            stop.wait(0.003)
        return count

    def ask(i: int) -> tuple[str | None, str, str]:
        tenant = random.Random(i).choice([None, *TENANTS])
        question = "expected" if i % 3 else "other"
        # the base version: any tenant's request without an adapter
        reply = pool.complete(tenant or TENANTS[i % len(TENANTS)], REQUEST if i % 3 else OTHER,
                              adapters[tenant] if tenant else None)
        return tenant, question, answer(reply)

    with ThreadPoolExecutor(5) as workers:
        evictor = workers.submit(evict_at_random)
        try:
            replies = list(workers.map(ask, range(120)))
        finally:  # a failed completion must fail the test, not leave the evictor running
            stop.set()
        racing_evictions = evictor.result()
    wrong = [(tenant, got) for tenant, question, got in replies if got != answers[question][tenant]]
    assert not wrong, wrong
    assert {tenant for tenant, _, _ in replies} == {None, *TENANTS}
    assert pool.loads > len(TENANTS) and pool.evictions > racing_evictions > 0  # both kinds happened
    assert pool.prefix_hits > 0  # switching back to a loaded adapter gave it its own kept prefix
    assert len(pool.loaded_adapters()) <= 2


def test_a_tenant_cannot_use_another_tenants_adapter(tenant_models):
    base, adapters, answers = tenant_models
    expected = answers["expected"]
    pool = AdapterPool(base, capacity=4, n_ctx=512)
    alpha, beta = TENANTS[:2]
    assert answer(pool.complete(alpha, REQUEST, adapters[alpha])) == expected[alpha]
    with pytest.raises(AdapterError, match="another tenant"):
        pool.complete(beta, REQUEST, adapters[alpha])  # loaded and active: still not beta's
    with pytest.raises(ValueError):
        pool.complete("../alpha", REQUEST, None)
    # a file of one tenant named as another's is the other tenant's adapter only by name: the
    # fetch that put it on the node (`ModelCache.fetch_all`) checks the key per tenant; here the
    # pool keeps each (tenant, version, digest) apart, so beta's entry is not alpha's handle
    relabelled = AdapterFile(beta, "v1", adapters[alpha].sha256, adapters[alpha].path)
    pool.complete(beta, REQUEST, relabelled)
    assert set(pool.loaded_adapters()) == {adapters[alpha], relabelled}
    assert answer(pool.complete(beta, REQUEST, adapters[beta])) == expected[beta]


def test_the_base_context_keeps_no_tenants_prompt_for_another(tenant_models):
    """Every tenant's `base` version shares the base alone: the context's cached prompt (which
    would answer a matching prefix faster) is dropped when the tenant changes, kept when not."""
    base, adapters, answers = tenant_models
    pool = AdapterPool(base, capacity=2, n_ctx=512)
    alpha, beta = TENANTS[:2]
    assert answer(pool.complete(alpha, REQUEST, None)) == answers["expected"][None]
    with pool.lock:
        pool._prepare(alpha, None)
        assert pool.llm.n_tokens > 0  # alpha's own prompt stays for alpha
        pool._prepare(beta, None)
        assert pool.llm.n_tokens == 0  # and is gone before beta's completion
    assert answer(pool.complete(beta, OTHER, None)) == answers["other"][None]


def test_eviction_takes_the_adapter_off_and_a_bad_file_is_refused(tenant_models, tmp_path):
    base, adapters, answers = tenant_models
    expected = answers["expected"]
    pool = AdapterPool(base, capacity=3, n_ctx=512)
    alpha, beta, gamma = TENANTS[:3]
    for tenant in (alpha, beta):
        pool.load(adapters[tenant])
    assert answer(pool.complete(alpha, REQUEST, adapters[alpha])) == expected[alpha]
    # rolled back while active: freed, off the context; the base answers as the base again
    assert pool.evict(adapters[alpha]) and not pool.evict(adapters[alpha])
    assert pool.active is None
    assert answer(pool.complete(alpha, REQUEST, None)) == expected[None]
    # only the live versions stay, and one loaded within the grace period (not yet recorded)
    pool.load(adapters[gamma])
    assert pool.evict_ended({(gamma, "v1")}, grace_s=3600) == []
    assert pool.evict_ended({(gamma, "v1")}, grace_s=3600, ended={(beta, "v1")}) == [adapters[beta]]
    assert pool.evict_ended(set()) == [adapters[gamma]]
    pool.load(adapters[gamma])
    assert pool.loaded_adapters() == [adapters[gamma]]

    # an adapter freed meanwhile is refused where loading is left to a checked path
    assert pool.evict(adapters[gamma])
    with pytest.raises(AdapterError, match="not loaded"):
        pool.complete(gamma, REQUEST, adapters[gamma], load=False)

    garbage = tmp_path / "adapter.gguf"
    garbage.write_bytes(b"GGUF" + b"\0" * 64)
    for path, message in ((garbage, "could not load"), (tmp_path / "gone.gguf", "not on this node"),
                          (base, "could not load")):  # the base file is a model, not an adapter
        with pytest.raises(AdapterError, match=message):
            pool.complete(beta, REQUEST, AdapterFile(beta, "v2", "0" * 64, path))
    assert answer(pool.complete(gamma, REQUEST, adapters[gamma])) == expected[gamma]
    assert answer(pool.complete(beta, REQUEST, adapters[beta])) == expected[beta]


def test_an_adapter_set_again_gets_its_own_prompt_prefix_back(tenant_models):
    """Switching adapters keeps the start of the outgoing adapter's prompt (its own keys and
    values) and puts it back when that adapter is set again: the answer is still its model's."""
    base, adapters, answers = tenant_models
    pool = AdapterPool(base, capacity=3, n_ctx=512, prefix_tokens=16)
    alpha, beta = TENANTS[:2]
    assert answer(pool.complete(alpha, REQUEST, adapters[alpha])) == answers["expected"][alpha]
    assert answer(pool.complete(beta, REQUEST, adapters[beta])) == answers["expected"][beta]
    assert set(pool.prefixes) == {adapters[alpha]} and pool.prefix_hits == 0
    with pool.lock:
        pool._prepare(alpha, adapters[alpha])
        assert pool.prefix_hits == 1 and pool.llm.n_tokens == 16  # alpha's 16 tokens, back on the context
        assert set(pool.prefixes) == {adapters[alpha], adapters[beta]}  # beta's kept as alpha took it
    assert answer(pool.complete(alpha, OTHER, adapters[alpha])) == answers["other"][alpha]
    assert answer(pool.complete(beta, OTHER, adapters[beta])) == answers["other"][beta]
    assert pool.prefix_hits == 2
    pool.evict(adapters[alpha])  # an evicted adapter's prefix goes with it
    assert adapters[alpha] not in pool.prefixes
