"""Who may publish a tenant's graph events.

Kafka's ACLs name topics, not keys: a tenant's SCRAM user may write the one events topic
(``tenant_credentials.grant_kafka_user``), so it could write events that name another tenant.
Every event is therefore signed: HMAC-SHA256 of its canonical bytes under the tenant's signing
key, which is derived from the platform's secret. The platform (its services, replay, the stream
job) holds the secret and derives any tenant's key; a tenant's pods get their own key only. The
stream job dead-letters an event whose signature is not its tenant's.
"""

from __future__ import annotations

import hashlib
import hmac
import json

from datacreek_assets.streaming.events import MAX_EVENT_BYTES, EventLogError, GraphEvent
from datacreek_assets.tenancy import validate_tenant_id

SIGNATURE_FIELD = "sig"
SIGNING_SECRET_ENV = "DATACREEK_EVENT_SIGNING_SECRET"  # the platform's secret, as the stream job reads it
_CONTEXT = b"datacreek graph events/"


def tenant_signing_key(secret: str, tenant_id: str) -> str:
    """The tenant's key (hex), from the platform's secret."""
    if not secret:
        raise EventLogError("no event signing secret is configured (DATACREEK_EVENT_SIGNING_SECRET)")
    return hmac.new(secret.encode(), _CONTEXT + validate_tenant_id(tenant_id).encode(), hashlib.sha256).hexdigest()


def _signature(key_hex: str, data: bytes) -> str:
    return hmac.new(bytes.fromhex(key_hex), data, hashlib.sha256).hexdigest()


class EventSigner:
    """Signs events with the platform's secret (any tenant) or with one tenant's key (its own)."""

    def __init__(self, secret: str = "", tenant_id: str = "", tenant_key: str = ""):
        if bool(secret) == bool(tenant_key):
            raise EventLogError("an event signer takes the platform's secret or one tenant's key (with its "
                                "tenant), not both and not neither")
        if tenant_key and not tenant_id:
            raise EventLogError("a tenant's signing key needs its tenant")
        self._secret, self._tenant, self._key = secret, tenant_id and validate_tenant_id(tenant_id), tenant_key

    @classmethod
    def from_settings(cls, secret: str, tenant_key: str, tenant_id: str = "") -> "EventSigner | None":
        """The platform's signer when a secret is set, else the tenant's when its key is; None
        when neither is (events then go unsigned, and the stream job dead-letters them)."""
        if secret:
            return cls(secret=secret)
        if tenant_key:
            return cls(tenant_id=tenant_id, tenant_key=tenant_key)
        return None

    def key(self, tenant_id: str) -> str:
        if self._secret:
            return tenant_signing_key(self._secret, tenant_id)
        if tenant_id != self._tenant:
            raise EventLogError(f"tenant {self._tenant!r}'s credentials cannot publish tenant {tenant_id!r}'s events")
        return self._key

    def signed(self, event: GraphEvent) -> bytes:
        """The event's bytes on the wire: its canonical JSON with the signature added."""
        data = event.to_bytes()
        body = json.loads(data)
        body[SIGNATURE_FIELD] = _signature(self.key(event.tenant_id), data)
        signed = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        if len(signed) > MAX_EVENT_BYTES:  # the stream job measures what is on the wire
            raise EventLogError(f"signed event of {len(signed)} bytes is over {MAX_EVENT_BYTES}")
        return signed


def verified(data: bytes, secret: str) -> GraphEvent:
    """The event in ``data`` if its tenant's key signed it; EventLogError otherwise."""
    event = GraphEvent.from_bytes(data)  # a JSON object with the event's fields, or EventLogError
    claimed = json.loads(data).get(SIGNATURE_FIELD)
    if not isinstance(claimed, str):
        raise EventLogError("unsigned event: published without a tenant's signing key")
    expected = _signature(tenant_signing_key(secret, event.tenant_id), event.to_bytes())
    if not hmac.compare_digest(claimed, expected):
        raise EventLogError(f"the signature is not tenant {event.tenant_id!r}'s (signed with another "
                            "tenant's key, or altered)")
    return event
