"""Scale check with many tenants (default 200, small synthetic inboxes).

Measures, on one machine:
- loading the code location and one tick of each sensor with N tenant partitions;
- the cheap asset groups (ingest + graph) over all tenants as a real Dagster backfill
  through `dagster dev` (one run per tenant, each run a process of its own, queued per tenant)
  against the same partitions materialized one after another in this process; the backfill runs
  twice, with runs forked from a warm process (the local default, `warm_runs.py`) and with
  Dagster's default launcher (a fresh interpreter per run).
The ratio is the price of per-tenant run isolation; per-run overhead is printed, and where
each run's time went, read from its events in the instance: waiting in the queue, its process
starting and loading the code location, its steps, and its teardown. The backfill's wall time
is split into the wait for the daemon's first run, the runs, and the wait for the daemon to see
them done: the two waits are per backfill (the daemon's 30 s tick), not per run.
Run: python -m bench.backfill_scale [--tenants N]  (several minutes for 200).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CHEAP = ["raw_documents", "parsed_chunks", "knowledge_graph"]
REPO = Path(__file__).resolve().parents[1]


PHASES = (  # (name, from event, to event); a run's phase is the time between the two events
    ("submitted to queued", "created", "RUN_ENQUEUED"),
    ("waiting in the queue", "RUN_ENQUEUED", "RUN_STARTING"),  # Dagster logs no RUN_DEQUEUED
    ("process start + code location load", "RUN_STARTING", "RUN_START"),
    ("steps (the work)", "RUN_START", "last STEP_SUCCESS"),
    ("teardown", "last STEP_SUCCESS", "RUN_SUCCESS"),
)


def run_phases(instance, backfill_id: str) -> dict[str, list[float]]:
    """Seconds each of the backfill's successful runs spent in each phase (PHASES), from its events."""
    import dagster as dg

    kinds = {"RUN_ENQUEUED", "RUN_STARTING", "RUN_START", "STEP_SUCCESS", "RUN_SUCCESS"}
    phases: dict[str, list[float]] = {name: [] for name, _, _ in PHASES}
    for record in instance.get_run_records(dg.RunsFilter(tags={"dagster/backfill": backfill_id},
                                                         statuses=[dg.DagsterRunStatus.SUCCESS])):
        at = {"created": record.create_timestamp.timestamp()}
        for entry in instance.all_logs(record.dagster_run.run_id,
                                       of_type={dg.DagsterEventType[kind] for kind in kinds}):
            kind = entry.dagster_event.event_type.name
            if kind == "STEP_SUCCESS":
                at["last STEP_SUCCESS"] = max(at.get("last STEP_SUCCESS", 0.0), entry.timestamp)
            else:
                at.setdefault(kind, entry.timestamp)
        for name, start, end in PHASES:
            if start in at and end in at:
                phases[name].append(at[end] - at[start])
    return phases


class ProcessGroupCpu:
    """CPU seconds used by the processes of one process group, summed by kind, sampled every
    0.2 s from /proc (a process's last 0.2 s before it exits can be missed)."""

    def __init__(self, pgid: int):
        self.pgid = pgid
        self.seen: dict[int, tuple[str, float]] = {}  # pid -> (kind, CPU seconds so far)
        self.before: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def kind(argv: list[str], parent_argv: list[str]) -> str:
        def warm(args):  # the instance ref in other processes' argv names the launcher too: match the module
            return args[1:3] == ["-m", "datacreek_assets.warm_runs"]

        if warm(argv):
            return "runs (forked)" if warm(parent_argv) else "warm process"
        if any("spawn_main" in arg for arg in argv):
            return "runs (spawned)"
        for marker, name in (("dagster_webserver", "webserver"), ("dagster._daemon", "daemon"),
                             ("grpc", "code server"), ("code-server", "code server proxy"), ("dev", "dagster dev")):
            if marker in argv[1:5]:
                return name
        return "other"

    def _sample(self):
        while not self._stop.wait(0.2):
            self._read()

    def _read(self):
        from datacreek_assets.warm_runs import proc_stat

        tick = os.sysconf("SC_CLK_TCK")
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                fields = proc_stat(int(entry))
                if fields is None or int(fields[2]) != self.pgid:  # field 5: the process group
                    continue
                cpu = (int(fields[11]) + int(fields[12])) / tick
                pid = int(entry)
                kind = self.seen[pid][0] if pid in self.seen else self.kind(
                    Path(f"/proc/{entry}/cmdline").read_text().split("\0"),
                    Path(f"/proc/{fields[1]}/cmdline").read_text().split("\0"))
                self.seen[pid] = (kind, cpu)
            except (OSError, IndexError, ValueError):
                continue

    def __enter__(self):
        self._read()
        self.before = {pid: cpu for pid, (_, cpu) in self.seen.items()}  # what they used before the backfill
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False

    def by_kind(self) -> dict[str, tuple[int, float]]:
        """kind -> (processes, CPU seconds)."""
        totals: dict[str, tuple[int, float]] = {}
        for pid, (kind, cpu) in self.seen.items():
            n, total = totals.get(kind, (0, 0.0))
            totals[kind] = (n + 1, total + cpu - self.before.get(pid, 0.0))
        return totals


