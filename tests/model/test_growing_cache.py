"""The KV cache that appends in place (GrowingLayer): the same keys and values as transformers' concatenating
DynamicCache, no copy per step, and no cache ever writes into memory another cache holds."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from mmgpt.model.cache import GrowingCache, ModelCache
from tests.model.conftest import tiny_model


def states(rows: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 2, length, 4, generator=g), torch.randn(rows, 2, length, 4, generator=g)


def test_appends_equal_concatenation_and_copy_only_when_the_room_is_used_up():
    growing, dynamic = GrowingCache(), DynamicCache()
    pieces = [5, *[1] * 300]  # a prefill, then one position a step
    buffers = []
    for step, length in enumerate(pieces):
        keys, values = states(3, length, seed=step)
        got = growing.update(keys, values, 0)
        want = dynamic.update(keys, values, 0)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        buffer = growing.layers[0].key_buffer
        if not buffers or buffer.data_ptr() != buffers[-1][0]:
            buffers.append((buffer.data_ptr(), buffer.shape[2], growing.get_seq_length()))
    assert growing.get_seq_length() == sum(pieces) == 305
    # (capacity, positions held once it was made): 5 + 16, 22 + 16, 39 + 16, ..., 257 + 257 // 8, 290 + 290 // 8
    sizes = [(capacity, held) for _, capacity, held in buffers]
    assert sizes[:3] == [(21, 5), (38, 22), (55, 39)] and sizes[-2:] == [(289, 257), (326, 290)]
    assert all(capacity == held + max(16, held // 8) for capacity, held in sizes)
    assert len(buffers) == 15  # 15 buffers for 305 positions, where concatenating copies at every one of 301 steps


def test_a_crop_of_a_cache_writes_into_memory_of_its_own():
    model, tokenizer = tiny_model("llama", "previous")
    ids = torch.tensor([tokenizer("a red circle above a blue square").input_ids])
    one = torch.ones(1, 1, dtype=torch.long)
    with torch.no_grad():
        whole = model(ids, use_cache=True).cache
        kept = whole.kv.layers[0].keys.clone()
        cropped = whole.crop(4, placeholders_seen=torch.tensor([0]), media=None)  # a conversation that changed
        on_crop = model(torch.tensor([[7]]), attention_mask=one, cache=cropped, use_cache=True).cache
        assert torch.equal(whole.kv.layers[0].keys, kept)  # the crop's new position 4 went to its own buffer
        on_whole = model(torch.tensor([[9]]), attention_mask=one, cache=whole, use_cache=True).cache
    assert torch.equal(on_crop.kv.layers[0].keys[:, :, :4], kept[:, :, :4])
    assert not torch.equal(on_crop.kv.layers[0].keys[:, :, 4], on_whole.kv.layers[0].keys[:, :, 4])


def test_keys_set_from_outside_are_copied_before_the_next_append():
    cache = GrowingCache()
    cache.update(*states(4, 3, seed=0), 0)
    layer = cache.layers[0]
    layer.keys, layer.values = layer.keys[[2, 0]], layer.values[[2, 0]]  # as DynamicLayer.batch_select_indices
    before = layer.keys.clone()
    keys, _ = cache.update(*states(2, 1, seed=1), 0)
    assert keys.shape == (2, 2, 4, 4) and torch.equal(keys[:, :, :3], before)


def test_rows_leaving_a_batch_keep_it_appending_in_place():
    model, tokenizer = tiny_model("llama", "previous")
    ids = torch.tensor([tokenizer("a red circle above a blue square").input_ids] * 3)
    with torch.no_grad():
        cache = model(ids, use_cache=True).cache
        buffer = cache.kv.layers[0].key_buffer.data_ptr()
        kept, order = cache.without_rows([0])
        assert order == [2, 1]
        out = model(ids[:2, :1], attention_mask=torch.ones(2, 1, dtype=torch.long), cache=kept, use_cache=True)
    assert out.cache.kv.layers[0].key_buffer.data_ptr() == buffer
    assert out.cache.kv.get_seq_length() == ids.shape[1] + 1


def test_a_merged_batch_has_room_to_grow():
    model, tokenizer = tiny_model("llama", "previous")
    with torch.no_grad():
        caches = [model(torch.tensor([tokenizer(text).input_ids]), use_cache=True).cache for text in ("a", "a b c")]
        merged = ModelCache.merge(caches)
        buffer = merged.kv.layers[0].key_buffer.data_ptr()
        out = model(torch.tensor([[5], [6]]), attention_mask=torch.ones(2, 1, dtype=torch.long), cache=merged,
                    use_cache=True)  # fmt: skip
    assert out.cache.kv.layers[0].key_buffer.data_ptr() == buffer


def test_a_row_leaving_the_batch_is_parked_at_its_exact_size_in_memory_of_its_own():
    model, tokenizer = tiny_model("llama", "previous")
    with torch.no_grad():
        texts = ("a red circle", "a", "a blue square above")
        caches = [model(torch.tensor([tokenizer(text).input_ids]), use_cache=True).cache for text in texts]
        merged = ModelCache.merge(caches)
        parked = merged.row(1)  # as the scheduler does: the leaving row goes back to its session, then leaves
        merged.without_rows([1])  # the last row moves into slot 1 of the batch's buffers, in place
    layer = parked.kv.layers[0]
    assert layer.key_buffer.shape[2] == parked.length == caches[1].length
    assert torch.equal(layer.keys, caches[1].kv.layers[0].keys)


def test_a_batch_most_of_whose_rows_left_gives_their_memory_back():
    model, _ = tiny_model("llama", "previous")
    ids = torch.randint(5, 250, (8, 12), generator=torch.Generator().manual_seed(0))  # 8 different rows
    with torch.no_grad():
        batch = model(ids, use_cache=True).cache
        buffer = batch.kv.layers[0].key_buffer
        row_4 = batch.kv.layers[0].keys[4:5].clone()
        three_left, _ = batch.without_rows([0, 3, 5])  # 5 of 8 rows in use: a view of the same buffers
        assert three_left.kv.layers[0].key_buffer.data_ptr() == buffer.data_ptr()
        one_left, order = three_left.without_rows([0, 1, 2, 3])  # 1 of 8: copied into buffers of its size
        assert order == [4] and one_left.kv.layers[0].key_buffer.shape[0] == 1
        assert torch.equal(one_left.kv.layers[0].keys, row_4)
        out = model(ids[:1, :1], attention_mask=torch.ones(1, 1, dtype=torch.long), cache=one_left, use_cache=True)
    assert out.cache.kv.get_seq_length() == ids.shape[1] + 1
