"""The serving engine's steps, driven by hand on tiny models of each causal family: requests
that join at different steps (their prefill packed into the running rows' step), leave at
different steps, with soft prompts, prefixes and nothing, give token for token what each gives
alone through the model's own `generate` (tests/reference.py); sliding-window layers keep
their window."""

from __future__ import annotations

import pytest
import torch

from reference import hf_generate
from softprompt.decoding import blocks as blocks_module
from softprompt.decoding.engine import Engine, Failed, Finished, Job
from softprompt.decoding.options import SamplingOptions
from softprompt.models import load_backbone
from softprompt.steering.base import NoSteering
from softprompt.steering.prefix import PrefixKV, prefix_geometry
from softprompt.steering.prompt import PromptSteering

TEXTS = ["it was good", "awful", "the review was great and positive", "bad", "it was"]


def _steerings(backbone) -> list:
    generator = torch.Generator().manual_seed(1)
    layers, kv_heads, head_dim = prefix_geometry(backbone.model)

    def prefix(length: int) -> PrefixKV:
        shape = (layers, kv_heads, length, head_dim)
        return PrefixKV(
            torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
        )

    d = backbone.hidden_size
    return [
        PromptSteering(torch.randn(3, d, generator=generator)),
        prefix(2),
        NoSteering(),
        PromptSteering(torch.randn(6, d, generator=generator)),
        prefix(5),
    ]


def _run(engine: Engine, batches: list[list[tuple]], steps_between: int) -> list[str]:
    """Submit each batch of (steering, text, max_tokens), `steps_between` steps apart, then
    step until every request is done; the texts in submission order."""
    texts: dict[int, str] = {}
    number = 0
    for batch in batches:
        for steering, text, max_tokens in batch:
            ids = engine.backbone.tokenizer(text).input_ids

            def emit(event, at=number):
                assert not isinstance(event, Failed), event
                if isinstance(event, Finished):
                    texts[at] = event.text

            engine.submit(
                Job(steering, ids, SamplingOptions(max_new_tokens=max_tokens, greedy=True), emit)
            )
            number += 1
        for _ in range(steps_between):
            engine._admit()
            engine._step()
    while len(texts) < number:
        engine._admit()
        engine._step()
    return [texts[i] for i in range(number)]


def _alone(backbone, steering, text: str, max_tokens: int) -> str:
    return hf_generate(backbone, [text], steering, max_tokens)[0]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "gemma3"])
def test_requests_joining_and_leaving_at_different_steps_match_alone(tiny, family, monkeypatch):
    monkeypatch.setattr(blocks_module, "FIRST_BLOCKS", 2)  # the pool grows several times
    backbone = tiny[family]
    steerings = _steerings(backbone)
    first = [(steerings[i], TEXTS[i], 3 + 2 * i) for i in range(3)]
    later = [(steerings[(i + 3) % 5], TEXTS[(i + 1) % 5], 12 - i) for i in range(4)]
    engine = Engine(backbone, max_batch=8)
    served = _run(engine, [first, later], steps_between=2)
    expected = [_alone(backbone, s, t, m) for s, t, m in first + later]
    assert served == expected
    assert engine.running == 0 and engine.pool.used == 0 and engine.pool.reserved == 0


def test_a_sliding_window_shorter_than_the_requests_is_kept(tiny_dirs):
    backbone = load_backbone(str(tiny_dirs["gemma3"]))
    backbone.model.config.sliding_window = 3
    for layer in backbone.model.model.layers:
        if layer.self_attn.sliding_window is not None:
            layer.self_attn.sliding_window = 3
    steerings = _steerings(backbone)
    requests = [(steerings[i], TEXTS[2], 10) for i in range(5)]
    served = _run(Engine(backbone, max_batch=8), [requests[:2], requests[2:]], steps_between=3)
    assert served == [_alone(backbone, s, t, m) for s, t, m in requests]
    wide = load_backbone(str(tiny_dirs["gemma3"]))  # the window matters for these requests
    assert [_alone(wide, s, t, m) for s, t, m in requests] != served


def test_more_requests_than_rows_wait_and_the_queue_drains(tiny):
    backbone = tiny["llama"]
    steerings = _steerings(backbone)
    requests = [(steerings[i % 5], TEXTS[i % 5], 2 + i % 4) for i in range(9)]
    batches: list[int] = []
    engine = Engine(backbone, max_batch=3, on_step=lambda rows, tokens: batches.append(rows))
    served = _run(engine, [requests], steps_between=1)
    assert max(batches) == 3 and engine.pending == 0
    assert served == [_alone(backbone, s, t, m) for s, t, m in requests]


def test_a_failing_step_fails_its_rows_and_the_engine_serves_the_next(tiny, monkeypatch):
    backbone = tiny["llama"]
    engine = Engine(backbone, max_batch=4)
    events: list[object] = []
    ids = backbone.tokenizer(TEXTS[0]).input_ids
    real_forward = backbone.model.forward

    def out_of_memory(*args, **kwargs):
        monkeypatch.setattr(backbone.model, "forward", real_forward)  # only this step fails
        raise RuntimeError("cannot allocate memory")

    monkeypatch.setattr(backbone.model, "forward", out_of_memory)
    job = Job(
        NoSteering(),
        ids,
        SamplingOptions(max_new_tokens=3, greedy=True),
        events.append,
    )
    engine.submit(job)
    engine._admit()
    engine._step()
    assert [type(e) for e in events] == [Failed] and engine.running == 0
    assert engine.pool.used == 0
    served = _run(engine, [[(NoSteering(), TEXTS[0], 3)]], steps_between=0)
    assert served == [_alone(backbone, NoSteering(), TEXTS[0], 3)]
