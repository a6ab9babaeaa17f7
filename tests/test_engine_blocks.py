"""The engine's KV blocks, shared prefixes, chunked prefill and admission by memory
(decoding/blocks.py, scheduler.py, rows.py): attention over scattered blocks equals the plain
attention over each row's keys; rows on one prefix hold it once; a prompt fed in chunks gives
what it gives whole; a request that does not fit waits, and one that never fits fails alone."""

from __future__ import annotations

import pytest
import torch

from reference import hf_generate
from softprompt.decoding.blocks import BlockPool
from softprompt.decoding.engine import Delta, Engine, Failed, Finished, Job, Started
from softprompt.decoding.options import SamplingOptions
from softprompt.decoding.rows import StepAttention
from softprompt.decoding.scheduler import Chunk
from softprompt.steering.base import NoSteering
from softprompt.steering.prefix import PrefixKV, prefix_geometry
from softprompt.steering.prompt import PromptSteering

TEXTS = ["it was good", "awful", "the review was great and positive", "bad", "it was"]


class _Row:
    def __init__(self, length: int, table: list[int]) -> None:
        self.length, self.table = length, table


class _Plan:
    def __init__(self, decode, chunks) -> None:
        self.decode, self.chunks = decode, chunks


def test_attention_over_scattered_blocks_equals_the_plain_attention(tiny):
    """Two decoding rows and one chunk, their blocks interleaved out of order in the pool:
    each output is sdpa over that row's own keys (written earlier + this step's)."""
    model = tiny["llama"].model
    pool = BlockPool(model, torch.float32, torch.device("cpu"), block_size=4)
    _, kv_heads, dim = prefix_geometry(model)
    heads = kv_heads * 2
    generator = torch.Generator().manual_seed(0)
    lengths = [6, 9, 5]  # columns already held: decoding rows 0, 1; the chunk's row
    blocks = pool.allocate(12)
    tables = [[blocks[7], blocks[2]], [blocks[0], blocks[9], blocks[4]], [blocks[11], blocks[5]]]
    old = [torch.randn(2, kv_heads, n, dim, generator=generator) for n in lengths]
    for table, kv in zip(tables, old):
        layers = (pool.layers, -1, -1, -1)
        pool.write(table, 0, kv[0][None].expand(layers), kv[1][None].expand(layers))
    count = 3  # the chunk feeds 3 tokens
    rows = [_Row(n, t) for n, t in zip(lengths, tables)]
    plan = _Plan(rows[:2], [Chunk(rows[2], 0, count, 2)])
    total = 2 + count
    query = torch.randn(1, heads, total, dim, generator=generator)
    key = torch.randn(1, kv_heads, total, dim, generator=generator)
    value = torch.randn(1, kv_heads, total, dim, generator=generator)
    out = StepAttention(pool, plan).attend(0, query, key, value, dim**-0.5)[0]
    for r in range(2):  # decoding rows: one new key at column lengths[r]
        k = torch.cat([old[r][0], key[0, :, r : r + 1]], dim=1)
        v = torch.cat([old[r][1], value[0, :, r : r + 1]], dim=1)
        q = query[0, :, r : r + 1]
        expected = torch.nn.functional.scaled_dot_product_attention(
            q, k.repeat_interleave(2, 0), v.repeat_interleave(2, 0)
        )
        torch.testing.assert_close(out[r], expected[:, 0])
    k = torch.cat([old[2][0], key[0, :, 2:]], dim=1).repeat_interleave(2, 0)
    v = torch.cat([old[2][1], value[0, :, 2:]], dim=1).repeat_interleave(2, 0)
    mask = torch.ones(count, lengths[2] + count, dtype=torch.bool).tril(lengths[2])
    expected = torch.nn.functional.scaled_dot_product_attention(
        query[0, :, 2:], k, v, attn_mask=mask
    )
    torch.testing.assert_close(out[2:], expected.transpose(0, 1))


