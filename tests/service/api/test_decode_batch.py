"""DecodeBatch bookkeeping on plain tensors: joining left-pads the shorter cache in time, leaving
trims the columns no remaining row attends to, and a row's real keys/values and mask survive
both unchanged (so its attention, and its text, cannot change when others join or leave)."""

from __future__ import annotations

import torch

from service.api.backends.decode_batch import DecodeBatch, sample_rows

LAYERS, HEADS, DIM = 2, 3, 4


def batch(rows: int, width: int, pad: list[int], seed: int) -> DecodeBatch:
    """``rows`` rows over ``width`` cache columns, row i with ``pad[i]`` leading padding columns."""
    g = torch.Generator().manual_seed(seed)
    kv = [
        (torch.randn(rows, HEADS, width, DIM, generator=g), torch.randn(rows, HEADS, width, DIM, generator=g))
        for _ in range(LAYERS)
    ]
    mask = torch.tensor([[0] * p + [1] * (width - p) for p in pad])
    return DecodeBatch(kv, mask, torch.arange(rows) + 100 * seed)


def real(b: DecodeBatch, row: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The row's keys at its real (unmasked) columns, per layer, and its last token."""
    cols = b.mask[row].bool()
    return [k[row][:, cols] for k, _ in b.kv], b.last[row]


def test_join_then_leave_keeps_every_rows_real_cache_and_trims_dead_columns():
    running = batch(2, 7, pad=[0, 3], seed=1)
    joining = batch(3, 4, pad=[1, 0, 2], seed=2)
    joined = DecodeBatch.concat(running, joining)

    assert joined.mask.shape == (5, 7) and all(k.shape == (5, HEADS, 7, DIM) for k, _ in joined.kv)
    assert joined.mask[2:, :3].sum() == 0  # the joining rows were left-padded by 3 columns
    for i, (src, row) in enumerate([(running, 0), (running, 1), (joining, 0), (joining, 1), (joining, 2)]):
        want_keys, want_last = real(src, row)
        got_keys, got_last = real(joined, i)
        assert all(torch.equal(a, b) for a, b in zip(got_keys, want_keys, strict=True)) and got_last == want_last

    # the long running rows leave: only columns some remaining row attends to are kept
    left = joined.select([3, 2])
    assert left.mask.shape == (2, 4)  # the 3 columns only the leaving rows used are gone
    assert torch.equal(left.mask, torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]]))
    for i, row in enumerate([1, 0]):
        want_keys, want_last = real(joining, row)
        got_keys, got_last = real(left, i)
        assert all(torch.equal(a, b) for a, b in zip(got_keys, want_keys, strict=True)) and got_last == want_last
    assert joined.select([]) is None


def test_step_inputs_position_is_each_rows_count_of_real_tokens():
    b = batch(3, 5, pad=[0, 2, 4], seed=3)
    inputs = b.step_inputs()
    assert inputs["position_ids"].tolist() == [[5], [3], [1]]
    assert inputs["attention_mask"].shape == (3, 6) and inputs["attention_mask"][:, -1].tolist() == [1, 1, 1]
    assert inputs["input_ids"].tolist() == [[300], [301], [302]]
    assert inputs["past_key_values"].get_seq_length() == 5


def test_greedy_rows_take_the_argmax_and_top_p_keeps_only_the_nucleus():
    torch.manual_seed(0)
    logits = torch.tensor([[0.0, 5.0, 1.0, 0.5], [3.0, 2.9, -9.0, -9.0], [0.0, 0.0, 9.0, 0.0]])
    greedy = torch.tensor([True, False, False])
    for _ in range(50):
        out = sample_rows(logits, torch.tensor([1.0, 1.0, 1.0]), torch.tensor([1.0, 0.5, 0.1]), greedy)
        assert out[0] == 1  # greedy
        assert out[1] == 0  # top_p 0.5: token 0 alone holds > half the mass
        assert out[2] == 2  # the top token always stays
