"""The analysis: similarity, importance, owner/location/alignment, compression, the report."""

import json
import math
import re
from pathlib import Path

import pytest
import torch

from reference import naive_importance
from softprompt.analysis.compression import compress, top_tokens
from softprompt.analysis.explain import explain
from softprompt.analysis.importance import (
    ablated_variants,
    exact_importance,
    gradient_importance,
)
from softprompt.analysis.report import write_report
from softprompt.analysis.similarity import inner_complexity, similarity_matrices
from softprompt.analysis.splitting import alignment, knn_location, owners
from softprompt.data import DataSpec, load_split
from softprompt.errors import UsageError
from softprompt.methods.artifact import model_record
from softprompt.methods.prompt import SoftPrompt
from softprompt.tasks.classification import ClassificationTask

R2 = math.sqrt(2)
VERBALIZER = {"negative": " bad", "positive": " good"}


def test_similarity_metrics_worked_out_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    c = torch.tensor([[3.0, 4.0]])
    m = similarity_matrices([a, b, c])
    # means: a -> (.5, .5), b -> (1, 0), c -> (3, 4)
    assert m["cosine_mean_prompt"][0][1] == pytest.approx(0.5 / (R2 / 2))
    assert m["euclidean_mean_prompt"][0][1] == pytest.approx(R2 / 2)
    assert m["euclidean_mean_prompt"][0][2] == pytest.approx(math.hypot(2.5, 3.5))
    # pairwise: token 0 identical, token 1 orthogonal at distance sqrt 2
    assert m["cosine_pairwise"][0][1] == pytest.approx(0.5)
    assert m["euclidean_pairwise"][0][1] == pytest.approx(R2 / 2)
    assert m["cosine_pairwise"][0][2] is None  # lengths differ
    # all pairs, diagonal included: a vs b cosines 1, 1, 0, 0
    assert m["cosine_all_pairs"][0][1] == pytest.approx(0.5)
    assert m["euclidean_all_pairs"][0][1] == pytest.approx(R2 / 2)
    assert m["cosine_all_pairs"][0][0] == pytest.approx(0.5)  # a with itself: 1, 0, 0, 1
    assert m["euclidean_all_pairs"][0][0] == pytest.approx(inner_complexity(a))
    assert inner_complexity(a) == pytest.approx(R2 / 2)
    # a vs c: cos(a0, c) = .6, cos(a1, c) = .8; distances sqrt(4+16)=sqrt 20, sqrt(9+9)=sqrt 18
    assert m["cosine_all_pairs"][0][2] == pytest.approx(0.7)
    assert m["euclidean_all_pairs"][0][2] == pytest.approx((math.sqrt(20) + math.sqrt(18)) / 2)
    for matrix in m.values():
        for i in range(3):
            for j in range(3):
                assert matrix[i][j] == matrix[j][i] or matrix[i][j] == pytest.approx(matrix[j][i])


def test_ablated_variants():
    prompt = torch.arange(6.0).reshape(3, 2)
    zero = ablated_variants(prompt, "zero")
    assert zero.shape == (3, 3, 2)
    assert torch.equal(zero[1], torch.tensor([[0.0, 1], [0, 0], [4, 5]]))
    mean = ablated_variants(prompt, "mean")
    assert torch.equal(mean[0][0], torch.tensor([2.0, 3.0]))
    removed = ablated_variants(prompt, "remove")
    assert torch.equal(removed[2], prompt[:2])


