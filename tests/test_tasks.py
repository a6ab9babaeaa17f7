import pytest
import torch

from reference import prompted_hidden
from softprompt.data import Example
from softprompt.errors import ConfigError, DataError
from softprompt.steering.packing import first_fit_decreasing, plan_packing, plan_prompt_packing
from softprompt.steering.prefix import PrefixKV, prefix_geometry
from softprompt.tasks.classification import ClassificationTask, check_template
from softprompt.tasks.lm import LanguageModelingTask

VERBALIZER = {"negative": " bad", "positive": " good"}


def _reference_logprobs(backbone, prompt, ids):
    """Full-vocabulary log-probs at every position, computed the plain way."""
    embeds = torch.cat([prompt[None], backbone.embed(torch.tensor([ids]))], dim=1)
    mask = torch.ones(embeds.shape[:2], dtype=torch.long)
    with torch.no_grad():
        logits = backbone.model(inputs_embeds=embeds, attention_mask=mask).logits[0]
    return torch.log_softmax(logits.float(), dim=-1)[prompt.shape[0] :]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "gemma3"])
def test_causal_single_token_scores_match_the_full_model(tiny, family):
    backbone = tiny[family]
    task = ClassificationTask(backbone, "review: {text} sentiment:", VERBALIZER, prompt_length=3)
    prompt = torch.randn(3, 32) * 0.1
    examples = [Example("great movie", "positive"), Example("it was awful , bad", "negative")]
    batch = task.collate([task.encode(e) for e in examples])
    with torch.no_grad():
        scores = task.class_scores(prompt, batch, full_vocab=True)
        raw = task.class_scores(prompt, batch, full_vocab=False)
    word_ids = [
        backbone.tokenizer(w, add_special_tokens=False).input_ids[0] for w in (" bad", " good")
    ]
    for row, example in enumerate(examples):
        ids = backbone.tokenizer(f"review: {example.text} sentiment:").input_ids
        reference = _reference_logprobs(backbone, prompt, ids)[-1, word_ids]
        torch.testing.assert_close(scores[row], reference, atol=1e-5, rtol=1e-4)
        # restricted logits differ from log-probs by a per-row constant only
        torch.testing.assert_close(
            raw[row] - raw[row, 0], reference - reference[0], atol=1e-5, rtol=1e-4
        )


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "gemma3"])
def test_prompt_gradient_matches_the_plain_concatenated_forward(tiny, family):
    """The causal path runs the prompt once and the texts after its keys/values; its loss and
    gradient must equal running every row as [prompt; text] through the model."""
    backbone = tiny[family]
    task = ClassificationTask(backbone, "review: {text} sentiment:", VERBALIZER, prompt_length=4)
    texts = ["great movie", "it was awful , bad bad", "good", "bad", "it was a great movie , good"]
    examples = [Example(t, "positive" if "good" in t else "negative") for t in texts]
    batch = task.collate([task.encode(e) for e in examples])
    packing = plan_prompt_packing(batch.attention_mask, 4)  # texts share rows: packed path
    assert packing.rows < len(examples)
    start = torch.randn(4, 32) * 0.1
    prompt = start.clone().requires_grad_(True)
    scores = task.class_scores(prompt, batch, full_vocab=True)
    (-scores.gather(1, batch.labels[:, None])).sum().backward()
    reference = start.clone().requires_grad_(True)
    total = 0.0
    for example in examples:
        ids = backbone.tokenizer(f"review: {example.text} sentiment:").input_ids
        embeds = torch.cat([reference[None], backbone.embed(torch.tensor([ids]))], dim=1)
        logits = backbone.model(inputs_embeds=embeds).logits[0, -1].float()
        label = task.class_token_ids[task.label_index(example)]
        total = total - torch.log_softmax(logits, dim=-1)[label]
    total.backward()
    torch.testing.assert_close(prompt.grad, reference.grad, atol=1e-5, rtol=1e-4)


