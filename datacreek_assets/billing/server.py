"""The billing HTTP server: Prometheus metrics and the admin API, both behind the admin token
(the metrics hold every tenant's balance and usage; Prometheus scrapes with the token).

GET  /metrics                         gpu_minutes_total{tenant}, gpu_cost_total{tenant} (C = t_GPU x P_unit),
                                      cpu_fallback_minutes_total, cpu_fallback_cost_total, credit_balance
GET  /admin/tenants/<id>/balance      }
POST /admin/tenants/<id>/top-up       } Authorization: Bearer <admin token>; JSON bodies
POST /admin/tenants/<id>/price        }   {"amount": 50} / {"price": 0.8, "resource": "gpu"}
401 without the token, 404 for a tenant that is not registered (when a registry check is given),
400 for a body that is not a JSON object, 422 for values the ledger refuses (not a finite number,
out of range, not positive).
Counters are read from the ledger at scrape time, so every process that bills (run workers,
the CLI) is visible through one exporter, and a restart loses nothing.
"""

from __future__ import annotations

import hmac
import json
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from datacreek_assets.billing.ledger import CreditLedger, LedgerError
from datacreek_assets.tenancy import InvalidTenantId, validate_tenant_id

MAX_BODY = 4096
_ADMIN = re.compile(r"^/admin/tenants/([^/]+)/(balance|top-up|price)$")


class LedgerCollector:
    def __init__(self, ledger: CreditLedger):
        self.ledger = ledger

    def collect(self):
        names = {"gpu": ("gpu_minutes", "gpu_cost"), "cpu": ("cpu_fallback_minutes", "cpu_fallback_cost")}
        families = {}
        for resource, (minutes, cost) in names.items():
            families[minutes] = CounterMetricFamily(minutes, f"{resource.upper()} minutes used (x units allocated)",
                                                    labels=["tenant"])
            families[cost] = CounterMetricFamily(cost, f"credits charged for {resource.upper()} minutes",
                                                 labels=["tenant"])
        for usage in self.ledger.usage():
            minutes, cost = names[usage.resource]
            families[minutes].add_metric([usage.tenant_id], usage.minutes)
            families[cost].add_metric([usage.tenant_id], usage.cost)
        balance = GaugeMetricFamily("credit_balance", "credits left", labels=["tenant"])
        for tenant, value in self.ledger.balances().items():
            balance.add_metric([tenant], value)
        yield from families.values()
        yield balance


class Unprocessable(ValueError):
    pass


def _number(body: dict, key: str) -> float:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Unprocessable(f"{key!r} must be a JSON number, not {json.dumps(value)[:40]}")
    return float(value)


def make_server(ledger: CreditLedger, admin_token: str, host: str = "127.0.0.1", port: int = 9464,
                is_registered: Callable[[str], bool] | None = None, collectors: tuple = ()) -> ThreadingHTTPServer:
    """``is_registered``: the tenant registry's check; without it any valid id is served.
    ``collectors``: more series on the same /metrics (the model volume's disk usage)."""
    if len(admin_token) < 16:
        raise ValueError("the admin token must be at least 16 characters")
    registry = CollectorRegistry()
    registry.register(LedgerCollector(ledger))
    for collector in collectors:
        registry.register(collector)

    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # seconds a connection may stall: a body shorter than its Content-Length frees the thread

        def log_message(self, *args):  # quiet: Prometheus scrapes every few seconds
            pass

        def _send(self, code: int, payload, content_type: str = "application/json") -> None:
            body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _authorized(self) -> bool:
            given = self.headers.get("Authorization", "")
            if hmac.compare_digest(given.encode(), f"Bearer {admin_token}".encode()):
                return True
            self._send(401, {"error": "missing or invalid admin token"})
            return False

        def _route(self):
            match = _ADMIN.match(self.path)
            if not match:
                self._send(404, {"error": "not found"})
                return None
            if not self._authorized():
                return None
            try:
                tenant = validate_tenant_id(match.group(1))
            except InvalidTenantId as err:
                self._send(400, {"error": str(err)})
                return None
            if is_registered is not None and not is_registered(tenant):
                self._send(404, {"error": f"tenant {tenant!r} is not registered"})
                return None
            return tenant, match.group(2)

        def do_GET(self):
            if self.path == "/metrics":
                if self._authorized():
                    self._send(200, generate_latest(registry), "text/plain; version=0.0.4")
                return
            route = self._route()
            if route is None:
                return
            tenant, action = route
            if action != "balance":
                self._send(405, {"error": f"use POST for {action}"})
                return
            account = ledger.account(tenant)
            self._send(200, {"tenant": tenant, "balance": account.balance, "gpu_price": account.gpu_price,
                             "cpu_price": account.cpu_price})

        def do_POST(self):
            route = self._route()
            if route is None:
                return
            tenant, action = route
            try:
                length = int(self.headers.get("Content-Length", "0"))
                if not 0 < length <= MAX_BODY:
                    raise ValueError(f"a JSON body of 1 to {MAX_BODY} bytes is required")
                body = json.loads(self.rfile.read(length))
                if not isinstance(body, dict):
                    raise ValueError("the body must be a JSON object")
            except TimeoutError:
                self._send(408, {"error": f"the body did not arrive within {self.timeout} s"})
                return
            except (ValueError, RecursionError) as err:  # RecursionError: JSON nested too deep to decode
                self._send(400, {"error": f"{err.__class__.__name__}: {str(err)[:200]}"})
                return
            try:
                if action == "top-up":
                    balance = ledger.top_up(tenant, _number(body, "amount"), note="admin API")
                    self._send(200, {"tenant": tenant, "balance": balance})
                elif action == "price":
                    price, resource = _number(body, "price"), body.get("resource", "gpu")
                    ledger.set_price(tenant, price, str(resource))  # the ledger refuses what is not gpu/cpu
                    self._send(200, {"tenant": tenant, "price": price, "resource": resource})
                else:
                    self._send(405, {"error": "use GET for balance"})
            except (Unprocessable, LedgerError) as err:
                self._send(422, {"error": str(err)})

    return ThreadingHTTPServer((host, port), Handler)


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="billing-server", daemon=True)
    thread.start()
    return thread