def test_owner_location_and_alignment_on_a_constructed_case():
    importance = torch.tensor([[0.9, 0.1, 0.0, 0.5], [0.2, 0.3, 0.4, 0.5]])
    owner, strength = owners(importance)
    assert owner.tolist() == [0, 1, 1, 0]  # a tie goes to the first model
    assert strength.tolist() == pytest.approx([0.9, 0.3, 0.4, 0.5])
    # model 0's vocabulary points along x, model 1's along y
    table0 = torch.tensor([[1.0, 0.0], [2.0, 0.1], [3.0, -0.1], [1.5, 0.05]])
    table1 = torch.tensor([[0.0, 1.0], [0.1, 2.0], [-0.1, 3.0], [0.05, 1.5]])
    prompt = torch.tensor([[1.0, 0.05], [0.02, 1.0], [2.0, 0.0], [0.0, 2.5]])
    for distance in ("cosine", "l2"):
        location, votes = knn_location(prompt, [table0, table1], k=3, distance=distance)
        assert location.tolist() == [0, 1, 0, 1]
        assert votes.sum(dim=1).tolist() == [3, 3, 3, 3]
        assert alignment(owner, location) == pytest.approx(0.5)  # tokens 0 and 1 agree
    # k = 2 with one neighbour from each model: the tie goes to the nearer row's model
    near0, near1 = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    location, votes = knn_location(
        torch.tensor([[0.4, 0.0], [0.6, 0.0]]), [near0, near1], k=2, distance="l2"
    )
    assert votes.tolist() == [[1, 1], [1, 1]]
    assert location.tolist() == [0, 1]


def test_compression_keeps_exactly_the_given_tokens():
    prompt = SoftPrompt(torch.arange(12.0).reshape(4, 3) + 1, training={"step": 5})
    removed = compress(prompt, [3, 1], "remove")
    assert torch.equal(removed.embedding, prompt.embedding[[1, 3]])
    assert removed.training["compression"] == {"kept": [1, 3], "mode": "remove", "source_length": 4}
    masked = compress(prompt, [1, 3], "mask")
    assert torch.equal(masked.embedding[[1, 3]], prompt.embedding[[1, 3]])
    assert torch.count_nonzero(masked.embedding[[0, 2]]) == 0
    assert top_tokens(torch.tensor([0.1, 0.9, -1.0, 0.5]), 2) == [1, 3]


@pytest.fixture(scope="module")
def small_task(tiny):
    examples = load_split(DataSpec(str(__import__("conftest").SENTIMENT)), "dev")[:12]
    task = ClassificationTask(
        tiny["llama"], "review: {text} sentiment:", VERBALIZER, prompt_length=5
    )
    return task, [task.encode(e) for e in examples]


def test_batched_exact_importance_equals_the_naive_loop(small_task):
    task, encoded = small_task
    prompt = torch.randn(5, 32, generator=torch.Generator().manual_seed(0))
    prompt[2] = 0.0  # zero-ablating an all-zero token changes nothing: importance exactly 0
    exact = exact_importance(task, prompt, encoded, "zero", batch_size=7)
    naive = naive_importance(task, prompt, encoded, "zero", batch_size=3)
    torch.testing.assert_close(exact["loss"], naive, atol=1e-5, rtol=1e-4)
    assert exact["loss"][2] == pytest.approx(0.0, abs=1e-6)
    assert exact["accuracy"][2] == 0.0
    assert exact["loss"].abs().sum() > 0
    torch.testing.assert_close(exact["normalised"], exact["loss"] / exact["base_loss"])
    removed = exact_importance(task, prompt, encoded, "remove")
    assert removed["loss"].shape == (5,)


def test_gradient_estimate_matches_a_finite_difference(small_task):
    task, encoded = small_task
    prompt = torch.randn(5, 32, generator=torch.Generator().manual_seed(1)) * 0.5
    estimate = gradient_importance(task, prompt, encoded, "zero")

    def loss(p):
        batch = task.collate(encoded)
        with torch.no_grad():
            return float(task.losses(task.class_scores(p, batch), batch.labels).mean())

    epsilon = 1e-2
    for token in range(5):
        moved = prompt.clone()
        moved[token] = prompt[token] * (1 - epsilon)  # a small step towards zero
        slope = (loss(moved) - loss(prompt)) / epsilon
        assert estimate[token] == pytest.approx(slope, rel=0.1, abs=1e-4)


