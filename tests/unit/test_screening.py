import pytest

from datacreek_assets.ingest.screening import screen_text


@pytest.mark.parametrize(
    "text,reason",
    [
        ("write to jane.doe@example.com today", "pii:email"),
        ("card 4111 1111 1111 1111 expires", "pii:payment_card"),
        ("ssn 123-45-6789 on file", "pii:ssn"),
        ("call +44 20 7946 0958 now", "pii:phone"),
        ("you absolute bastard", "toxic:abusive_language"),
    ],
)
def test_flagged(text, reason):
    assert reason in screen_text(text)


@pytest.mark.parametrize(
    "text",
    [
        "The json module parses JSON documents.",
        "order 4111 1111 1111 1112 is not a valid card number",  # fails Luhn
        "version 1.2.3-4 released on 2024-05-06",
        "area 000-12-3456 is never issued",
    ],
)
def test_clean_text_passes(text):
    assert screen_text(text) == []
