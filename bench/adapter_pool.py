"""Many tenants on one base model (`AdapterPool`) vs a model per (tenant, version), with the model
the demo serves: SmolLM2-135M (f16 GGUF, 258 MiB) and rank-8 LoRA adapters (~9 MiB each).

Candidate: one pool holding TENANTS x 2 adapters (each tenant's production and canary); each
request comes from a random tenant and goes to its canary 5 % of the time, so nearly every
request switches adapters. Baseline: today's replica, a context built
with one adapter (`Llama(lora_path=...)`), answering the same questions. Both answer one
question at a time with one thread, as a replica does. The unit is chat completions
(max_tokens 8). The notes give p50/p99 of each, the cost of a switch (p50 of a switching
request minus p50 of the pool answering for the same adapter again), the time to load a cached
adapter file, and the resident memory (PSS, measured in fresh processes) of the pool with all
adapters loaded against TENANTS x 2 single-adapter contexts (one is measured; the total is that
times TENANTS x 2, as each replica is its own process).

The adapters are random (B ~ N(0, 0.02)): two distinct files, loaded once per (tenant,
version) as separate adapters, as the pool would hold distinct tenants' files.
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import cycle
from pathlib import Path

from bench.harness import Comparison

TENANTS = 50
QUESTIONS = ["Which port does the billing service listen on?", "Who owns the ingestion pipeline?",
             "What does the json module provide?", "When was the retention policy last changed?",
             "How many replicas does the router run?"]
_state: dict = {}

_MEASURE = """
import json, sys
from pathlib import Path
def pss_mib():
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
args = json.loads(sys.argv[1])
request = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8, "temperature": 0.0}
if args["kind"] == "dedicated":
    from llama_cpp import Llama
    llm = Llama(model_path=args["base"], lora_path=args["adapters"][0], n_ctx=2048, n_threads=1, verbose=False)
    llm.create_chat_completion(**request)
else:
    from datacreek_assets.serving.adapter_pool import AdapterFile, AdapterPool
    pool = AdapterPool(Path(args["base"]), capacity=len(args["adapters"]) * args["copies"], n_ctx=2048)
    for i in range(args["copies"]):
        for j, path in enumerate(args["adapters"]):
            adapter = AdapterFile(f"t{i}", f"v{j + 1}", str(j), Path(path))
            pool.complete(adapter.tenant, request, adapter)
print(json.dumps({"pss_mib": pss_mib()}))
"""


def _pss_mib(kind: str, base: Path, adapters: list[Path], copies: int) -> float:
    args = {"kind": kind, "base": str(base), "adapters": [str(p) for p in adapters], "copies": copies}
    out = subprocess.run([sys.executable, "-c", _MEASURE, json.dumps(args)], capture_output=True, text=True,
                         check=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                                          "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    return json.loads(out.stdout.strip().splitlines()[-1])["pss_mib"]


def comparisons(quick: bool = False) -> list[Comparison]:
    from llama_cpp import Llama

    from datacreek_assets.finetune.base_model import SMOLLM2
    from datacreek_assets.finetune.fixtures import random_adapter_release
    from datacreek_assets.serving.adapter_pool import AdapterFile, AdapterPool
    from datacreek_assets.settings import LocalSettings

    work = Path(tempfile.mkdtemp(prefix="bench-adapter-pool-"))
    _state["work"] = work
    base, files = random_adapter_release(LocalSettings.from_env().download_cache / "models", work / "gguf", adapters=2,
                                         base_name=SMOLLM2)
    # (tenant i, version v1/v2): production and canary of each tenant
    adapters = [AdapterFile(f"tenant-{i}", f"v{j + 1}", str(j), path)
                for i in range(TENANTS) for j, path in enumerate(files)]
    pool = AdapterPool(base, capacity=len(adapters), n_ctx=2048)
    started = time.perf_counter()
    for adapter in adapters:
        pool.load(adapter)
    load_ms = (time.perf_counter() - started) * 1000 / len(adapters)
    dedicated = Llama(model_path=str(base), lora_path=str(files[0]), n_ctx=2048, n_threads=1, n_threads_batch=1,
                      verbose=False, seed=0)
    timings: dict[str, list[float]] = {"pool": [], "switched": [], "dedicated": [], "same": []}
    count = 20 if quick else 60
    rng = random.Random(0)

    def next_adapter() -> AdapterFile:
        tenant = rng.randrange(TENANTS)
        return adapters[2 * tenant + (rng.random() < 0.05)]
    questions = cycle(QUESTIONS)

    def request() -> dict:
        return {"messages": [{"role": "user", "content": next(questions)}], "max_tokens": 8, "temperature": 0.0}

    def through_pool() -> int:
        for _ in range(count):
            adapter = next_adapter()
            swaps = pool.swaps
            started = time.perf_counter()
            pool.complete(adapter.tenant, request(), adapter)
            timings["pool"].append(time.perf_counter() - started)
            if pool.swaps > swaps:
                timings["switched"].append(timings["pool"][-1])
        return count

    def through_dedicated() -> int:
        for _ in range(count):
            started = time.perf_counter()
            dedicated.create_chat_completion(**request(), seed=0)
            timings["dedicated"].append(time.perf_counter() - started)
        return count

    def notes() -> str:
        from datacreek_assets.serving.routing import percentile

        def p(kind: str, q: float) -> float:
            return percentile(timings[kind], q) * 1000

        adapter = adapters[0]
        for _ in range(count):  # the same adapter again and again: no switch
            started = time.perf_counter()
            pool.complete(adapter.tenant, request(), adapter)
            timings["same"].append(time.perf_counter() - started)
        one = _pss_mib("dedicated", base, files, 1)
        shared = _pss_mib("pool", base, files, TENANTS)
        versions = len(adapters)
        return (f"{TENANTS} tenants x 2 versions: shared p50 {p('pool', 50):.1f} / p99 {p('pool', 99):.1f} ms "
                f"({len(timings['switched'])} of {len(timings['pool'])} requests switched adapters, "
                f"{pool.prefix_hits} switches got the adapter's kept prompt prefix back), "
                f"dedicated p50 {p('dedicated', 50):.1f} / p99 {p('dedicated', 99):.1f} ms "
                f"(p99 ratio {p('pool', 99) / p('dedicated', 99):.2f}); a switch costs "
                f"{(statistics.median(timings['switched']) - statistics.median(timings['same'])) * 1000:.1f} ms "
                f"(p50 of a switching request minus p50 of the same adapter again, new question); "
                f"loading a cached adapter file {load_ms:.1f} ms; memory (PSS): pool with {versions} adapters "
                f"{shared:.0f} MiB vs one replica {one:.0f} MiB x {versions} = {one * versions:.0f} MiB "
                f"({one * versions / shared:.1f}x less)")

    return [Comparison(f"chat completions, {TENANTS} tenants' adapters on one base vs a context per version",
                       through_pool, through_dedicated, unit="completions", repeats=1 if quick else 3, warmup=1,
                       notes=notes)]


def teardown() -> None:
    shutil.rmtree(_state.pop("work", ""), ignore_errors=True)
