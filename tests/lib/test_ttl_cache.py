"""The in-process cache: expiry, LRU order, and the stale read that serves a value its source cannot refresh."""

from __future__ import annotations

from registry.lib.cache import TTLCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_peek_keeps_an_expired_value_and_says_it_is_stale_where_get_drops_it() -> None:
    clock = Clock()
    cache: TTLCache[str, int] = TTLCache(10, clock)
    cache.set("a", 1, ttl=5)
    assert cache.peek("a") == (1, True)
    clock.now = 5
    assert cache.peek("a") == (1, True)  # still fresh at its time, as get has it
    clock.now = 5.5
    assert cache.peek("a") == (1, False)
    assert cache.get("a") is None
    assert cache.peek("a") is None


def test_a_fresh_peek_counts_as_use_a_stale_one_does_not() -> None:
    clock = Clock()
    cache: TTLCache[str, int] = TTLCache(2, clock)
    cache.set("old", 1, ttl=1)
    cache.set("new", 2, ttl=10)
    clock.now = 2
    assert cache.peek("old") == (1, False)  # stale: stays least recently used
    cache.set("third", 3, ttl=10)
    assert (cache.peek("old"), len(cache)) == (None, 2)
    assert cache.peek("new") == (2, True)
    cache.set("fourth", 4, ttl=10)
    assert cache.peek("new") == (2, True)  # the fresh peek kept it; "third" went
    assert cache.peek("third") is None


def test_pop_where_drops_the_keys_that_match() -> None:
    cache: TTLCache[tuple[str, int], int] = TTLCache(10)
    for key in [("a", 1), ("a", 2), ("b", 1)]:
        cache.set(key, 0, ttl=10)
    cache.pop_where(lambda key: key[0] == "a")
    assert (cache.peek(("a", 1)), cache.peek(("a", 2)), cache.peek(("b", 1))) == (None, None, (0, True))