def test_first_fit_decreasing_fills_rows_without_overflow():
    lengths = [12, 10, 6, 5, 5, 2]
    bins = first_fit_decreasing(lengths, 12)
    assert sorted(i for b in bins for i in b) == list(range(6))
    assert all(sum(lengths[i] for i in b) <= 12 for b in bins)
    assert len(bins) == 4  # 12 | 10+2 | 6+5 | 5


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_lm_loss_with_a_prompt_matches_the_concatenated_forward(tiny, family):
    backbone = tiny[family]
    task = LanguageModelingTask(backbone, max_length=64, prompt_length=3)
    texts = ["great movie it was good", "awful", "bad", "it was good , good movie"]
    windows = task.encode_all([Example(t) for t in texts])
    assert plan_prompt_packing(task.collate(windows).attention_mask, 3).rows == 1
    prompt = torch.randn(3, 32) * 0.1
    with torch.no_grad():
        nll, count = task.token_losses(prompt, task.collate(windows))
        assert count == sum(len(w) - 1 for w in windows)
        reference = 0.0
        for window in windows:
            embeds = torch.cat([prompt[None], backbone.embed(torch.tensor([window]))], dim=1)
            logits = backbone.model(inputs_embeds=embeds).logits[0, 3:-1].float()
            reference += torch.nn.functional.cross_entropy(
                logits, torch.tensor(window[1:]), reduction="sum"
            )
    torch.testing.assert_close(nll, reference, atol=1e-4, rtol=1e-5)


def test_causal_multi_token_words_sum_their_log_probs(tiny):
    backbone = tiny["llama"]
    verbalizer = {"positive": " great movie", "negative": " bad"}
    task = ClassificationTask(backbone, "review: {text} sentiment:", verbalizer, prompt_length=2)
    assert not task.shared
    prompt = torch.randn(2, 32) * 0.1
    example = Example("it was fine", "positive")
    with torch.no_grad():
        scores = task.class_scores(prompt, task.collate([task.encode(example)]))
    tok = backbone.tokenizer
    context = tok("review: it was fine sentiment:").input_ids
    great, movie = tok(" great movie", add_special_tokens=False).input_ids
    reference = _reference_logprobs(backbone, prompt, [*context, great])
    expected_positive = reference[len(context) - 1, great] + reference[len(context), movie]
    bad = tok(" bad", add_special_tokens=False).input_ids[0]
    expected_negative = reference[len(context) - 1, bad]
    torch.testing.assert_close(scores[0], torch.stack([expected_positive, expected_negative]))


def test_masked_lm_puts_the_mask_inside_the_attention_mask(tiny):
    backbone = tiny["bert"]
    task = ClassificationTask(backbone, "{text} it was {label} .", VERBALIZER, prompt_length=2)
    encoded = task.encode(Example("great movie", "positive"))
    batch = task.collate([encoded, task.encode(Example("awful", "negative"))])
    mask_id = backbone.tokenizer.mask_token_id
    for row in range(2):
        position = int(batch.positions[row, 0])
        assert batch.input_ids[row, position] == mask_id
        assert batch.attention_mask[row, position] == 1
    ids = batch.input_ids[0][batch.attention_mask[0].bool()].tolist()
    assert ids[0] == backbone.tokenizer.cls_token_id and ids[-1] == backbone.tokenizer.sep_token_id
    prompt = torch.randn(2, 32) * 0.1
    with torch.no_grad():
        scores = task.class_scores(prompt, batch, full_vocab=True)
    reference = _reference_logprobs(backbone, prompt, ids)
    word_ids = [
        backbone.tokenizer(w, add_special_tokens=False).input_ids[0] for w in (" bad", " good")
    ]
    torch.testing.assert_close(scores[0], reference[int(batch.positions[0, 0]), word_ids])


def test_masked_lm_without_label_placeholder_puts_the_slot_at_the_end(tiny):
    task = ClassificationTask(tiny["bert"], "{text} sentiment:", VERBALIZER)
    ids, positions, _ = task.encode(Example("great", "positive")).rows[0]
    assert ids[positions[0]] == tiny["bert"].tokenizer.mask_token_id
    assert positions[0] == len(ids) - 2  # just before [SEP]


def test_long_texts_are_truncated_so_prompt_and_label_fit(tiny):
    backbone = tiny["llama"]
    task = ClassificationTask(
        backbone, "review: {text} sentiment:", VERBALIZER, max_length=24, prompt_length=8
    )
    long_text = " ".join(["great"] * 100)
    ids, positions, _ = task.encode(Example(long_text, "positive")).rows[0]
    assert 8 + len(ids) <= 24
    tail = backbone.tokenizer(" sentiment:", add_special_tokens=False).input_ids
    assert ids[-len(tail) :] == tail
    assert positions == [len(ids) - 1]
    too_small = ClassificationTask(
        backbone, "review: {text} sentiment:", VERBALIZER, max_length=10, prompt_length=8
    )
    with pytest.raises(DataError, match="need more than max_length"):
        too_small.encode(Example(long_text, "positive", where="f.jsonl:3"))


