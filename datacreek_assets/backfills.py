"""Backfills across tenants through the Dagster GraphQL API of a running `dagster dev`
(or a deployed webserver): the same backfill the UI's dialog launches, processed by
the daemon, one run per tenant so a failing tenant never stops the others."""

from __future__ import annotations

from dataclasses import dataclass, field

import requests

from datacreek_assets.run_coordinator import partition_of

TERMINAL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
FAILED_RUN = {"FAILURE", "CANCELED"}

_LAUNCH = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message }
  }
}"""
_REEXECUTE = """
mutation($params: ReexecutionParams!) {
  reexecutePartitionBackfill(reexecutionParams: $params) {
    __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message }
  }
}"""
_STATUS = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { id status partitionNames runs(limit: 100000) { runId status tags { key value } } }
    ... on Error { message }
  }
}"""


class BackfillError(RuntimeError):
    pass


class WebserverUnavailable(BackfillError):
    pass


@dataclass
class BackfillStatus:
    backfill_id: str
    status: str
    tenants: dict[str, str] = field(default_factory=dict)  # tenant -> pending | running | success | failed
    runs: list[dict] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL and all(s in ("success", "failed") for s in self.tenants.values())

    def tenants_in(self, state: str) -> list[str]:
        return sorted(t for t, s in self.tenants.items() if s == state)


class DagsterWebClient:
    def __init__(self, url: str, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _call(self, query: str, variables: dict) -> dict:
        try:
            response = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=self.timeout)
        except requests.RequestException as err:
            raise WebserverUnavailable(
                f"no Dagster webserver at {self.url} ({err.__class__.__name__}); start one with `make dev` "
                "or pass --url") from None
        if response.status_code != 200:
            raise BackfillError(f"Dagster answered HTTP {response.status_code}: {response.text[:300]}")
        body = response.json()
        if body.get("errors"):
            raise BackfillError("; ".join(e.get("message", "?") for e in body["errors"]))
        return body["data"]

    def launch(self, tenants: list[str], asset_keys: list[str], tags: dict[str, str], title: str) -> str:
        params = {
            "partitionNames": tenants,
            "assetSelection": [{"path": key.split("/")} for key in asset_keys],
            "tags": [{"key": k, "value": v} for k, v in tags.items()],
            "title": title,
        }
        result = self._call(_LAUNCH, {"params": params})["launchPartitionBackfill"]
        if result["__typename"] != "LaunchBackfillSuccess":
            raise BackfillError(f"backfill refused ({result['__typename']}): {result.get('message', '')}")
        return result["backfillId"]

    def retry_failed(self, backfill_id: str) -> str:
        params = {"parentRunId": backfill_id, "strategy": "FROM_FAILURE"}
        result = self._call(_REEXECUTE, {"params": params})["reexecutePartitionBackfill"]
        if result["__typename"] != "LaunchBackfillSuccess":
            raise BackfillError(f"retry refused ({result['__typename']}): {result.get('message', '')}")
        return result["backfillId"]

    def status(self, backfill_id: str) -> BackfillStatus:
        result = self._call(_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
        if result["__typename"] != "PartitionBackfill":
            raise BackfillError(f"no backfill {backfill_id}: {result.get('message', result['__typename'])}")
        return summarize(result)


def summarize(backfill: dict) -> BackfillStatus:
    """Per-tenant state from the backfill's runs (grouped by their partition tag)."""
    runs_by_tenant: dict[str, list[str]] = {}
    for run in backfill["runs"]:
        tags = {t["key"]: t["value"] for t in run["tags"]}
        tenant = partition_of(tags)
        if tenant:
            runs_by_tenant.setdefault(tenant, []).append(run["status"])
    tenants = {}
    for tenant in backfill.get("partitionNames") or sorted(runs_by_tenant):
        statuses = runs_by_tenant.get(tenant, [])
        if any(s in FAILED_RUN for s in statuses):
            tenants[tenant] = "failed"
        elif statuses and all(s == "SUCCESS" for s in statuses):
            tenants[tenant] = "success"
        elif statuses:
            tenants[tenant] = "running"
        else:
            tenants[tenant] = "pending"
    if backfill["status"] in TERMINAL:  # the daemon gave up on partitions it never launched
        tenants = {t: ("failed" if s == "pending" else s) for t, s in tenants.items()}
    return BackfillStatus(backfill["id"], backfill["status"], tenants, backfill["runs"])
