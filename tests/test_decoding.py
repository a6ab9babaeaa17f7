"""The one decoder: `softprompt generate` and `softprompt serve` give the same text, token for
token in float32, for the same request and seed (greedy and sampled, under a soft prompt, a
prefix and nothing); and the decoder's pieces (sampler, text) on their own."""

from __future__ import annotations

import json

import openai
import pytest
import torch

from reference import reference_pick
from softprompt.decoding.options import SamplingOptions
from softprompt.decoding.sampler import RowSampler, sample_rows
from softprompt.decoding.text import RowText
from softprompt.serving.server import Server
from test_cli import invoke
from test_serve import write_adapters

TEXTS = ["it was good", "the review was great and positive"]
# (CLI options, the same request's fields): greedy, then sampled in three ways
REQUESTS = [
    (["--greedy"], {"temperature": 0}),
    (["--seed", "3"], {"seed": 3}),
    (
        ["--seed", "11", "--temperature", "0.7", "--top-p", "0.9"],
        {"seed": 11, "temperature": 0.7, "top_p": 0.9},
    ),
    (["--seed", "5", "--top-k", "4"], {"seed": 5, "top_k": 4}),
]


@pytest.fixture(scope="module")
def served(tiny_dirs, tmp_path_factory):
    from softprompt.models import load_backbone

    backbone = load_backbone(str(tiny_dirs["llama"]))
    folder = tmp_path_factory.mktemp("adapters")
    write_adapters(backbone, folder)
    with Server(adapters_dir=folder, model=backbone, port=0, max_batch=8) as server:
        yield server, folder


@pytest.mark.parametrize("adapter", ["prompt3", "prefix4", None])
def test_generate_and_serve_give_the_same_text(served, tiny_dirs, monkeypatch, capsys, adapter):
    server, folder = served
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    prompt = [] if adapter is None else [folder / f"{adapter}.safetensors"]
    for cli_options, fields in REQUESTS:
        args = ["generate", *prompt, "-m", tiny_dirs["llama"], "--device", "cpu", "--json"]
        args += ["--max-new-tokens", "8", *cli_options]
        for text in TEXTS:
            args += ["-t", text]
        code, out, err = invoke(monkeypatch, capsys, *args)
        assert code == 0, err
        key = "generated" if adapter is None else "with_prompt"
        expected = [row[key] for row in json.loads(out)]
        extra = {"top_k": fields.pop("top_k")} if "top_k" in fields else {}
        served_texts = []
        for text in TEXTS:
            reply = client.completions.create(
                model=adapter or server.base_name,
                prompt=text,
                max_tokens=8,
                extra_body=extra,
                **fields,
            )
            served_texts.append(reply.choices[0].text)
        if extra:
            fields.update(extra)
        assert served_texts == expected, (cli_options, adapter)
        assert any(expected), "the tiny model generated nothing: the check would be empty"


def test_sampled_requests_differ_by_seed(served):
    """The equality above is not the bare model's argmax twice: seeds change the samples."""
    server, _ = served
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    texts = {
        client.completions.create(model=server.base_name, prompt=TEXTS[0], max_tokens=8, seed=seed)
        .choices[0]
        .text
        for seed in range(6)
    }
    assert len(texts) > 1


def test_row_sampler_greedy_is_argmax_and_sampling_follows_its_seed():
    logits = torch.tensor([0.1, 2.0, -1.0, 1.9])
    assert RowSampler(SamplingOptions(temperature=0), None, torch.device("cpu")).pick(logits) == 1
    options = SamplingOptions(temperature=1.5)

    def draws(seed):
        sampler = RowSampler(options, seed, torch.device("cpu"))
        return [sampler.pick(logits) for _ in range(20)]

    assert draws(7) == draws(7)
    assert len(set(draws(7))) > 1
    top1 = RowSampler(SamplingOptions(top_k=1), 7, torch.device("cpu"))
    assert {top1.pick(logits) for _ in range(20)} == {1}


def test_row_text_holds_back_a_possible_stop_and_cuts_at_it(tiny):
    tokenizer = tiny["llama"].tokenizer
    ids = tokenizer("it was good and bad", add_special_tokens=False).input_ids
    row = RowText(tokenizer, stop=(" and",))
    pieces, stopped = [], False
    for token in ids:
        stopped = row.add(token)
        pieces.append(row.take_final(finished=stopped))
        if stopped:
            break
    assert stopped
    assert row.text == "it was good"
    assert "".join(pieces) == "it was good"


# every knob alone and together, greedy rows among sampled ones
MIXED_OPTIONS = [
    SamplingOptions(greedy=True),
    SamplingOptions(temperature=0.7, seed=None),
    SamplingOptions(top_k=5),
    SamplingOptions(top_p=0.8, temperature=1.3),
    SamplingOptions(top_k=40, top_p=0.9, temperature=0.6),
    SamplingOptions(presence_penalty=1.5, frequency_penalty=0.7),
    SamplingOptions(temperature=0, frequency_penalty=2.0, logit_bias=((3, 4.0), (9, -100.0))),
    SamplingOptions(top_p=0.5, presence_penalty=-0.5, logit_bias=((0, 2.5),)),
    SamplingOptions(temperature=0.7),
    SamplingOptions(top_k=1),
]


def test_batched_sampler_picks_what_each_row_picks_alone():
    """Over 40 steps of 10 rows with every option, the one batched pass picks, row by row,
    the token that transformers' warpers and torch.multinomial pick from that row's logits
    with that row's generator (tests/reference.py): bit for bit, penalties following each
    row's own tokens."""
    vocab, steps = 300, 40
    logits_source = torch.Generator().manual_seed(0)
    seeds = [None if o.is_greedy else 1000 + i for i, o in enumerate(MIXED_OPTIONS)]
    batched = [RowSampler(o, s, torch.device("cpu")) for o, s in zip(MIXED_OPTIONS, seeds)]
    alone = [None if s is None else torch.Generator().manual_seed(s) for s in seeds]
    generated: list[list[int]] = [[] for _ in MIXED_OPTIONS]
    for _ in range(steps):
        logits = torch.randn(len(MIXED_OPTIONS), vocab, generator=logits_source) * 3
        expected = [
            reference_pick(o, g, row, done)
            for o, g, row, done in zip(MIXED_OPTIONS, alone, logits, generated)
        ]
        given = logits.clone()
        assert sample_rows(batched, logits) == expected
        assert torch.equal(logits, given), "the model's logits (read for logprobs) were changed"
        for done, token in zip(generated, expected):
            done.append(token)
    penalised = generated[5]
    assert len(set(penalised)) > steps // 2, "penalties did not spread the tokens: check is weak"
    assert {token for row in generated[:1] for token in row} != {0}


def test_batched_sampler_rows_do_not_depend_on_their_neighbours():
    """A row's draws are its own: the same seed gives the same tokens alone and among others."""
    options = SamplingOptions(temperature=1.2, top_p=0.95)
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(1))
    alone = RowSampler(options, 42, torch.device("cpu"))
    crowd = [RowSampler(options, seed, torch.device("cpu")) for seed in (1, 2, 42, 3, 4, 5)]
    tokens_alone = [alone.pick(logits[2]) for _ in range(15)]
    tokens_crowd = [sample_rows(crowd, logits)[2] for _ in range(15)]
    assert tokens_alone == tokens_crowd
    assert len(set(tokens_alone)) > 1
