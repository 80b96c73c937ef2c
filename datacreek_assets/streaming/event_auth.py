"""Who may publish a tenant's graph events.

Kafka's ACLs name topics, not keys: a tenant's SCRAM user may write the one events topic
(``tenant_credentials.grant_kafka_user``), so it could write events that name another tenant.
Every event is therefore signed: HMAC-SHA256 of its canonical bytes, under a key derived from the
platform's secret. The platform (its services, replay, the stream job) holds the secret and signs
with its own key for the event's tenant (key id ``platform``), which is never handed out. A
tenant's pods get the tenant's key of its current generation only (key id: the generation);
`tenant credentials` rotates it (the generation goes up, the older key is refused from then on),
as it rotates the tenant's passwords. The generations live in FalkorDB's keyspace, outside every
tenant graph: a tenant's ACL user reaches its own graph key only. The stream job dead-letters an
event whose signature is not its tenant's current key's or the platform's.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Callable

from datacreek_assets.streaming.events import MAX_EVENT_BYTES, EventLogError, GraphEvent
from datacreek_assets.tenancy import validate_tenant_id

SIGNATURE_FIELD = "sig"
KEY_ID_FIELD = "kid"  # which key signed: "platform", or the generation of the tenant's key
PLATFORM_KEY_ID = "platform"
SIGNING_SECRET_ENV = "DATACREEK_EVENT_SIGNING_SECRET"  # the platform's secret, as the stream job reads it
KEY_GENERATIONS = "datacreek:event-key-generations"  # hash: tenant id -> its signing key's generation
_CONTEXT = b"datacreek graph events/"


def _derived(secret: str, purpose: str) -> str:
    if not secret:
        raise EventLogError("no event signing secret is configured (DATACREEK_EVENT_SIGNING_SECRET)")
    return hmac.new(secret.encode(), _CONTEXT + purpose.encode(), hashlib.sha256).hexdigest()


def tenant_signing_key(secret: str, tenant_id: str, generation: int) -> str:
    """The tenant's key of ``generation``, as its pods get it: ``<generation>:<hex>``."""
    if not isinstance(generation, int) or generation < 1:
        raise EventLogError(f"a signing key generation is a positive integer, not {generation!r}")
    return f"{generation}:{_derived(secret, f'tenant/{validate_tenant_id(tenant_id)}/{generation}')}"


def _platform_key(secret: str, tenant_id: str) -> str:
    return _derived(secret, f"platform/{validate_tenant_id(tenant_id)}")


def _signature(key_hex: str, data: bytes) -> str:
    return hmac.new(bytes.fromhex(key_hex), data, hashlib.sha256).hexdigest()


def _parse_tenant_key(tenant_key: str) -> tuple[int, str]:
    generation, _, key_hex = tenant_key.partition(":")
    try:
        if not generation.isdigit() or int(generation) < 1 or len(bytes.fromhex(key_hex)) != 32:
            raise ValueError
    except ValueError:
        raise EventLogError("a tenant's signing key reads <generation>:<64 hex digits> (DATACREEK_EVENT_SIGNING_KEY, "
                            "as `tenant credentials` issues it)") from None
    return int(generation), key_hex


