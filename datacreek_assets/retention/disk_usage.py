"""Disk usage of the model volume, per tenant and in all, for Prometheus (alert at 80 %)."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily

from datacreek_assets.retention.model_gc import tree_bytes
from datacreek_assets.tenancy import InvalidTenantId, validate_tenant_id


class StateDiskCollector:
    """Walks ``<models_dir>/tenants/*`` at most once per ``cache_s``: scrapes come every few seconds,
    and a tenant's trainings can hold many files."""

    def __init__(self, models_dir: str | Path, cache_s: float = 60.0):
        self.models_dir = Path(models_dir)
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._sample: tuple[float, dict[str, int], float, int] | None = None

    def _measure(self) -> tuple[float, dict[str, int], float, int]:
        per_tenant = {}
        tenants = self.models_dir / "tenants"
        for folder in sorted(tenants.iterdir()) if tenants.is_dir() else []:
            try:
                per_tenant[validate_tenant_id(folder.name)] = tree_bytes(folder)
            except InvalidTenantId:
                continue
        volume = self.models_dir
        while not volume.exists():  # not created yet: the volume it will live on
            volume = volume.parent
        usage = shutil.disk_usage(volume)
        return time.monotonic(), per_tenant, usage.used / usage.total, usage.total

    def sample(self) -> tuple[dict[str, int], float, int] | None:
        with self._lock:
            if self._sample is None or time.monotonic() - self._sample[0] > self.cache_s:
                try:
                    self._sample = self._measure()
                except OSError:  # keep the last good sample: the billing series must not go with it
                    pass
            return None if self._sample is None else self._sample[1:]

    def collect(self):
        sample = self.sample()
        if sample is None:
            return
        per_tenant, used_ratio, total = sample
        tenant_bytes = GaugeMetricFamily("datacreek_tenant_state_bytes", "bytes of a tenant's models, runs and "
                                         "evaluations on the model volume", labels=["tenant"])
        for tenant, size in per_tenant.items():
            tenant_bytes.add_metric([tenant], size)
        yield tenant_bytes
        yield GaugeMetricFamily("datacreek_state_volume_used_ratio", "used share of the model volume", value=used_ratio)
        yield GaugeMetricFamily("datacreek_state_volume_bytes", "size of the model volume", value=total)
