"""GPU metering, the credit ledger, the admin API and the exporter scraped by a real Prometheus."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
import requests

from datacreek_assets.billing.ledger import CreditLedger, LedgerError, QuotaExceeded
from datacreek_assets.billing.meter import FAILED_QUOTA, STATUS_TAG, Meter
from datacreek_assets.billing.prometheus import PrometheusServer
from datacreek_assets.billing.server import make_server, serve_in_thread
from datacreek_assets.defs.billing.sensors import quota_sensor
from datacreek_assets.local_services import free_port
from datacreek_assets.tenancy import TENANT_TAG
from resources.stores import CreditLedgerResource
from tests.raw_http import raw_status

REPO = Path(__file__).resolve().parents[2]
TOKEN = "t0ken-for-tests-only-1234"



@pytest.fixture
def ledger_url(sql_url) -> str:
    return sql_url  # every ledger test runs on SQLite and on PostgreSQL


def test_concurrent_top_ups_and_usage_keep_the_ledger_consistent(ledger_url):
    ledger = CreditLedger(ledger_url, trial_credits=0)
    ledger.account("acme")
    errors = []

    def worker(i):
        try:
            for j in range(15):
                if (i + j) % 2:
                    ledger.top_up("acme", 1.5)
                else:
                    meter = ledger.open_meter("acme", f"run-{i}", "step", "gpu", 1, 0) if j == 0 else None
                    ledger.try_spend("acme", 0.5)
                    if meter:
                        ledger.bill_meter(meter, 30_000, close=True)  # 30 GPU-seconds at 1 credit/min
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    ledger.top_up("acme", 100)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    rows = ledger.transactions("acme")
    assert ledger.account("acme").balance * 1_000_000 == pytest.approx(sum(r.amount_micro for r in rows), abs=0)
    running = 0
    for row in rows:  # each transaction's balance is the previous one plus its amount: no lost update
        running += row.amount_micro
        assert row.balance_after_micro == running


def test_a_new_tenant_s_first_operations_racing_all_succeed_and_open_one_account(ledger_url):
    """On Postgres two first operations used to race on creating the account: one failed."""
    ledger = CreditLedger(ledger_url, trial_credits=7)
    start, errors = threading.Barrier(8), []

    def first(i):
        try:
            start.wait()
            if i % 2:
                ledger.top_up("newco", 1, note=f"racer {i}")
            else:
                ledger.set_price("newco", 2.0)
        except Exception as err:  # noqa: BLE001 - the test reports any failure
            errors.append(err)

    threads = [threading.Thread(target=first, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert ledger.account("newco").balance == 7 + 4
    openings = [r for r in ledger.transactions("newco") if r.note == "trial credits at account opening"]
    assert len(openings) == 1


def test_concurrent_spends_never_use_the_same_credits_twice(ledger_url):
    ledger = CreditLedger(ledger_url, trial_credits=0)
    ledger.top_up("acme", 10)
    outcomes = []
    threads = [threading.Thread(target=lambda: outcomes.append(ledger.try_spend("acme", 1))) for _ in range(25)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert outcomes.count(True) == 10 and ledger.account("acme").balance == 0


def test_bad_ledger_input_is_refused(ledger_url):
    ledger = CreditLedger(ledger_url)
    for call in (lambda: ledger.top_up("acme", -5), lambda: ledger.top_up("acme", 0),
                 lambda: ledger.set_price("acme", -1), lambda: ledger.set_price("acme", 1, "tpu")):
        with pytest.raises(LedgerError):
            call()
    with pytest.raises(ValueError):
        ledger.top_up("Acme!", 5)


KILLED_STEP = """
import os, signal, sys, time
from datacreek_assets.billing.ledger import CreditLedger
from datacreek_assets.billing.meter import Meter
meter = Meter(CreditLedger(sys.argv[1]), "acme", "run-killed", "finetuned_adapter", "gpu", units=2, heartbeat_s=0.1)
meter.__enter__()
time.sleep(2.0)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_billed_minutes_equal_metered_minutes_for_normal_failed_and_killed_steps(ledger_url):
    ledger = CreditLedger(ledger_url, trial_credits=1000)
    ledger.set_price("acme", 2.0)
    with Meter(ledger, "acme", "run-ok", "finetuned_adapter", "gpu", units=1, heartbeat_s=0.1):
        time.sleep(0.5)
    with pytest.raises(RuntimeError):
        with Meter(ledger, "acme", "run-failed", "finetuned_adapter", "gpu", units=1, heartbeat_s=0.1):
            time.sleep(0.3)
            raise RuntimeError("the step crashed")
    killed = subprocess.run([sys.executable, "-c", KILLED_STEP, ledger_url], cwd=REPO, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert killed.returncode == -signal.SIGKILL
    [orphan] = ledger.meters(status="open")
    assert orphan.run_id == "run-killed"
    time.sleep(0.5)  # no beat for longer than stale_after_ms
    assert ledger.close_orphans(stale_after_ms=300) == [orphan.meter_id]

    meters = {m.run_id: m for m in ledger.meters("acme")}
    assert {m.status for m in meters.values()} == {"closed", "orphaned"}
    usage = [r for r in ledger.transactions("acme") if r.kind == "usage"]
    metered_ms = sum((m.billed_until_ms - m.started_ms) * m.units for m in meters.values())
    billed_ms = sum(r.resource_ms for r in usage)
    assert billed_ms == metered_ms  # exact: integers end to end
    # the killed step ran 2 s; its last beat, however late a busy machine makes it, is well past 1 s
    for run_id, low in (("run-ok", 500), ("run-failed", 300), ("run-killed", 2 * 1000)):
        m = meters[run_id]
        ran = (m.billed_until_ms - m.started_ms) * m.units
        assert ran >= low, (run_id, ran)  # billed for the time it ran (the killed one up to its last beat)
        assert sum(r.resource_ms for r in usage if r.meter_id == m.meter_id) == ran
    cost_micro = -sum(r.amount_micro for r in usage)
    assert cost_micro == sum(round(r.resource_ms * r.price_micro / 60000) for r in usage)
    [gpu] = [u for u in ledger.usage() if u.resource == "gpu"]
    assert gpu.minutes == pytest.approx(billed_ms / 60000) and gpu.cost == pytest.approx(gpu.minutes * 2.0, abs=1e-5)


STEP_PROCESS = """
import sys, time
from datacreek_assets.billing.ledger import CreditLedger
from datacreek_assets.billing.meter import Meter, step_process_started_ms
time.sleep(1.0)  # imports, resources: in a step pod the GPU is already the pod's
with Meter(CreditLedger(sys.argv[1]), "acme", sys.argv[2], "finetuned_adapter", "gpu",
           started_ms=step_process_started_ms()):
    pass
"""


def test_a_step_pod_is_billed_from_its_process_start_a_shared_process_from_the_meter(ledger_url):
    """A step pod's entrypoint is `dagster api execute_step`: the process starts with the container,
    and its meter is backdated to that start. Where steps share a process, the meter opens at once."""
    ledger = CreditLedger(ledger_url, trial_credits=100)
    for run_id, argv in (("pod-run", ["api", "execute_step"]), ("shared-run", ["materialize"])):
        done = subprocess.run([sys.executable, "-c", STEP_PROCESS, ledger_url, run_id, *argv], cwd=REPO,
                              timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 0
    spans = {m.run_id: m.billed_until_ms - m.started_ms for m in ledger.meters("acme")}
    assert spans["pod-run"] >= 1000  # the sleep (and the imports before it) billed
    assert spans["shared-run"] < 1000
    for meter in ledger.meters("acme"):  # and billed exactly so
        assert sum(t.resource_ms for t in ledger.transactions("acme") if t.meter_id == meter.meter_id) == \
            spans[meter.run_id]


def test_a_tenant_without_credits_is_refused_before_gpu_work_starts(ledger_url):
    ledger = CreditLedger(ledger_url, trial_credits=0)
    with pytest.raises(QuotaExceeded, match="top it up"):
        Meter(ledger, "acme", "run-1", "finetuned_adapter", "gpu").__enter__()
    assert ledger.meters("acme") == []


def test_a_running_meter_notices_the_balance_going_negative(ledger_url):
    ledger = CreditLedger(ledger_url, trial_credits=0.001)
    ledger.set_price("acme", 600.0)  # 10 credits per second
    with pytest.raises(QuotaExceeded, match="ran out of credits"):
        with Meter(ledger, "acme", "run-1", "finetuned_adapter", "gpu", heartbeat_s=0.05) as meter:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                meter.check()
                time.sleep(0.02)
    assert ledger.account("acme").balance < 0


@dg.op
def gpu_step():
    pass


@dg.job
def gpu_job():
    gpu_step()


def test_quota_sensor_stops_only_the_over_quota_tenant_s_gpu_runs(ledger_url, instance):
    resource = CreditLedgerResource(url=ledger_url, trial_credits=1.0, heartbeat_s=0.1)
    ledger = resource.ledger()
    runs = {t: instance.create_run_for_job(gpu_job, tags={TENANT_TAG: t}, status=dg.DagsterRunStatus.STARTED)
            for t in ("acme", "globex")}
    meters = {t: ledger.open_meter(t, runs[t].run_id, "gpu_step", "gpu", 1, int(time.time() * 1000))
              for t in ("acme", "globex")}
    ledger.bill_meter(meters["acme"], int(time.time() * 1000) + 5 * 60_000)  # 5 GPU-minutes: acme is at -4
    quota_sensor(dg.build_sensor_context(instance=instance, resources={"credit_ledger": resource}))
    assert instance.get_run_by_id(runs["acme"].run_id).tags.get(STATUS_TAG) == FAILED_QUOTA
    assert STATUS_TAG not in instance.get_run_by_id(runs["globex"].run_id).tags


REGISTERED = {"acme", "globex"}


@pytest.fixture
def billing_server(ledger_url, tmp_path):
    from datacreek_assets.retention.disk_usage import StateDiskCollector

    ledger = CreditLedger(ledger_url, trial_credits=5)
    port = free_port()
    models = tmp_path / "models" / "tenants"
    for tenant, size in (("acme", 3000), ("globex", 1000)):
        (models / tenant / "runs" / "k1").mkdir(parents=True)
        (models / tenant / "runs" / "k1" / "train.json").write_bytes(b"0" * size)
    (models / "not a tenant").mkdir()
    server = make_server(ledger, TOKEN, port=port, is_registered=REGISTERED.__contains__,
                         collectors=(StateDiskCollector(tmp_path / "models"),))
    serve_in_thread(server)
    yield ledger, f"http://127.0.0.1:{port}"
    server.shutdown()
    server.server_close()


def test_admin_api_authenticates_and_validates(billing_server):
    ledger, url = billing_server
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert requests.get(f"{url}/admin/tenants/acme/balance", timeout=5).status_code == 401
    assert requests.get(f"{url}/admin/tenants/acme/balance", headers={"Authorization": "Bearer wrong"},
                        timeout=5).status_code == 401
    assert requests.get(f"{url}/admin/tenants/ACME!/balance", headers=auth, timeout=5).status_code == 400
    assert requests.post(f"{url}/admin/tenants/acme/top-up", headers=auth, data="not json", timeout=5).status_code == 400
    assert requests.post(f"{url}/admin/tenants/acme/top-up", headers=auth, json={"amount": -3}, timeout=5).status_code == 422
    reply = requests.post(f"{url}/admin/tenants/acme/top-up", headers=auth, json={"amount": 20}, timeout=5)
    assert reply.status_code == 200 and reply.json()["balance"] == 25
    assert requests.post(f"{url}/admin/tenants/acme/price", headers=auth, json={"price": 0.75},
                         timeout=5).status_code == 200
    balance = requests.get(f"{url}/admin/tenants/acme/balance", headers=auth, timeout=5).json()
    assert balance == {"tenant": "acme", "balance": 25.0, "gpu_price": 0.75, "cpu_price": 0.1}
    assert ledger.account("globex").balance == 5  # untouched


@pytest.mark.parametrize("body", ['{"amount": Infinity}', '{"amount": -Infinity}', '{"amount": NaN}', '{"amount": 1e309}',
                                  '{"amount": 1e300}', '{"amount": "12"}', '{"amount": true}', '{"amount": null}',
                                  '{"price": 1e300}', '{"price": 1, "resource": ["gpu"]}'])
def test_admin_api_answers_422_for_amounts_it_cannot_book(billing_server, body, hostile):
    """Infinity or a huge amount used to raise OverflowError and drop the connection."""
    ledger, url = billing_server
    action = "price" if "price" in body else "top-up"
    with hostile.case("http billing"):
        reply = requests.post(f"{url}/admin/tenants/acme/{action}", headers={"Authorization": f"Bearer {TOKEN}",
                              "Content-Type": "application/json"}, data=body, timeout=5)
        assert reply.status_code == 422 and reply.json()["error"]
        assert not ledger.has_account("acme") and ledger.transactions("acme") == []  # nothing booked
        assert requests.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5).ok  # still serving


def test_hostile_requests_get_a_status_book_nothing_and_the_api_keeps_serving(billing_server, hostile):
    ledger, url = billing_server
    auth = f"Authorization: Bearer {TOKEN}\r\n"
    deep = b'{"amount": ' + b"[" * 2000 + b"]" * 2000 + b"}"  # under MAX_BODY, past the decoder's recursion

    def post(path: str, body: bytes, headers: str = auth, length: int | None = None) -> bytes:
        return (f"POST {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: "
                f"{len(body) if length is None else length}\r\n\r\n").encode() + body

    cases = [
        (f"GET /admin/tenants/acme/balance?token={TOKEN} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), 404),  # no token in URLs
        (f"GET /admin/tenants/acme/balance HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}x\r\n\r\n".encode(), 401),
        (f"GET /admin/tenants/acme/balance HTTP/1.1\r\nHost: x\r\nAuthorization: bearer {TOKEN}\r\n\r\n".encode(), 401),
        (f"GET /admin/tenants/..%2Fetc/balance HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode(), 400),  # not an id
        (f"GET /admin/tenants/../metrics HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode(), 404),
        (f"GET /admin/tenants/acme%00/balance HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode(), 400),
        (f"GET /admin/tenants/acme/steal HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode(), 404),
        (f"DELETE /admin/tenants/acme/balance HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode(), 501),
        (f"GET /admin/tenants/acme/balance HTTP/1.1\r\nHost: x\r\nX-Long: {'a' * 70_000}\r\n\r\n".encode(), 431),
        (post("/admin/tenants/acme/top-up", b"[]"), 400),
        (post("/admin/tenants/acme/top-up", b'{"amount": "1e3"}'), 422),
        (post("/admin/tenants/acme/top-up", b"\xff\xfe{}"), 400),
        (post("/admin/tenants/acme/top-up", deep), 400),  # nested too deep to decode
        (post("/admin/tenants/acme/top-up", b'{"amount": 1}', length=-5), 400),
        (post("/admin/tenants/acme/top-up", b'{"amount": 1}', length=10_000_000), 400),
        (post("/admin/tenants/acme/top-up", b'{"amount": 1}', length=4000), 408),  # the rest never comes
        (post("/admin/tenants/acme/top-up", b'{"amount": 1}', headers=""), 401),
        (post("/admin/tenants/stranger/top-up", b'{"amount": 1}'), 404),
    ]
    for request, status in cases:
        with hostile.case("http billing"):
            assert raw_status(url, request) == status, request[:120]
            assert ledger.balances() == {} and ledger.transactions("acme") == []  # nothing booked, nothing opened
            assert requests.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5).ok
    reply = requests.post(f"{url}/admin/tenants/acme/top-up", headers={"Authorization": f"Bearer {TOKEN}"},
                          json={"amount": 1}, timeout=5)
    assert reply.status_code == 200 and reply.json()["balance"] == 6  # and a good request still books


def test_metrics_need_the_admin_token_and_reads_open_no_account(billing_server):
    """/metrics holds every tenant's balance and usage; a balance read, or any request for an id
    that is no registered tenant, creates no account."""
    ledger, url = billing_server
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert requests.get(f"{url}/metrics", timeout=5).status_code == 401
    assert requests.get(f"{url}/metrics", headers={"Authorization": "Bearer wrong-token-000000"}, timeout=5).status_code == 401
    assert requests.get(f"{url}/admin/tenants/acme/balance", headers=auth, timeout=5).json()["balance"] == 5
    assert not ledger.has_account("acme")
    for method, action in (("get", "balance"), ("post", "top-up"), ("post", "price")):
        reply = requests.request(method, f"{url}/admin/tenants/stranger/{action}", headers=auth,
                                 json={"amount": 5, "price": 1}, timeout=5)
        assert reply.status_code == 404 and "not registered" in reply.json()["error"]
    assert not ledger.has_account("stranger") and ledger.balances() == {}
    assert "credit_balance" in requests.get(f"{url}/metrics", headers=auth, timeout=5).text


def test_prometheus_scrapes_gpu_minutes_and_cost_per_tenant(billing_server, tmp_path):
    ledger, url = billing_server
    ledger.set_price("acme", 2.0)
    for tenant, minutes in (("acme", 3), ("globex", 1)):
        meter = ledger.open_meter(tenant, f"run-{tenant}", "finetuned_adapter", "gpu", 1, 0)
        ledger.bill_meter(meter, minutes * 60_000, close=True)
    with PrometheusServer(tmp_path / "prometheus", free_port(), [url.removeprefix("http://")],
                          bearer_token=TOKEN) as prometheus:
        deadline = time.monotonic() + 60
        minutes = {}
        while time.monotonic() < deadline and len(minutes) < 2:
            minutes = {r["metric"]["tenant"]: float(r["value"][1]) for r in prometheus.query("gpu_minutes_total")}
            time.sleep(0.5)
        assert minutes == {"acme": 3.0, "globex": 1.0}
        cost = {r["metric"]["tenant"]: float(r["value"][1]) for r in prometheus.query("gpu_cost_total")}
        assert cost == {"acme": 6.0, "globex": 1.0}  # C = t_GPU x P_unit
        balance = {r["metric"]["tenant"]: float(r["value"][1]) for r in prometheus.query("credit_balance")}
        assert balance == {"acme": -1.0, "globex": 4.0}
        rules = {r["name"] for g in prometheus.rule_groups() for r in g["rules"]}
        assert {"tenant:gpu_cost:rate1h", "TenantCreditsLow", "TenantCreditsExhausted",
                "ModelVolumeAbove80Percent"} <= rules
        state = {r["metric"]["tenant"]: float(r["value"][1]) for r in prometheus.query("datacreek_tenant_state_bytes")}
        assert state == {"acme": 3000.0, "globex": 1000.0}
        [used] = prometheus.query("datacreek_state_volume_used_ratio")
        assert 0 < float(used["value"][1]) < 1
        # every query of the Grafana dashboard is valid PromQL that this Prometheus evaluates
        dashboard = json.loads((REPO / "monitoring/grafana/datacreek-billing.json").read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                prometheus.query(target["expr"].replace("$tenant", ".*"))
        assert prometheus.query('sum by (tenant) (gpu_minutes_total{tenant=~".*"})')
