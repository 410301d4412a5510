"""Caps, seeded order, rank sharding, language pairing, and exact resume."""

from __future__ import annotations

import itertools

import pytest

from mmgpt.data.mixture import ShardedStream, build_pool, cap_indices, takes_language


def take(stream, n):
    return list(itertools.islice(iter(stream), n))


def test_caps_are_seeded_subsets():
    kept = cap_indices(100, cap=10, seed=0, name="aokvqa")
    assert len(kept) == 10 and kept == sorted(set(kept)) and all(0 <= i < 100 for i in kept)
    assert kept == cap_indices(100, cap=10, seed=0, name="aokvqa")
    assert kept != cap_indices(100, cap=10, seed=1, name="aokvqa")
    assert kept != cap_indices(100, cap=10, seed=0, name="coco")  # each source draws its own subset
    assert cap_indices(5, cap=10, seed=0, name="x") == [0, 1, 2, 3, 4]
    assert cap_indices(5, cap=None, seed=0, name="x") == [0, 1, 2, 3, 4]
    assert cap_indices(5, cap=0, seed=0, name="x") == []


def test_pool_counts_and_proportions():
    pool = build_pool(
        [("llava", list(range(30)), None), ("aokvqa", list(range(100, 200)), 10), ("coco", [7, 8], 512)], seed=3
    )
    assert pool.counts == {"llava": 30, "aokvqa": 10, "coco": 2}
    assert len(pool.items) == 42 and pool.items[:30] == list(range(30)) and pool.items[-2:] == [7, 8]
    assert pool.proportions() == {"llava": 30 / 42, "aokvqa": 10 / 42, "coco": 2 / 42}


def test_order_is_deterministic_and_depends_on_the_seed():
    items = list(range(50))
    first = take(ShardedStream(items, seed=0, name="vl"), 50)
    assert sorted(first) == items and first != items
    assert take(ShardedStream(items, seed=0, name="vl"), 50) == first
    assert take(ShardedStream(items, seed=1, name="vl"), 50) != first


def test_stream_is_endless_with_a_new_permutation_each_epoch():
    stream = ShardedStream(list(range(20)), seed=0)
    epochs = [take(stream, 20) for _ in range(3)]
    assert all(sorted(e) == list(range(20)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    assert stream.state_dict()["epoch"] == 3


def test_rank_shards_do_not_overlap_and_have_equal_length():
    items = list(range(103))
    shards = [take(ShardedStream(items, seed=5, rank=r, world_size=4), 25) for r in range(4)]
    assert all(len(s) == 25 for s in shards)
    flat = [x for s in shards for x in s]
    assert len(set(flat)) == 100  # no item on two ranks; 3 left out so every rank takes 25
    streams = [ShardedStream(items, seed=5, rank=r, world_size=4) for r in range(4)]
    assert {s.shard_size for s in streams} == {25}
    # Interleaving the ranks gives back the single-process order of the same seed.
    single = ShardedStream(items, seed=5, world_size=1).order(0)
    assert [x for group in zip(*shards, strict=True) for x in group] == single[:100]


def test_save_and_restore_resumes_on_exactly_the_next_item():
    items = [f"s{i}" for i in range(30)]
    stream = ShardedStream(items, seed=9, name="lang", rank=1, world_size=2)
    it = iter(stream)
    consumed = [next(it) for _ in range(22)]  # past the end of the first epoch (15 per rank)
    state = stream.state_dict()
    expected = [next(it) for _ in range(10)]
    restored = ShardedStream(items, seed=9, name="lang", rank=1, world_size=2)
    restored.load_state_dict(state)
    assert take(restored, 10) == expected
    assert state["epoch"] == 1 and state["index"] == 7
    assert consumed[15:] == [items[i] for i in stream.order(1)[:7]]


def test_restore_refuses_other_data():
    stream = ShardedStream(list(range(10)), seed=0, name="vl")
    state = stream.state_dict()
    with pytest.raises(ValueError, match="same data, caps, seed and number of ranks"):
        ShardedStream(list(range(11)), seed=0, name="vl").load_state_dict(state)
    with pytest.raises(ValueError, match="same data"):
        ShardedStream(list(range(10)), seed=0, name="vl", world_size=2).load_state_dict(state)
    with pytest.raises(ValueError, match="outside"):
        stream.load_state_dict({**state, "index": 10})


def test_too_few_items_for_the_ranks():
    with pytest.raises(ValueError, match="every rank needs at least one"):
        ShardedStream([1], seed=0, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        ShardedStream([1, 2], seed=0, rank=2, world_size=2)


@pytest.mark.parametrize(
    ("ratio", "expected"),
    [(1.0, [True] * 8), (0.5, [False, True] * 4), (0.0, [False] * 8), (0.25, [False, False, False, True] * 2)],
)
def test_language_batches_spread_at_the_ratio(ratio, expected):
    assert [takes_language(step, ratio) for step in range(8)] == expected
    assert sum(takes_language(step, 0.3) for step in range(1000)) == 300