def _prefix(backbone, length: int, seed: int = 1) -> PrefixKV:
    generator = torch.Generator().manual_seed(seed)
    layers, kv_heads, head_dim = prefix_geometry(backbone.model)
    shape = (layers, kv_heads, length, head_dim)
    return PrefixKV(
        torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    )


def _serve(engine: Engine, requests: list[tuple], steps_between: int = 0) -> list:
    """Submit (steering, text, max_tokens, echo) requests, stepping `steps_between` steps after
    each; every request's events in submission order."""
    events: list[list] = []
    for steering, text, tokens, echo in requests:
        got: list = []
        events.append(got)
        ids = engine.backbone.tokenizer(text).input_ids
        options = SamplingOptions(max_new_tokens=tokens, greedy=True)
        engine.submit(Job(steering, ids, options, got.append, logprobs=2, echo=echo))
        for _ in range(steps_between):
            engine._admit()
            engine._step()
    while not all(got and isinstance(got[-1], Finished | Failed) for got in events):
        engine._admit()
        engine._step()
    return events


def test_rows_on_one_prefix_hold_it_once_and_match_alone(tiny):
    backbone = tiny["llama"]
    prefix = _prefix(backbone, 37)  # two whole blocks of 16 and a tail of 5
    engine = Engine(backbone, max_batch=8)
    used = []
    engine.on_step = lambda rows, tokens: used.append(engine.pool.used)
    requests = [(prefix, TEXTS[i % 5], 6, False) for i in range(8)]
    events = _serve(engine, requests)
    texts = [got[-1].text for got in events]
    assert texts == [hf_generate(backbone, [t], prefix, 6)[0] for _, t, _, _ in requests]
    # 2 shared blocks + per row its tail, prompt and 6 tokens (<= 16 columns: one block)
    own = [engine.pool.blocks_for(5 + len(backbone.tokenizer(t).input_ids) + 6) for t in TEXTS]
    assert max(used) <= 2 + sum(own[i % 5] for i in range(8))
    assert max(used) < 8 * 3  # eight copies would take at least 24 blocks
    assert engine.pool.used == 2 and engine.pool.reserved == 0  # the prefix stays held
    del prefix, requests, events
    engine.scheduler.prefixes.sweep()
    assert engine.pool.used == 0  # its steering gone (the adapter unloaded), its blocks free


def test_a_prompt_fed_in_chunks_gives_what_it_gives_whole(tiny):
    backbone = tiny["gemma3"]
    generator = torch.Generator().manual_seed(3)
    soft = PromptSteering(torch.randn(4, backbone.hidden_size, generator=generator))
    requests = [
        (soft, TEXTS[2], 5, True),
        (_prefix(backbone, 3), TEXTS[0], 7, True),
        (NoSteering(), TEXTS[2] + " " + TEXTS[0], 4, False),
    ]
    whole = _serve(Engine(backbone, max_batch=4), requests, steps_between=1)
    chunked_engine = Engine(backbone, max_batch=4, prefill_chunk=3)
    sizes: list[int] = []  # tokens fed per step
    schedule = chunked_engine.scheduler.schedule

    def recorded():
        plan = schedule()
        sizes.append(plan.tokens if plan else 0)
        return plan

    chunked_engine.scheduler.schedule = recorded
    chunked = _serve(chunked_engine, requests, steps_between=1)
    for a, b in zip(whole, chunked):
        assert [type(e) for e in a if not isinstance(e, Delta)] == [Started, Finished]
        assert a[-1].text == b[-1].text
        for scores in ("tokens", "prompt_logprobs"):  # same tokens, same numbers (to rounding)
            x, y = getattr(a[-1], scores) or [], getattr(b[-1], scores) or []
            assert [t.token for t in x] == [t.token for t in y]
            assert [t.logprob or 0.0 for t in x] == pytest.approx(
                [t.logprob or 0.0 for t in y], abs=1e-4
            )
        assert (a[0].prompt_logprobs is None) == (b[0].prompt_logprobs is None)
    longest = len(backbone.tokenizer(requests[2][1]).input_ids)
    assert longest > 6 and max(sizes) <= 3 + 3  # <= 3 decoding rows + 3 prompt tokens a step


