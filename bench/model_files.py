"""Loading a released adapter's file on a replica: from the node's cache vs cold from the object store.

Candidate: `ModelCache.fetch` of an adapter already in the node's cache, by a cache object new to
the process (a replica that just started): it reads and hashes the file once to check its digest.
Baseline: the same fetch with an empty cache: download from the bucket (moto's S3 server, on this
machine), hash, rename into place. Both return the same checked file. The unit is fetches of a
9 MiB adapter (the size of a SmolLM2-135M rank-8 LoRA GGUF); the notes give the p50 of each in ms
and of a fetch repeated in the same process (the digest already checked: a stat and a touch).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.harness import Comparison

ADAPTER_BYTES = 9 << 20
_state: dict = {}


def comparisons(quick: bool = False) -> list[Comparison]:
    import logging
    import os

    import boto3
    from moto.server import ThreadedMotoServer

    from datacreek_assets.object_store import S3ObjectStore
    from datacreek_assets.serving.model_files import ModelCache, publish_adapter

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    work = Path(tempfile.mkdtemp(prefix="bench-model-files-"))
    _state.update(server=server, work=work)
    client = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1")
    client.create_bucket(Bucket="bench-models")
    store = S3ObjectStore("bench-models", client)
    adapter = work / "adapter.gguf"
    adapter.write_bytes(os.urandom(ADAPTER_BYTES))
    ref = publish_adapter(store, "bench", adapter)
    cache_dir = work / "cache"
    timings: dict[str, list[float]] = {"cached": [], "cold": [], "hot": []}
    rounds = 3 if quick else 10

    def fetches(kind: str) -> int:
        for _ in range(rounds):
            if kind == "cold":
                shutil.rmtree(cache_dir, ignore_errors=True)
            cache = ModelCache(store, cache_dir)  # a replica's new cache object
            started = time.perf_counter()
            cache.fetch(ref, "bench")
            timings[kind].append(time.perf_counter() - started)
            if kind == "cached":
                started = time.perf_counter()
                cache.fetch(ref, "bench")
                timings["hot"].append(time.perf_counter() - started)
        return rounds

    def notes() -> str:
        p50 = {k: statistics.median(v) * 1000 for k, v in timings.items() if v}
        return (f"{ADAPTER_BYTES >> 20} MiB adapter, moto S3 on loopback: cached (digest checked) p50 "
                f"{p50['cached']:.1f} ms, cold p50 {p50['cold']:.1f} ms, repeated in-process p50 {p50['hot']:.2f} ms")

    ModelCache(store, cache_dir).fetch(ref, "bench")  # the first cold fetch warms boto3's connection
    return [Comparison("adapter file fetch on a replica (cached vs cold from S3)", lambda: fetches("cached"),
                       lambda: fetches("cold"), unit="fetches", repeats=1 if quick else 3, warmup=1, notes=notes)]


def teardown() -> None:
    if "server" in _state:
        _state.pop("server").stop()
    shutil.rmtree(_state.pop("work", ""), ignore_errors=True)
