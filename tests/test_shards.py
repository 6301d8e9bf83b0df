"""Shard arithmetic: every id in exactly one shard, shards contiguous and bounded."""
from hypothesis import given, strategies as st

from novarch_batch.pipeline.shards import missing_shards, num_shards, shard, shard_of
from novarch_batch.pipeline.spec import auto_shard_size


@given(count=st.integers(1, 50_000), size=st.integers(1, 5_000))
def test_shards_partition_the_ids(count, size):
    n = num_shards(count, size)
    shards = [shard(k, count, size) for k in range(n)]
    assert shards[0].start == 0 and shards[-1].stop == count
    assert all(a.stop == b.start for a, b in zip(shards, shards[1:]))
    assert all(0 < s.size <= size for s in shards)
    assert sum(s.size for s in shards) == count


@given(count=st.integers(1, 10_000), size=st.integers(1, 500), data=st.data())
def test_shard_of_agrees_with_plan(count, size, data):
    i = data.draw(st.integers(0, count - 1))
    s = shard(shard_of(i, size), count, size)
    assert s.start <= i < s.stop


@given(count=st.integers(1, 5_000), size=st.integers(1, 300), data=st.data())
def test_missing_shards_are_the_complement(count, size, data):
    n = num_shards(count, size)
    done = set(data.draw(st.lists(st.integers(0, n - 1), max_size=n)))
    todo = missing_shards(count, size, done)
    assert {s.index for s in todo} | done == set(range(n))
    assert not {s.index for s in todo} & done


def test_auto_shard_size_rule():
    assert auto_shard_size(1) == 64
    assert auto_shard_size(256) == 64
    assert auto_shard_size(6_400) == 200
    assert auto_shard_size(100_000) == 1000
    assert num_shards(100_000_000, auto_shard_size(100_000_000)) == 100_000