def test_a_request_that_does_not_fit_waits_and_one_that_never_fits_fails(tiny):
    backbone = tiny["llama"]
    engine = Engine(backbone, max_batch=4, max_kv_tokens=32)  # two blocks of 16
    ids = backbone.tokenizer(TEXTS[0]).input_ids
    rows_per_step: list[int] = []
    engine.on_step = lambda rows, tokens: rows_per_step.append(rows)
    requests = [(NoSteering(), TEXTS[0], 16 - len(ids), False)] * 3  # one block each
    requests.append((NoSteering(), TEXTS[2], 40, False))  # can never fit
    events = _serve(engine, requests)
    expected = hf_generate(backbone, [TEXTS[0]], NoSteering(), 16 - len(ids))[0]
    assert [got[-1].text for got in events[:3]] == [expected] * 3
    assert max(rows_per_step) == 2  # the third waited for memory
    assert isinstance(events[3][-1], Failed) and "--max-kv-tokens" in str(events[3][-1].error)
    assert engine.pool.used == 0 and engine.pool.reserved == 0


def test_a_soft_prompts_keys_are_computed_once_and_shared(tiny):
    backbone = tiny["llama"]
    generator = torch.Generator().manual_seed(5)
    soft = PromptSteering(torch.randn(20, backbone.hidden_size, generator=generator))
    engine = Engine(backbone, max_batch=4)
    first = _serve(engine, [(soft, TEXTS[0], 5, False)])
    assert engine.scheduler.prefixes.held(soft).length == 20
    fed: list[int] = []  # prompt tokens fed by the later rows
    schedule = engine.scheduler.schedule

    def recorded():
        plan = schedule()
        if plan is not None:
            fed.extend(c.count for c in plan.chunks)
        return plan

    engine.scheduler.schedule = recorded
    later = _serve(engine, [(soft, text, 5, True) for text in TEXTS[1:4]])
    ids = [backbone.tokenizer(text).input_ids for text in TEXTS[1:4]]
    assert sum(fed) == sum(len(i) for i in ids)  # the soft prompt was not fed again
    texts = [got[-1].text for got in first + later]
    assert texts == [hf_generate(backbone, [t], soft, 5)[0] for t in TEXTS[:4]]
    assert [len(got[-1].prompt_logprobs) for got in later] == [len(i) for i in ids]


def test_each_step_picks_every_sampled_row_in_one_pass(tiny, monkeypatch):
    """decoding/update.py hands all of a step's generating rows to one `sample_rows` call (a
    row asking for no tokens, only its prompt's log-probabilities, is left out of it); each
    row's text stays what the model's own generate gives for it alone."""
    from softprompt.decoding import update as update_module

    backbone = tiny["llama"]
    real, calls, sampled = update_module.sample_rows, [], []

    def counting(samplers, logits):
        assert logits.shape[0] == len(samplers)
        calls.append(len(samplers))
        return real(samplers, logits)

    monkeypatch.setattr(update_module, "sample_rows", counting)
    engine = Engine(backbone, max_batch=8)
    engine.on_step = lambda rows, tokens: sampled.append(tokens)
    requests = [(NoSteering(), t, 5, False) for t in TEXTS[:4]]
    requests.append((NoSteering(), TEXTS[4], 0, True))
    events = _serve(engine, requests)
    assert sampled[0] == 5 and calls[0] == 4  # all joined at once; the 0-token row not picked
    assert calls[1:] == sampled[1:] and len(calls) == len(sampled) > 1
    texts = [got[-1].text for got in events[:4]]
    assert texts == [hf_generate(backbone, [t], NoSteering(), 5)[0] for t in TEXTS[:4]]
    assert events[4][-1].completion_tokens == 0 and events[4][-1].prompt_logprobs
