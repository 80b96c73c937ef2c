"""Tenant ids: validated once, at the edge.

A tenant id becomes a Kubernetes namespace suffix, a Neo4j label value or
database name, an object-store prefix, a Feast entity prefix and a serving
deployment name, so anything that is not a plain DNS label is refused here.
"""

from __future__ import annotations

import re

MAX_TENANT_ID_LENGTH = 40
TENANT_TAG = "datacreek/tenant"  # the run tag naming a run's tenant (concurrency limits, cost attribution)

# RFC 1123 label, lowercase ASCII only. fullmatch() so that a trailing newline
# cannot sneak past a `$` anchor.
_TENANT_ID = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?", re.ASCII)

TENANT_ID_RULE = (
    "a tenant id is a lowercase DNS label: 1 to 40 characters, only a-z, 0-9 and '-', "
    "starting and ending with a letter or digit (for example 'acme' or 'acme-research')"
)


class InvalidTenantId(ValueError):
    """Raised for any tenant id that is not a lowercase DNS label."""

    def __init__(self, tenant_id: object):
        self.tenant_id = tenant_id
        super().__init__(f"invalid tenant id {tenant_id!r}: {TENANT_ID_RULE}")


def validate_tenant_id(tenant_id: object) -> str:
    """Return ``tenant_id`` unchanged if valid, else raise :class:`InvalidTenantId`."""
    if not isinstance(tenant_id, str):
        raise InvalidTenantId(tenant_id)
    if not 1 <= len(tenant_id) <= MAX_TENANT_ID_LENGTH:
        raise InvalidTenantId(tenant_id)
    if _TENANT_ID.fullmatch(tenant_id) is None:
        raise InvalidTenantId(tenant_id)
    return tenant_id
