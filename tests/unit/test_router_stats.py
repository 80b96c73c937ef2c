"""RouterStats, where several router replicas' measurements meet: the canary's window is over
every replica's samples, a retired version's window goes, a silent replica is dropped, and the
metrics count every replica's requests (the class itself; the Serve deployment is covered by
tests/integration/test_serving.py)."""

import time

from prometheus_client.parser import text_string_to_metric_families

from datacreek_assets.serving.router_stats import ROUTER_STALE_S, RequestSample, RouterStats

STATS = RouterStats.func_or_class  # the class Serve runs as a replica


def samples(tenant: str, version: str, role: str, latencies: list[float], code: int = 200, judged: bool = True,
            age_s: float = 0.0):
    return [RequestSample(tenant, version, role, code, latency, judged, time.time() - age_s) for latency in latencies]


def test_the_window_is_over_every_replicas_samples():
    stats = STATS(60.0)
    # replica a sees the fast canary requests, replica b the slow ones: each alone would judge wrong
    stats.report("a", 100.0, samples("acme", "v2", "canary", [0.01] * 10) + samples("acme", "base", "production",
                                                                                    [0.01] * 50), [], {}, [])
    stats.report("b", 101.0, samples("acme", "v2", "canary", [0.5] * 10, code=503) +
                 samples("acme", "v2", "canary", [0.4]), [], {}, [])
    window = stats.window("acme", ["base", "v2"])["versions"]
    assert window["v2"]["count"] == 21 and window["v2"]["errors"] == 10
    assert window["v2"]["p99_s"] >= 0.4 and window["base"]["count"] == 50
    assert window["v2"]["total"] == 11  # successful canary requests, over both replicas
    assert stats.window("globex", ["v2"])["versions"]["v2"]["count"] == 0  # another tenant's is its own


def test_samples_reported_late_count_by_when_they_were_answered():
    stats = STATS(60.0)
    # held back by an outage: 90 s old ones are out of the window, 30 s old ones in it
    stats.report("a", 1.0, samples("acme", "v2", "canary", [0.5] * 7, age_s=90.0) +
                 samples("acme", "v2", "canary", [0.01] * 3, age_s=30.0), [], {}, [])
    stats.report("b", 1.0, samples("acme", "v2", "canary", [0.02] * 2), [], {}, [])
    window = stats.window("acme", ["v2"])
    assert window["window_s"] == 60.0 and window["versions"]["v2"]["count"] == 5
    assert window["versions"]["v2"]["p99_s"] < 0.5 and window["versions"]["v2"]["total"] == 12


def test_pinned_requests_and_client_errors_are_measured_but_not_judged():
    stats = STATS(60.0)
    stats.report("a", 1.0, samples("acme", "v2", "canary", [0.2] * 5, judged=False) +
                 samples("acme", "v2", "canary", [0.1] * 3, code=413), [("acme", 0.004)], {"acme": 0.05}, [])
    assert stats.window("acme", ["v2"])["versions"]["v2"]["count"] == 0
    families = {f.name: f for f in text_string_to_metric_families(stats.metrics())}
    count = {(s.labels.get("code")): s.value for s in families["datacreek_serving_requests"].samples
             if s.name.endswith("_total")}
    assert count == {"200": 5, "413": 3}
    weight = [s.value for s in families["datacreek_serving_canary_weight"].samples if s.labels["tenant"] == "acme"]
    assert weight == [0.05]
    retrieval = [s.value for s in families["datacreek_serving_retrieval_seconds"].samples
                 if s.name.endswith("_count")]
    assert retrieval == [1]


def test_a_retired_version_is_forgotten_after_its_last_samples():
    stats = STATS(60.0)
    stats.report("a", 1.0, samples("acme", "v2", "canary", [0.01] * 4), [], {}, [("acme", "v2")])
    assert stats.window("acme", ["v2"])["versions"]["v2"] == {"count": 0, "p50_s": None, "p99_s": None, "errors": 0, "total": 0}


def test_only_replicas_heard_from_lately_are_alive():
    stats = STATS(60.0)
    stats.report("a", 10.0, samples("acme", "base", "production", [0.01] * 3), [], {}, [])
    stats.report("b", 12.0, [], [], {}, [])
    alive = stats.alive()
    assert {r: (seen["routes_read_at"], seen["samples"]) for r, seen in alive.items()} == {"a": (10.0, 3), "b": (12.0, 0)}
    stats.routers["a"]["heard"] = time.monotonic() - ROUTER_STALE_S - 1  # a stopped reporting: it is gone
    assert set(stats.alive()) == {"b"}