LAUNCHERS = {"warm": "runs forked from the warm process (WarmProcessRunLauncher, the local default)",
             "spawn": "a fresh interpreter per run (Dagster's DefaultRunLauncher)"}


def backfill_span(instance, backfill_id: str, launched_at: float, done_at: float) -> dict[str, float]:
    """Where a backfill's wall time went (seconds): waiting for the backfill daemon to create the
    first run, the runs themselves (first created to last ended), and from the last run's end to
    the backfill being seen done. Dagster's backfill daemon ticks every 30 s (fixed in
    `execute_backfill_iteration_loop`), so the first and last parts are per backfill, not per run."""
    import dagster as dg

    records = instance.get_run_records(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
    if not records:
        return {"until the first run": done_at - launched_at, "runs": 0.0, "after the last run": 0.0}
    first_created = min(r.create_timestamp.timestamp() for r in records)
    last_ended = max(r.end_time or done_at for r in records)
    return {"until the first run": first_created - launched_at, "runs": last_ended - first_created,
            "after the last run": done_at - last_ended}


def backfill_through_dagster_dev(home: Path, tenants: list[str], settings, console):
    """One backfill of CHEAP over ``tenants`` through `dagster dev` on ``home``: (seconds from
    launch to done, the final backfill state, run phases, CPU seconds of `dagster dev`'s processes
    by kind during the backfill, where the wall time went (`backfill_span`))."""
    import dagster as dg
    import requests

    from datacreek_assets.backfills import DagsterWebClient

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "DAGSTER_HOME": str(home), "DATACREEK_STATE_DIR": str(settings.state_dir),
           "DATACREEK_NEO4J_PORT": str(settings.neo4j_port), "DATACREEK_FALKORDB_PORT": str(settings.falkordb_port)}
    web = subprocess.Popen([str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml", "-h",
                            "127.0.0.1", "-p", str(port)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(180):
            try:
                if requests.get(f"{url}/server_info", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(1)
        client = DagsterWebClient(url)
        start, launched_at = time.perf_counter(), time.time()
        backfill_id = client.launch(tenants, CHEAP, {"datacreek/launched-by": "bench"}, "scale bench")
        with console.status(f"backfill ({home.name})") as status, ProcessGroupCpu(web.pid) as cpu:
            while True:
                state = client.status(backfill_id)
                status.update(f"backfill ({home.name}): {len(state.tenants_in('success'))} ok, "
                              f"{len(state.tenants_in('failed'))} failed")
                if state.done:
                    break
                time.sleep(2)
        seconds, done_at = time.perf_counter() - start, time.time()
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        web.wait(60)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return (seconds, state, run_phases(instance, backfill_id), cpu.by_kind(),
                backfill_span(instance, backfill_id, launched_at, done_at))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backfill_scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=200)
    args = parser.parse_args(argv)
    import dagster as dg
    from rich.console import Console

    from datacreek_assets.defs import build_definitions
    from datacreek_assets.defs.tenants.sensors import tenant_partitions_sync
    from datacreek_assets.local_services import services_up
    from datacreek_assets.object_store import TenantObjectStore
    from datacreek_assets.runner import materialize_tenant
    from datacreek_assets.settings import LocalSettings, ensure_dagster_home
    from datacreek_assets.signals import let_children_take_default_signals
    from datacreek_assets.tenant_lifecycle import add_tenant
    from resources.factory import build_resources, open_tenant_stores

    let_children_take_default_signals()  # `dagster dev` and its runs, when this bench runs in the background

    console = Console(stderr=True)
    root = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    settings = LocalSettings(state_dir=root / "state", neo4j_port=37687, falkordb_port=36380)
    results = {}
    with console.status("starting services"):
        services_up(settings, progress=lambda m: None, stream=False)
    home_a = ensure_dagster_home(root / "home-backfill")
    home_b = ensure_dagster_home(root / "home-inprocess")
    home_c = ensure_dagster_home(root / "home-spawn")
    config = home_c / "dagster.yaml"
    config.write_text(config.read_text().split("run_launcher:")[0])  # Dagster's default launcher
    tenants = [f"scale-{i:03d}" for i in range(args.tenants)]
    resources = build_resources("local", settings)
    inst_a, inst_b = dg.DagsterInstance.from_config(str(home_a)), dg.DagsterInstance.from_config(str(home_b))
    inst_c = dg.DagsterInstance.from_config(str(home_c))
    with console.status(f"onboarding {len(tenants)} tenants"), open_tenant_stores(resources) as stores:
        start = time.perf_counter()
        for i, tenant in enumerate(tenants):
            add_tenant(tenant, stores, inst_a)
            inst_b.add_dynamic_partitions("tenants", [tenant])
            inst_c.add_dynamic_partitions("tenants", [tenant])
            TenantObjectStore(stores.objects, tenant).put(
                "inbox/notes.md", f"# Notes {i}\n\nThe json module provides functions. Tenant {i} uses Python.".encode())
        results["onboarding_s_per_tenant"] = (time.perf_counter() - start) / len(tenants)

    start = time.perf_counter()
    defs = build_definitions("local", settings)
    defs.resolve_asset_graph()
    results["definitions_load_s"] = time.perf_counter() - start
    start = time.perf_counter()
    context = dg.build_sensor_context(instance=inst_a, cursor=None, resources={"tenant_registry": resources["tenant_registry"]})
    tenant_partitions_sync(context)
    results["partition_sync_tick_s"] = time.perf_counter() - start
    start = time.perf_counter()
    dg.evaluate_automation_conditions(defs=defs, instance=inst_a)
    results["automation_tick_s"] = time.perf_counter() - start

    # in one process: the same partitions, one after another
    start, cpu_start = time.perf_counter(), time.process_time()
    with console.status("in-process materializations") as status:
        for i, tenant in enumerate(tenants):
            summary = materialize_tenant(defs, tenant, inst_b, selection=CHEAP, launched_by="bench")
            assert summary.success, summary.error
            status.update(f"in-process {i + 1}/{len(tenants)}")
    in_process_s, in_process_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start

    # real backfills through dagster dev (webserver + daemon), one run per tenant: runs forked from
    # the warm process (the local default), then Dagster's default launcher (a fresh interpreter per run)
    backfills = {}
    for label, home in (("warm", home_a), ("spawn", home_c)):
        backfills[label] = backfill_through_dagster_dev(home, tenants, settings, console)
    n = len(tenants)
    print(f"tenants: {n}")
    for key, value in results.items():
        print(f"{key:<28} {value:8.3f}")
    print(f"{'in one process':<28} {in_process_s:8.1f} s ({in_process_s / n:.2f} s per tenant; "
          f"CPU {in_process_cpu_s / n:.2f} s per tenant)")
    for label, (backfill_s, state, phases, cpu, span) in backfills.items():
        print(f"backfill, {LAUNCHERS[label]}: {backfill_s:.1f} s ({len(state.tenants_in('success'))} ok, "
              f"{len(state.tenants_in('failed'))} failed); {backfill_s / in_process_s:.1f}x one process, "
              f"per-run overhead {(backfill_s - in_process_s) / n:.2f} s")
        print(f"  of which: {span['until the first run']:.1f} s until the daemon created the first run, "
              f"{span['runs']:.1f} s of runs, {span['after the last run']:.1f} s until the backfill was seen done "
              f"(the daemon's 30 s tick and this bench's 2 s poll)")
        print(f"  per-run overhead over the runs alone, (runs - one process) / tenants: "
              f"{(span['runs'] - in_process_s) / n:.2f} s")
        print("  where a run's time went (seconds; median, min-max over the runs; up to 4 runs share the 2 cores):")
        for name, values in phases.items():
            if values:
                print(f"    {name:<36} {statistics.median(values):6.2f}   {min(values):.2f}-{max(values):.2f}")
        print("  CPU seconds of dagster dev's processes during the backfill (by kind: processes, seconds):")
        for kind, (processes, seconds) in sorted(cpu.items(), key=lambda item: -item[1][1]):
            print(f"    {kind:<36} {processes:4d} {seconds:8.1f}")
        runs = next((cpu[kind] for kind in ("runs (forked)", "runs (spawned)") if kind in cpu), (0, 0.0))
        print(f"  CPU per run {runs[1] / n:.2f} s, {runs[1] / n - in_process_cpu_s / n:.2f} s more than a tenant "
              f"in one process")
    print(f"ratio, spawned/warm backfill time: {backfills['spawn'][0] / backfills['warm'][0]:.2f}x")
    print(f"ratio, spawned/warm time of the runs alone: "
          f"{backfills['spawn'][4]['runs'] / max(backfills['warm'][4]['runs'], 1e-9):.2f}x")
    from datacreek_assets.local_services import services_down

    services_down(settings, progress=lambda m: None)
    return 0 if not any(state.tenants_in("failed") for _, state, *_ in backfills.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
