"""The usage report's days at the ends of the calendar: its window's arithmetic overflowed (a 500) for a
caller's ``until`` on the last day (its end is the next day) or in the first month (the default start is 30
days before it)."""

from __future__ import annotations

from tests.conftest import AppClient, problem


async def test_the_usage_window_at_the_calendars_ends_is_answered_or_refused_by_name(
    client: AppClient, admin: dict[str, str]
) -> None:
    last_day = await client.get("/v1/usage", params={"until": "9999-12-31"}, headers=admin)
    assert last_day.status_code == 422, last_day.text
    assert problem(last_day)["errors"][0]["field"] == "until"

    windows = {}
    for until in ("9999-12-30", "0001-01-01", "0001-01-20"):
        answer = await client.get("/v1/usage", params={"until": until}, headers=admin)
        assert answer.status_code == 200, answer.text
        windows[until] = (answer.json()["since"], answer.json()["until"])
    assert windows == {
        "9999-12-30": ("9999-11-30T00:00:00Z", "9999-12-31T00:00:00Z"),
        "0001-01-01": ("0001-01-01T00:00:00Z", "0001-01-02T00:00:00Z"),
        "0001-01-20": ("0001-01-01T00:00:00Z", "0001-01-21T00:00:00Z"),
    }
