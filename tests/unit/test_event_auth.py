"""Signed graph events: the platform signs for any tenant, a tenant's current key for that tenant
only, and the stream job's check refuses anything else, a rotated-away key included."""

import json
from dataclasses import replace

import pytest

from datacreek_assets.streaming.event_auth import EventSigner, tenant_signing_key, verified
from datacreek_assets.streaming.events import EventLogError, GraphEvent

SECRET = "platform-secret-for-tests"
EVENT = GraphEvent("acme", "a.txt", "chunk", "upsert", "2026-12-03T00:00:00+00:00", {"chunk_id": "a:1"}, revision=4)
GENERATIONS = {"acme": 2, "globex": 2}  # the keys' generations as KeyGenerations keeps them in FalkorDB


def generation_of(tenant_id: str, fresh: bool) -> int:
    return GENERATIONS.get(tenant_id, 0)


def check(data: bytes) -> GraphEvent:
    return verified(data, SECRET, generation_of)


def test_the_platform_signs_any_tenant_and_each_event_verifies_as_its_tenant_s():
    platform = EventSigner(secret=SECRET)
    for event in (EVENT, replace(EVENT, tenant_id="globex"), replace(EVENT, tenant_id="never-issued")):
        assert check(platform.signed(event)) == event  # the platform's key is not the tenant's: no rotation refuses it
    assert tenant_signing_key(SECRET, "acme", 2) != tenant_signing_key(SECRET, "globex", 2)
    assert tenant_signing_key(SECRET, "acme", 2) != tenant_signing_key(SECRET, "acme", 3)
    assert tenant_signing_key(SECRET, "acme", 2) != tenant_signing_key(SECRET + "x", "acme", 2)
    assert tenant_signing_key(SECRET, "acme", 2).startswith("2:")


def test_a_tenant_s_key_signs_its_own_events_only():
    acme = EventSigner(tenant_id="acme", tenant_key=tenant_signing_key(SECRET, "acme", 2))
    assert check(acme.signed(EVENT)) == EVENT
    with pytest.raises(EventLogError, match="cannot publish tenant 'globex'"):
        acme.signed(replace(EVENT, tenant_id="globex"))


def test_a_rotated_key_is_refused_and_the_new_one_is_accepted_before_the_kept_generation_expires():
    kept = {"acme": 2}  # what the stream job believes for a while
    stored = {"acme": 3}  # `tenant credentials` rotated meanwhile

    def lookup(tenant_id: str, fresh: bool) -> int:
        return (stored if fresh else kept)[tenant_id]

    old = EventSigner(tenant_id="acme", tenant_key=tenant_signing_key(SECRET, "acme", 2))
    new = EventSigner(tenant_id="acme", tenant_key=tenant_signing_key(SECRET, "acme", 3))
    assert verified(new.signed(EVENT), SECRET, lookup) == EVENT  # an unknown generation: read again
    kept["acme"] = 3
    with pytest.raises(EventLogError, match="retired key of tenant 'acme' \\(generation 2; .* generation 3"):
        verified(old.signed(EVENT), SECRET, lookup)


@pytest.mark.parametrize("forge, reason", [
    # acme's key on an event naming globex (what acme's Kafka user could write by hand)
    (lambda: EventSigner(tenant_id="globex", tenant_key=tenant_signing_key(SECRET, "acme", 2)).signed(
        replace(EVENT, tenant_id="globex")), "not tenant 'globex''s"),
    # a key for a tenant that was never issued one
    (lambda: EventSigner(tenant_id="initech", tenant_key=tenant_signing_key(SECRET, "initech", 1)).signed(
        replace(EVENT, tenant_id="initech")), "was issued no signing key"),
    # signed, then altered on the way
    (lambda: EventSigner(secret=SECRET).signed(EVENT).replace(b"a.txt", b"b.txt"), "not tenant 'acme''s"),
    (lambda: json.dumps({**json.loads(EVENT.to_bytes()), "revision": 99,
                         **{k: v for k, v in json.loads(EventSigner(secret=SECRET).signed(EVENT)).items()
                            if k in ("sig", "kid")}}).encode(), "altered"),
    (lambda: EVENT.to_bytes(), "unsigned"),
    (lambda: json.dumps({**json.loads(EVENT.to_bytes()), "sig": 7}).encode(), "unsigned"),
    (lambda: json.dumps({**json.loads(EventSigner(secret=SECRET).signed(EVENT)), "kid": "admin"}).encode(),
     "no usable key id"),
    (lambda: json.dumps({**json.loads(EventSigner(secret=SECRET).signed(EVENT)), "kid": True}).encode(),
     "no usable key id"),
    (lambda: EventSigner(secret="another platform").signed(EVENT), "not tenant 'acme''s"),
])
def test_forged_altered_or_unsigned_events_are_refused(forge, reason):
    with pytest.raises(EventLogError, match=reason):
        check(forge())


def test_a_signer_needs_exactly_one_of_the_secret_and_a_well_formed_tenant_key():
    key = tenant_signing_key(SECRET, "acme", 1)
    for kwargs in ({}, {"secret": SECRET, "tenant_id": "acme", "tenant_key": key}, {"tenant_key": key}):
        with pytest.raises(EventLogError):
            EventSigner(**kwargs)
    for malformed in ("00", key.split(":")[1], "0:" + key.split(":")[1], "x:" + key.split(":")[1], "1:abc"):
        with pytest.raises(EventLogError, match="<generation>:<64 hex digits>"):
            EventSigner(tenant_id="acme", tenant_key=malformed)
    assert EventSigner.from_settings("", "") is None  # unsigned: the stream job dead-letters them
    with pytest.raises(EventLogError, match="DATACREEK_EVENT_SIGNING_SECRET"):
        tenant_signing_key("", "acme", 1)
    with pytest.raises(EventLogError, match="positive integer"):
        tenant_signing_key(SECRET, "acme", 0)
