import pytest
import torch

from reference import prompted_hidden
from softprompt.errors import ModelError, UsageError
from softprompt.generation import SamplingOptions, generate, generate_samples

GREEDY = SamplingOptions(max_new_tokens=4, greedy=True)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_batched_generation_equals_one_by_one(tiny, family):
    backbone = tiny[family]
    prompt = torch.randn(3, 32) * 0.5
    texts = ["great movie", "it was awful and bad , really"]
    together = generate(backbone, texts, prompt, GREEDY)
    alone = [generate(backbone, [t], prompt, GREEDY)[0] for t in texts]
    assert together == alone


def test_first_token_is_the_prompted_models_argmax(tiny):
    backbone = tiny["llama"]
    prompt = torch.randn(3, 32)
    enc = backbone.tokenizer(["great movie"], return_tensors="pt")
    with torch.no_grad():
        hidden, _ = prompted_hidden(backbone, prompt, enc.input_ids, enc.attention_mask)
        expected = int(backbone.head_logits(hidden[0, -1]).argmax())
    generated = generate(
        backbone, ["great movie"], prompt, SamplingOptions(max_new_tokens=1, greedy=True)
    )
    assert generated[0].strip() == backbone.tokenizer.decode([expected]).strip()
    bare = generate(backbone, ["great movie"], None, SamplingOptions(max_new_tokens=1, greedy=True))
    with torch.no_grad():
        plain = int(backbone.model(**enc).logits[0, -1].argmax())
    assert bare[0].strip() == backbone.tokenizer.decode([plain]).strip()


def test_sampling_is_seeded(tiny):
    backbone = tiny["llama"]
    options = SamplingOptions(max_new_tokens=6, temperature=1.5, top_k=50, top_p=0.95, seed=3)
    assert generate(backbone, ["great"], None, options) == generate(
        backbone, ["great"], None, options
    )


def test_generation_errors(tiny):
    with pytest.raises(ModelError, match="needs a causal LM"):
        generate(tiny["bert"], ["great"], None, GREEDY)
    with pytest.raises(UsageError, match="temperature"):
        generate(tiny["llama"], ["great"], None, SamplingOptions(temperature=-0.5))


def test_temperature_zero_is_greedy(tiny):
    texts = ["great", "awful movie"]
    zero = SamplingOptions(max_new_tokens=4, temperature=0, seed=3)
    assert generate(tiny["llama"], texts, None, zero) == generate(
        tiny["llama"], texts, None, GREEDY
    )


def test_generate_samples_repeats_each_text_and_compares_with_the_bare_model(tiny):
    backbone = tiny["llama"]
    prompt = torch.randn(3, 32) * 0.5
    rows = generate_samples(backbone, ["great", "awful"], prompt, GREEDY, compare=True)
    assert [set(r) for r in rows] == [{"text", "with_prompt", "without_prompt"}] * 2
    assert [r["with_prompt"] for r in rows] == generate(
        backbone, ["great", "awful"], prompt, GREEDY
    )
    assert [r["without_prompt"] for r in rows] == generate(
        backbone, ["great", "awful"], None, GREEDY
    )
    sampled = SamplingOptions(max_new_tokens=3, seed=1)
    rows = generate_samples(backbone, ["great", "awful"], None, sampled, num_samples=2)
    assert [r["text"] for r in rows] == ["great", "great", "awful", "awful"]
    assert all(set(r) == {"text", "generated"} for r in rows)


def test_generate_samples_errors(tiny):
    with pytest.raises(UsageError, match="--compare needs a PROMPT"):
        generate_samples(tiny["llama"], ["great"], None, GREEDY, compare=True)
    with pytest.raises(UsageError, match="--num-samples needs sampling"):
        generate_samples(tiny["llama"], ["great"], torch.zeros(2, 32), GREEDY, num_samples=2)


SAMPLED = SamplingOptions(max_new_tokens=8, temperature=1.5, seed=0)


@pytest.mark.parametrize("prompt", [None, torch.randn(3, 32) * 0.5])
def test_a_sampled_text_continues_the_same_alone_or_in_any_batch(tiny, prompt):
    """A row samples from its own seeded generator: batching the text with two others, in
    any position, does not change its continuation."""
    backbone = tiny["llama"]
    text = "great movie"
    others = ["it was awful and bad , really", "review : good"]
    alone = generate(backbone, [text], prompt, SAMPLED)[0]
    first = generate(backbone, [text, *others], prompt, SAMPLED)
    last = generate(backbone, [*others, text], prompt, SAMPLED)
    assert first[0] == alone
    assert last[2] == alone
    assert first[1:] == last[:2]  # the others too are unmoved by their places


def test_sampling_depends_on_the_seed_and_the_sample_number(tiny):
    """Sampling does sample: over several seeds the tiny random model gives several different
    continuations, and the samples of one text under one seed differ from each other."""
    backbone = tiny["llama"]
    texts = ["great movie"]
    seeds = {generate(backbone, texts, None, SamplingOptions(8, seed=s))[0] for s in range(6)}
    assert len(seeds) > 1
    rows = generate_samples(backbone, texts, None, SAMPLED, num_samples=4)
    assert len({r["generated"] for r in rows}) > 1
    greedy = SamplingOptions(max_new_tokens=8, greedy=True)
    assert len({generate(backbone, texts, None, greedy)[0] for _ in range(2)}) == 1
