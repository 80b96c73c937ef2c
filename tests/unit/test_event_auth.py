"""Signed graph events: the platform signs for any tenant, a tenant's key for that tenant only, and
the stream job's check refuses anything else."""

import json
from dataclasses import replace

import pytest

from datacreek_assets.streaming.event_auth import EventSigner, tenant_signing_key, verified
from datacreek_assets.streaming.events import EventLogError, GraphEvent

SECRET = "platform-secret-for-tests"
EVENT = GraphEvent("acme", "a.txt", "chunk", "upsert", "2026-12-03T00:00:00+00:00", {"chunk_id": "a:1"}, revision=4)


def test_the_platform_signs_any_tenant_and_each_event_verifies_as_its_tenant_s():
    platform = EventSigner(secret=SECRET)
    for event in (EVENT, replace(EVENT, tenant_id="globex")):
        assert verified(platform.signed(event), SECRET) == event
    assert tenant_signing_key(SECRET, "acme") != tenant_signing_key(SECRET, "globex")
    assert tenant_signing_key(SECRET, "acme") != tenant_signing_key(SECRET + "x", "acme")


def test_a_tenant_s_key_signs_its_own_events_only():
    acme = EventSigner(tenant_id="acme", tenant_key=tenant_signing_key(SECRET, "acme"))
    assert verified(acme.signed(EVENT), SECRET) == EVENT
    with pytest.raises(EventLogError, match="cannot publish tenant 'globex'"):
        acme.signed(replace(EVENT, tenant_id="globex"))


@pytest.mark.parametrize("forge, reason", [
    # acme's key on an event naming globex (what acme's Kafka user could write by hand)
    (lambda: EventSigner(tenant_id="globex", tenant_key=tenant_signing_key(SECRET, "acme")).signed(
        replace(EVENT, tenant_id="globex")), "not tenant 'globex''s"),
    # signed, then altered on the way
    (lambda: EventSigner(secret=SECRET).signed(EVENT).replace(b"a.txt", b"b.txt"), "not tenant 'acme''s"),
    (lambda: json.dumps({**json.loads(EVENT.to_bytes()), "revision": 99,
                         "sig": json.loads(EventSigner(secret=SECRET).signed(EVENT))["sig"]}).encode(), "altered"),
    (lambda: EVENT.to_bytes(), "unsigned"),
    (lambda: json.dumps({**json.loads(EVENT.to_bytes()), "sig": 7}).encode(), "unsigned"),
    (lambda: EventSigner(secret="another platform").signed(EVENT), "not tenant 'acme''s"),
])
def test_forged_altered_or_unsigned_events_are_refused(forge, reason):
    with pytest.raises(EventLogError, match=reason):
        verified(forge(), SECRET)


def test_a_signer_needs_exactly_one_of_the_secret_and_a_tenant_s_key():
    for kwargs in ({}, {"secret": SECRET, "tenant_id": "acme", "tenant_key": "00"}, {"tenant_key": "00"}):
        with pytest.raises(EventLogError):
            EventSigner(**kwargs)
    assert EventSigner.from_settings("", "") is None  # unsigned: the stream job dead-letters them
    with pytest.raises(EventLogError, match="DATACREEK_EVENT_SIGNING_SECRET"):
        tenant_signing_key("", "acme")
