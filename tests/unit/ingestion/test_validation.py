"""Per-event and per-item validation rules, on plain values."""

import math

import pytest

from services.ingestion.ingest import EARLIEST_US, IncomingEvent, event_problems, item_problems
from shared.store import ItemRecord

NOW_US = 1_700_000_000_000_000


def event(**overrides: object) -> IncomingEvent:
    fields: dict[str, object] = {
        "event_id": "e1", "user_id": "u1", "item_id": "i1", "event_type": 1, "occurred_at_us": NOW_US - 1
    }
    fields.update(overrides)
    return IncomingEvent(**fields)


def test_a_valid_event_has_no_problems() -> None:
    assert event_problems(event(), NOW_US) == []


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"event_id": ""}, "event_id: must not be empty"),
        ({"user_id": "u" * 129}, "user_id: must be at most 128 characters (got 129)"),
        ({"item_id": "a\x00b"}, "item_id: must not contain NUL characters"),
        ({"event_type": 0}, "type: must not be EVENT_TYPE_UNSPECIFIED"),
        ({"event_type": 7}, "type: unknown event type 7"),
        ({"event_type": -3}, "type: unknown event type -3"),
        ({"occurred_at_us": None}, "occurred_at: missing"),
        ({"occurred_at_us": EARLIEST_US - 1}, "occurred_at: before 1990-01-01"),
        ({"occurred_at_us": NOW_US + 5 * 60 * 1_000_000 + 1}, "occurred_at: more than 5 minutes in the future"),
        ({"occurred_at_nanos_valid": False}, "occurred_at: nanos must be within 0..999999999"),
        ({"platform": "p" * 200}, "platform: must be at most 128 characters (got 200)"),
        ({"value": math.nan}, "value: must be finite (got nan)"),
        ({"value": -math.inf}, "value: must be finite (got -inf)"),
    ],
)
def test_each_bad_field_is_named(overrides: dict, expected: str) -> None:
    assert event_problems(event(**overrides), NOW_US) == [expected]


def test_boundaries_are_accepted() -> None:
    assert event_problems(event(occurred_at_us=EARLIEST_US), NOW_US) == []
    assert event_problems(event(occurred_at_us=NOW_US + 5 * 60 * 1_000_000), NOW_US) == []
    assert event_problems(event(event_id="x" * 128, value=-1e308), NOW_US) == []


def test_every_problem_of_an_event_is_reported() -> None:
    problems = event_problems(event(event_id="", event_type=0, occurred_at_us=None), NOW_US)
    assert [p.split(":")[0] for p in problems] == ["event_id", "type", "occurred_at"]


def test_item_problems_name_their_fields() -> None:
    bad = ItemRecord("", title="t" * 2001, tags=("ok", ""), price=-1.0)
    fields = [field for field, _ in item_problems(bad)]
    assert fields == ["item_id", "title", "price", "tags[1]"]
    assert item_problems(ItemRecord("i1", "Lipstick", "makeup", ("red",), "acme", 9.5)) == []
    assert [f for f, _ in item_problems(ItemRecord("i", tags=tuple("t" * 65)))] == ["tags"]
