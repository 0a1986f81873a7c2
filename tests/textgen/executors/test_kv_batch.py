"""The running batch's cache layout: rows join, decode, leave, and the buffers get re-laid out,
and every live row still sees exactly its own keys and values, right-aligned and masked."""

from __future__ import annotations

import torch

from textgen.executors.kv_batch import HEADROOM, KVBatch, new_cache

HEADS, DIM, LAYERS = 2, 3, 2


def prefilled(lengths: list[int], tag: float) -> tuple[object, torch.Tensor, list[torch.Tensor]]:
    """A prefill cache for prompts of `lengths` (left-padded), and each row's real keys."""
    width = max(lengths)
    cache = new_cache()
    keys = torch.stack([torch.arange(width * HEADS * DIM, dtype=torch.float32)
                        .reshape(HEADS, width, DIM) + tag + row * 1000
                        for row in range(len(lengths))])
    for layer in range(LAYERS):
        cache.update(keys + layer, -(keys + layer), layer)
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, width - length:] = 1
    return cache, mask, [keys[row, :, width - n:] for row, n in enumerate(lengths)]


def layers_of(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def decode_step(batch: KVBatch, value: float) -> None:
    """What the model does in one step: append one column per row through the cache."""
    mask, _ = batch.decode_inputs()
    assert batch.cache is not None
    for layer in range(LAYERS):
        column = torch.full((batch.rows, HEADS, 1, DIM), value + layer)
        keys, values = batch.cache.update(column, -column, layer)
        assert keys.shape[2] == mask.shape[1]
    batch.commit_decode()


def row_history(batch: KVBatch, row: int, layer: int = 0) -> torch.Tensor:
    """The keys that row `row` attends to (its masked-in columns)."""
    assert batch.cache is not None
    mask, _ = batch.decode_inputs()
    keys = batch.cache.layers[layer].keys[row]
    return keys[:, mask[row, :-1].bool()]


def test_rows_that_join_later_keep_their_own_prefill_and_all_decode_together():
    batch = KVBatch()
    cache, mask, first = prefilled([5, 3], tag=0.0)
    batch.join(layers_of(cache), mask)
    decode_step(batch, 7.0)
    cache, mask, later = prefilled([9], tag=0.5)  # longer than the batch's history
    batch.join(layers_of(cache), mask)
    decode_step(batch, 8.0)

    assert batch.rows == 3
    step7, step8 = torch.full((HEADS, 1, DIM), 7.0), torch.full((HEADS, 1, DIM), 8.0)
    # Rows 0 and 1 saw their prefill then steps 7 and 8; row 2 its prefill then step 8.
    assert torch.equal(row_history(batch, 0), torch.cat([first[0], step7, step8], 1))
    assert torch.equal(row_history(batch, 1), torch.cat([first[1], step7, step8], 1))
    assert torch.equal(row_history(batch, 2), torch.cat([later[0], step8], 1))
    _, positions = batch.decode_inputs()
    assert positions.squeeze(1).tolist() == [7, 5, 10]


def test_a_leaving_row_is_replaced_by_the_last_row_and_the_others_are_untouched():
    batch = KVBatch()
    cache, mask, _ = prefilled([4, 6, 2], tag=0.0)
    batch.join(layers_of(cache), mask)
    decode_step(batch, 1.0)
    before = {row: row_history(batch, row) for row in range(3)}

    order = batch.drop([0])

    assert order == [2, 1]  # the last row moved into the hole
    assert batch.rows == 2
    for new_row, old_row in enumerate(order):
        assert torch.equal(row_history(batch, new_row), before[old_row])


def test_padding_columns_are_trimmed_when_the_long_row_leaves():
    batch = KVBatch()
    cache, mask, _ = prefilled([20, 2], tag=0.0)
    batch.join(layers_of(cache), mask)
    decode_step(batch, 1.0)
    assert batch.decode_inputs()[0].shape[1] == 22
    batch.drop([0])
    assert batch.decode_inputs()[0].shape[1] == 4  # 2 prompt + 1 decoded + the next


def test_decoding_past_the_headroom_re_lays_out_without_losing_history():
    batch = KVBatch()
    cache, mask, first = prefilled([3, 1], tag=0.0)
    batch.join(layers_of(cache), mask)
    for step in range(HEADROOM + 5):
        decode_step(batch, float(step))
    history = row_history(batch, 1)
    assert history.shape[1] == 1 + HEADROOM + 5
    assert torch.equal(history[:, :1], first[1])
    assert torch.equal(history[:, 1:, 0], torch.arange(HEADROOM + 5.0).expand(HEADS, -1))


def test_an_emptied_batch_takes_new_rows_again():
    batch = KVBatch()
    cache, mask, _ = prefilled([3], tag=0.0)
    batch.join(layers_of(cache), mask)
    batch.drop([0])
    assert batch.rows == 0
    cache, mask, second = prefilled([4, 2], tag=0.25)
    batch.join(layers_of(cache), mask)
    assert torch.equal(row_history(batch, 0), second[0])
    assert torch.equal(row_history(batch, 1), second[1])


def test_a_token_limit_keeps_spare_rows_only_while_they_fit_at_the_new_width():
    """Many short rows, then few long ones: without a limit the buffers would keep every row
    they once held at the long width; with one, capacity x columns stays within it plus
    HEADROOM columns a live row."""
    limit = 600
    batch = KVBatch(token_limit=limit)
    cache, mask, _ = prefilled([4] * 8, tag=0.0)
    batch.join(layers_of(cache), mask)
    batch.drop(list(range(1, 8)))  # one row left, 8 rows of capacity
    cache, mask, expected = prefilled([200], tag=5.0)
    batch.join(layers_of(cache), mask)  # wider than the columns: a re-layout
    keys, _ = batch.buffers(0)
    assert keys.shape[0] * keys.shape[2] <= limit + HEADROOM * batch.rows
    assert torch.equal(row_history(batch, 1), expected[0])
    for step in range(2 * HEADROOM):  # re-layouts as the columns run out: no spare rows
        decode_step(batch, 100.0 + step)
        assert batch.buffers(0)[0].shape[0] == batch.rows


def test_without_a_limit_joins_reuse_the_spare_rows():
    batch = KVBatch()
    cache, mask, _ = prefilled([4] * 8, tag=0.0)
    batch.join(layers_of(cache), mask)
    batch.drop(list(range(1, 8)))
    cache, mask, _ = prefilled([4], tag=5.0)
    batch.join(layers_of(cache), mask)
    assert batch.buffers(0)[0].shape[0] == 8


def test_a_forked_row_sees_its_sources_history_and_then_its_own():
    """n sequences of one request: the copies start from the prompt's cache and diverge."""
    batch = KVBatch()
    cache, mask, first = prefilled([5, 3], tag=0.0)
    batch.join(layers_of(cache), mask)
    batch.fork([1, 1, 0])  # two copies of row 1, one of row 0, past the row capacity
    assert batch.rows == 5
    decode_step(batch, 7.0)
    step7 = torch.full((HEADS, 1, DIM), 7.0)
    for row, source in ((2, 1), (3, 1), (4, 0)):
        assert torch.equal(row_history(batch, row), torch.cat([first[source], step7], 1))
    _, positions = batch.decode_inputs()
    assert positions.squeeze(1).tolist() == [6, 4, 4, 4, 6]
    assert batch.drop([1, 2]) == [0, 3, 4]  # the copies leave like any row