class EventSigner:
    """Signs events with the platform's secret (any tenant) or with one tenant's key (its own)."""

    def __init__(self, secret: str = "", tenant_id: str = "", tenant_key: str = ""):
        if bool(secret) == bool(tenant_key):
            raise EventLogError("an event signer takes the platform's secret or one tenant's key (with its "
                                "tenant), not both and not neither")
        if tenant_key and not tenant_id:
            raise EventLogError("a tenant's signing key needs its tenant")
        self._secret, self._tenant = secret, tenant_id and validate_tenant_id(tenant_id)
        self._generation, self._key = _parse_tenant_key(tenant_key) if tenant_key else (0, "")

    @classmethod
    def from_settings(cls, secret: str, tenant_key: str, tenant_id: str = "") -> "EventSigner | None":
        """The platform's signer when a secret is set, else the tenant's when its key is; None
        when neither is (events then go unsigned, and the stream job dead-letters them)."""
        if secret:
            return cls(secret=secret)
        if tenant_key:
            return cls(tenant_id=tenant_id, tenant_key=tenant_key)
        return None

    def key(self, tenant_id: str) -> tuple[str | int, str]:
        """(key id, key) for the tenant's events."""
        if self._secret:
            return PLATFORM_KEY_ID, _platform_key(self._secret, tenant_id)
        if tenant_id != self._tenant:
            raise EventLogError(f"tenant {self._tenant!r}'s credentials cannot publish tenant {tenant_id!r}'s events")
        return self._generation, self._key

    def signed(self, event: GraphEvent) -> bytes:
        """The event's bytes on the wire: its canonical JSON with the key id and signature added."""
        data = event.to_bytes()
        body = json.loads(data)
        key_id, key = self.key(event.tenant_id)
        body[KEY_ID_FIELD], body[SIGNATURE_FIELD] = key_id, _signature(key, data)
        signed = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        if len(signed) > MAX_EVENT_BYTES:  # the stream job measures what is on the wire
            raise EventLogError(f"signed event of {len(signed)} bytes is over {MAX_EVENT_BYTES}")
        return signed


def verified(data: bytes, secret: str, generation_of: Callable[[str, bool], int]) -> GraphEvent:
    """The event in ``data`` if the platform, or its tenant's current key, signed it; EventLogError
    otherwise. ``generation_of(tenant, fresh)``: the tenant's key generation (``KeyGenerations.current``)."""
    event = GraphEvent.from_bytes(data)  # a JSON object with the event's fields, or EventLogError
    body = json.loads(data)
    claimed, key_id = body.get(SIGNATURE_FIELD), body.get(KEY_ID_FIELD)
    if not isinstance(claimed, str):
        raise EventLogError("unsigned event: published without a tenant's signing key")
    if key_id == PLATFORM_KEY_ID:
        key = _platform_key(secret, event.tenant_id)
    elif isinstance(key_id, int) and not isinstance(key_id, bool) and key_id >= 1:
        current = generation_of(event.tenant_id, False)
        if key_id != current:  # a rotation since the lookup was kept: read it again
            current = generation_of(event.tenant_id, True)
        if current == 0:
            raise EventLogError(f"tenant {event.tenant_id!r} was issued no signing key (the event names "
                                f"generation {key_id})")
        if key_id != current:
            raise EventLogError(f"signed with a retired key of tenant {event.tenant_id!r} (generation {key_id}; "
                                f"its key is of generation {current} now)")
        key = _derived(secret, f"tenant/{event.tenant_id}/{key_id}")
    else:
        raise EventLogError(f"no usable key id ({KEY_ID_FIELD}: {key_id!r})")
    if not hmac.compare_digest(claimed, _signature(key, event.to_bytes())):
        raise EventLogError(f"the signature is not tenant {event.tenant_id!r}'s (signed with another "
                            "tenant's key, or altered)")
    return event


class KeyGenerations:
    """Each tenant's signing-key generation (0: none issued yet), in FalkorDB (``client``: a
    redis.Redis as the platform). ``keep_s``: how long a generation read is believed (the
    stream job's lookups; a key rotated away is refused at most this long after)."""

    def __init__(self, client, keep_s: float = 0.0):
        self.client, self.keep_s = client, keep_s
        self._kept: dict[str, tuple[int, float]] = {}

    def current(self, tenant_id: str, fresh: bool = False) -> int:
        kept = self._kept.get(tenant_id)
        if kept and not fresh and time.monotonic() - kept[1] < self.keep_s:
            return kept[0]
        generation = int(self.client.hget(KEY_GENERATIONS, validate_tenant_id(tenant_id)) or 0)
        self._kept[tenant_id] = (generation, time.monotonic())
        return generation

    def rotate(self, tenant_id: str) -> int:
        """A new generation for the tenant; the key of the one before is refused from now on.
        Never reset (a tenant removed and added again does not get its old keys back)."""
        return int(self.client.hincrby(KEY_GENERATIONS, validate_tenant_id(tenant_id), 1))
