"""The compact cache of trapped clients behaves like a dict of key -> expiry."""

from __future__ import annotations

import ipaddress
import threading

from hypothesis import given
from hypothesis import strategies as st

import filterkit  # noqa: F401
from smtpd_filters.trapcache import TrapCache, cache_key

keys = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.ip_addresses(v=6).map(lambda ip: str(ipaddress.IPv6Network(f"{ip}/64", strict=False))),
)
expiries = st.integers(1, 2**32 - 1)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("raise"), keys, expiries),
        st.tuples(st.just("set"), keys, expiries),
        st.tuples(st.just("pop"), keys, st.just(0)),
        st.tuples(st.just("prune"), st.just(""), expiries),
    ),
    max_size=60,
)


@given(st.dictionaries(keys, expiries, max_size=40), ops)
def test_same_answers_as_a_dict(initial, operations):
    cache = TrapCache.build(initial.items())
    model = dict(initial)
    for op, key, exp in operations:
        if op == "raise":
            changed = cache.raise_to(cache_key(key), exp)
            assert changed == (model.get(key, 0) < exp)
            model[key] = max(model.get(key, 0), exp)
        elif op == "set":
            cache.set(cache_key(key), exp)
            model[key] = exp
        elif op == "pop":
            cache.pop(cache_key(key))
            model.pop(key, None)
        else:
            cache.prune(exp)
            model = {k: e for k, e in model.items() if e > exp}
        assert len(cache) == len(model)
    for key, exp in model.items():
        assert cache.get(cache_key(key)) == exp
    assert sorted(cache.items()) == sorted(model.items())
    assert list(cache.v4) == sorted(cache.v4)  # still sorted: bisection stays right


def test_ipv4_keys_are_ints_and_packed():
    cache = TrapCache.build((f"10.0.{i >> 8}.{i & 255}", 1_800_000_000 + i) for i in range(1000))
    assert cache_key("10.0.1.2") == int(ipaddress.IPv4Address("10.0.1.2"))
    assert cache.get(cache_key("10.0.1.2")) == 1_800_000_000 + 258
    assert cache.get(cache_key("10.0.9.9")) is None and not cache.other
    assert cache.v4.itemsize == 8 and len(cache.v4) == 1000


def test_writers_on_two_threads_keep_it_consistent():
    cache = TrapCache()

    def write(base: int) -> None:
        for i in range(2000):
            cache.raise_to(base + i * 2, 1_800_000_000)

    threads = [threading.Thread(target=write, args=(b,)) for b in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 4000 and list(cache.v4) == sorted(cache.v4)
    assert all(cache.get(i) == 1_800_000_000 for i in range(4000))