def test_template_errors():
    with pytest.raises(ConfigError, match=r"no \{text\} placeholder"):
        check_template("Sentiment:")
    with pytest.raises(ConfigError, match=r"unknown placeholder\(s\) \{txt\}"):
        check_template("{txt} Sentiment:")
    with pytest.raises(ConfigError, match=r"no \{text_b\}"):
        check_template("{text}", needs_text_b=True)


def test_causal_label_must_end_the_template(tiny):
    with pytest.raises(ConfigError, match="must end the template"):
        ClassificationTask(tiny["llama"], "{text} it was {label} indeed", VERBALIZER)


def test_label_outside_the_verbalizer_names_file_and_line(tiny):
    task = ClassificationTask(tiny["llama"], "{text}", VERBALIZER)
    with pytest.raises(DataError, match=r"data.jsonl:7: label 'neutral' is not in the verbalizer"):
        task.encode(Example("fine", "neutral", where="data.jsonl:7"))


def test_pairs_fill_text_b(tiny):
    task = ClassificationTask(
        tiny["bert"],
        "{text} ? {label} , {text_b}",
        {"yes": " good", "no": " bad"},
        needs_text_b=True,
    )
    ids, _, _ = task.encode(Example("great movie", "yes", text_b="awful")).rows[0]
    text = tiny["bert"].tokenizer.decode(ids)
    assert text == "[CLS] great movie? [MASK], awful [SEP]"


def test_losses_verbalizer_and_vocab(tiny):
    task = ClassificationTask(tiny["llama"], "{text}", VERBALIZER)
    scores = torch.log_softmax(torch.tensor([[1.0, 3.0], [0.5, -0.5]]), dim=-1) - 2.0
    labels = torch.tensor([1, 0])
    ce = task.losses(scores, labels)
    expected = -torch.log_softmax(scores, dim=-1)[torch.arange(2), labels]
    torch.testing.assert_close(ce, expected)
    task.loss_kind = "vocab"
    torch.testing.assert_close(task.losses(scores, labels), -scores[torch.arange(2), labels])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_lm_task_loss_matches_the_models_own_loss(tiny, family):
    backbone = tiny[family]
    task = LanguageModelingTask(backbone, max_length=64)
    windows = task.encode_all([Example("great movie it was good"), Example("awful")])
    batch = task.collate(windows)
    with torch.no_grad():
        nll, count = task.token_losses(None, batch)
        labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
        reference = backbone.model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels
        ).loss
    assert count == sum(len(w) - 1 for w in windows)
    torch.testing.assert_close(nll / count, reference.float(), atol=1e-5, rtol=1e-4)


def test_lm_windows_cover_every_token(tiny):
    task = LanguageModelingTask(tiny["llama"], max_length=8, prompt_length=3)
    text = "great movie it was good and bad and awful"
    windows = task.encode_all([Example(text)])
    assert all(len(w) <= 5 for w in windows)
    flat = [t for w in windows for t in w]
    assert (
        flat
        == task.specials_before + tiny["llama"].tokenizer(text, add_special_tokens=False).input_ids
    )


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_packed_texts_after_a_prefix_equal_each_text_alone(tiny, family):
    backbone = tiny[family]
    layers, heads, dim = prefix_geometry(backbone.model)
    generator = torch.Generator().manual_seed(4)
    prefix = PrefixKV(
        torch.randn(layers, heads, 3, dim, generator=generator),
        torch.randn(layers, heads, 3, dim, generator=generator),
    )
    task = LanguageModelingTask(backbone, max_length=64)
    texts = ["great movie it was good and bad", "awful", "bad movie", "good", "it was"]
    batch = task.collate(task.encode_all([Example(t) for t in texts]))
    assert plan_packing(batch.attention_mask, 3) is not None  # rows are shared: packed path
    with torch.no_grad():
        packed, _ = prompted_hidden(backbone, prefix, batch.input_ids, batch.attention_mask)
        for row in range(len(texts)):
            n = int(batch.attention_mask[row].sum())
            ids, mask = batch.input_ids[row : row + 1, :n], batch.attention_mask[row : row + 1, :n]
            alone, _ = prompted_hidden(backbone, prefix, ids, mask)
            torch.testing.assert_close(packed[row, :n], alone[0], atol=1e-5, rtol=1e-4)


def test_packing_refuses_left_padded_rows():
    left_padded = torch.tensor([[0, 1, 1], [1, 1, 1]])
    with pytest.raises(ValueError, match="right-padded"):
        plan_prompt_packing(left_padded, 2)
    with pytest.raises(ValueError, match="right-padded"):
        plan_packing(left_padded, 2)