def test_a_report_sent_again_after_its_answer_was_lost_counts_once():
    stats = STATS(60.0)
    first = samples("acme", "v2", "canary", [0.01] * 4)
    stats.report("a", 1.0, first, [("acme", 0.003)], {"acme": 0.05}, [], 1)
    # the answer was lost: the replica sends report 1 again, then its next one
    stats.report("a", 2.0, first, [("acme", 0.003)], {"acme": 0.05}, [], 1)
    stats.report("a", 3.0, samples("acme", "v2", "canary", [0.02] * 2), [], {"acme": 0.1}, [], 2)
    # another replica's report 1 is its own
    stats.report("b", 3.0, samples("acme", "v2", "canary", [0.03]), [], {"acme": 0.1}, [], 1)
    window = stats.window("acme", ["v2"])["versions"]["v2"]
    assert window["count"] == 7 and window["total"] == 7
    alive = stats.alive()
    assert alive["a"]["samples"] == 6 and alive["a"]["routes_read_at"] == 3.0 and alive["b"]["samples"] == 1
    families = {f.name: f for f in text_string_to_metric_families(stats.metrics())}
    assert [s.value for s in families["datacreek_serving_retrieval_seconds"].samples if s.name.endswith("_count")] == [1]
    assert [s.value for s in families["datacreek_serving_canary_weight"].samples] == [0.1]
    # a repeated report still counts as the replica's heartbeat
    stats.report("a", 4.0, first, [], {"acme": 0.1}, [], 1)
    assert stats.alive()["a"]["routes_read_at"] == 4.0 and stats.alive()["a"]["samples"] == 6


def test_a_router_replica_sends_unanswered_reports_again_and_none_counts_twice():
    """The Router's side (its reporting alone, outside Serve) against the real RouterStats class:
    a report that arrived but whose answer was lost, and one that never arrived, are both sent
    again with their numbers; every sample counts once."""
    import asyncio
    from types import SimpleNamespace

    from datacreek_assets.serving.app import Router

    stats = STATS(60.0)

    class Handle:  # what `self.stats.report.remote` is in Serve: the call, then its answer
        def __init__(self):
            self.outcomes = []  # per call: "ok", "answer lost" or "not arrived"

        async def remote(self, *args):
            outcome = self.outcomes.pop(0) if self.outcomes else "ok"
            if outcome != "not arrived":
                stats.report(*args)
            if outcome != "ok":
                raise TimeoutError(outcome)

    handle = Handle()
    # the replica's reporting state, as Router.__init__ sets it up
    router = SimpleNamespace(stats=SimpleNamespace(report=handle), replica="r1", routes_read_at=1.0,
                             weights={"acme": 0.05}, unreported=[], retrievals=[], retired=[], unsent={}, reports=0)
    router._trim_unsent = lambda: Router.func_or_class._trim_unsent(router)

    def send(latencies, *outcomes):
        router.unreported.extend(samples("acme", "v2", "canary", latencies))
        handle.outcomes.extend(outcomes)
        try:
            asyncio.run(Router.func_or_class._report(router))
        except TimeoutError:
            pass

    send([0.01] * 3, "answer lost")  # report 1 arrived; the replica does not know
    send([0.02] * 2, "not arrived")  # report 1 sent again does not arrive: 1 and 2 wait
    assert list(router.unsent) == [1, 2]
    send([0.03])  # 1 arrives again (applied once), then 2 and 3
    assert router.unsent == {} and router.reports == 3
    window = stats.window("acme", ["v2"])["versions"]["v2"]
    assert window["count"] == 6 and stats.alive()["r1"]["samples"] == 6
    send([])  # nothing new: a heartbeat, no numbered report
    assert router.reports == 3 and stats.alive()["r1"]["samples"] == 6

    # RouterStats away for long: the oldest reports' samples go, the versions they retired do not
    router.unsent = {n: (samples("acme", "v2", "canary", [0.01]), [], [("acme", f"v{n}")] if n == 1 else [])
                     for n in range(1, 246)}
    router.reports = 245
    Router.func_or_class._trim_unsent(router)
    assert list(router.unsent)[0] == 6 and len(router.unsent) == 240
    assert router.unsent[6][2] == [("acme", "v1")]