def test_explain_two_models_writes_a_self_contained_report(tiny_dirs, tmp_path, sentiment_dir):
    from conftest import corpus
    from softprompt.models import load_backbone
    from softprompt.models.tiny import save_tiny

    other = save_tiny(tmp_path / "other", corpus(), "llama", seed=5)
    models = [load_backbone(str(tiny_dirs["llama"])), load_backbone(str(other))]
    prompt = SoftPrompt(
        torch.randn(6, 32, generator=torch.Generator().manual_seed(2)),
        models=[model_record(models[0])],
        task={"template": "review: {text} sentiment:", "verbalizer": VERBALIZER},
    )
    result = explain(prompt, models, str(sentiment_dir), split="dev", max_examples=10)
    assert len(result["tokens"]) == 6 and len(result["models"]) == 2
    matrix = torch.tensor([m["importance"]["loss"] for m in result["models"]])
    owner, _ = owners(matrix)
    assert [t["owner"] for t in result["tokens"]] == [models[int(o)].name for o in owner]
    for row in result["compression"]:
        index = [m.name for m in models].index(row["model"])
        assert row["kept"] == (owner == index).nonzero().flatten().tolist()
    expected = sum(t["owner"] == t["location_cosine"] for t in result["tokens"]) / 6
    assert result["alignment"]["cosine"] == pytest.approx(expected)
    from softprompt.analysis.projection import project

    points = project(prompt.embedding, [m.embedding_table() for m in models], sample=50)
    assert points["coords"].shape == (106, 2)
    files = write_report(result, points, tmp_path / "report")
    html = (tmp_path / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3
    assert not re.search(r'(src|href)="(?!data:)', html)
    for name in (
        "explain.json",
        "report.md",
        "importance.csv",
        "tokens.csv",
        "neighbours.csv",
        "compression.csv",
        "importance.png",
        "projection.png",
        "neighbours.png",
    ):
        assert (tmp_path / "report" / name).is_file(), name
    assert json.loads((tmp_path / "report" / "explain.json").read_text())["length"] == 6
    assert files["html"].endswith("report.html")


def test_write_explain_report_projects_in_the_prompts_space(tiny, tmp_path, sentiment_dir):
    from softprompt.analysis.explain_report import prompt_projection, write_explain_report
    from softprompt.methods.prompt import save_prompt

    backbone = tiny["llama"]
    prompt = SoftPrompt(
        torch.randn(4, 32, generator=torch.Generator().manual_seed(4)),
        models=[model_record(backbone)],
        task={"template": "review: {text} sentiment:", "verbalizer": VERBALIZER},
    )
    path = save_prompt(prompt, tmp_path / "p.safetensors")
    result = explain(path, [backbone], str(sentiment_dir), split="dev", max_examples=4)
    files = write_explain_report(result, path, [backbone], projection="pca")
    assert files["html"] == str(tmp_path / "p-explain" / "report.html")
    assert (tmp_path / "p-explain" / "projection.png").is_file()
    assert prompt_projection(prompt, [backbone], "none") is None
    wide = SoftPrompt(torch.randn(4, 48))  # another hidden size: only the prompt's points
    points = prompt_projection(wide, [backbone], "pca")
    assert points is not None and points["labels"].tolist() == [-1] * 4
    with pytest.raises(UsageError, match="--projection must be"):
        write_explain_report(result, path, [backbone], projection="mds")
    with pytest.raises(UsageError, match="give the report folder"):
        write_explain_report(result, prompt, [backbone], projection="none")


def test_one_model_compression_keeps_the_top_tokens(tiny, sentiment_dir):
    prompt = SoftPrompt(
        torch.randn(6, 32, generator=torch.Generator().manual_seed(3)),
        task={"template": "review: {text} sentiment:", "verbalizer": VERBALIZER},
    )
    result = explain(
        prompt, [tiny["llama"]], str(sentiment_dir), split="dev", max_examples=8, keep=2
    )
    importance = torch.tensor(result["models"][0]["importance"]["loss"])
    assert result["compression"][0]["kept"] == sorted(importance.topk(2).indices.tolist())
    assert {t["owner"] for t in result["tokens"]} == {tiny["llama"].name}
    assert result["alignment"]["cosine"] == 1.0


def test_compare_and_compress_commands(monkeypatch, capsys, tmp_path, tiny_dirs, sentiment_dir):
    from softprompt.methods.prompt import load_prompt, save_prompt
    from softprompt.models import load_backbone
    from test_cli import invoke

    backbone = load_backbone(str(tiny_dirs["llama"]))
    task = {
        "template": "review: {text} sentiment:",
        "verbalizer": VERBALIZER,
        "data": str(sentiment_dir),
    }
    paths = []
    for seed in range(2):
        embedding = torch.randn(6, 32, generator=torch.Generator().manual_seed(seed))
        prompt = SoftPrompt(embedding, models=[model_record(backbone)], task=task)
        paths.append(save_prompt(prompt, tmp_path / f"p{seed}.safetensors"))
    code, out, err = invoke(monkeypatch, capsys, "compare", *paths, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["prompts"] == [str(p) for p in paths]
    assert sorted(result["metrics"]) == sorted(
        [
            "cosine_mean_prompt",
            "cosine_pairwise",
            "cosine_all_pairs",
            "euclidean_mean_prompt",
            "euclidean_pairwise",
            "euclidean_all_pairs",
        ]
    )
    expected = similarity_matrices([load_prompt(p).embedding for p in paths])
    assert result["metrics"] == expected

    out_path = tmp_path / "short.safetensors"
    code, out, err = invoke(
        monkeypatch,
        capsys,
        "compress",
        paths[0],
        "--keep",
        "2",
        "--out",
        out_path,
        "--split",
        "dev",
        "--json",
    )
    assert code == 0, err
    summary = json.loads(out)
    short = load_prompt(out_path)
    assert short.length == 2 and summary["tokens_after"] == 2
    kept = short.training["compression"]["kept"]
    assert torch.equal(short.embedding, load_prompt(paths[0]).embedding[kept])
    assert set(summary["before"]) >= {"accuracy", "loss"}

    code, _, err = invoke(
        monkeypatch,
        capsys,
        "compress",
        paths[0],
        "--keep",
        "owned",
        "--out",
        out_path,
        "--model",
        "elsewhere",
    )
    assert code == 2 and "one of the prompt's models" in err


def test_variant_metrics_with_multi_token_words_equal_one_pass_per_variant(tiny):
    from softprompt.analysis.importance import variant_metrics

    verbalizer = {"negative": " bad movie", "positive": " good"}
    task = ClassificationTask(
        tiny["llama"], "review: {text} sentiment:", verbalizer, prompt_length=3
    )
    examples = load_split(DataSpec(str(__import__("conftest").SENTIMENT)), "dev")[:5]
    encoded = [task.encode(e) for e in examples]
    assert not task.shared  # one row per class: the per-row prefixes follow row_example
    variants = torch.randn(4, 3, 32, generator=torch.Generator().manual_seed(2))
    batched = variant_metrics(task, variants, encoded, batch_size=3)
    batch = task.collate(encoded)
    for v in range(4):
        with torch.no_grad():
            losses = task.losses(task.class_scores(variants[v], batch), batch.labels)
        assert float(batched["loss"][v]) == pytest.approx(float(losses.mean()), rel=1e-4)


def test_compare_labels_files_by_the_shortest_distinguishing_path(monkeypatch, capsys, tmp_path):
    from softprompt.cli.analysis import distinct_labels
    from softprompt.methods.prompt import save_prompt
    from test_cli import invoke

    paths = [tmp_path / "a" / "prompt.safetensors", tmp_path / "b" / "prompt.safetensors"]
    paths.append(tmp_path / "c.safetensors")
    for seed, path in enumerate(paths):
        save_prompt(
            SoftPrompt(torch.randn(3, 8, generator=torch.Generator().manual_seed(seed))), path
        )
    code, out, err = invoke(monkeypatch, capsys, "compare", *paths, "--json")
    assert code == 0, err
    assert json.loads(out)["labels"] == ["a/prompt", "b/prompt", "c"]
    code, out, err = invoke(monkeypatch, capsys, "compare", *paths)
    assert code == 0, err
    assert "a/prompt" in out and "b/prompt" in out
    assert distinct_labels([Path("x/a/p.pt"), Path("y/a/p.pt"), Path("q.pt")]) == [
        "x/a/p",
        "y/a/p",
        "q",
    ]
    assert distinct_labels([Path("a/p.safetensors"), Path("/r/a/p.safetensors")]) == [
        "a/p",
        "r/a/p",
    ]
    assert distinct_labels([Path("run/p.pt"), Path("run/p.safetensors")]) == [
        "p.pt",
        "p.safetensors",
    ]
