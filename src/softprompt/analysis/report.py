"""The explain report: figures (PNG), tables (CSV), explain.json, report.md and a
self-contained report.html (images embedded, opens offline)."""

from __future__ import annotations

import base64
import csv
import json
from pathlib import Path

import numpy as np

from softprompt.files import atomic_file, atomic_text_file, write_text_atomic

HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>softprompt explain: {{ name }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
td, th { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right; }
th { background: #f3f3f3; } td.text { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5rem 0; }
.summary { background: #f7f9fc; padding: 0.75rem 1rem; border-radius: 6px; }
</style></head><body>
<h1>What the prompt learned</h1>
<p class="summary">Prompt <b>{{ name }}</b> ({{ length }} tokens) on {{ models|length }} model(s),
{{ split }} split of <code>{{ data }}</code>, ablation <b>{{ ablation }}</b>,
importance <b>{{ importance }}</b>.<br>
{% if models|length > 1 %}Alignment of owner and location: cosine <b>{{ "%.2f"|format(alignment.cosine) }}</b>,
L2 <b>{{ "%.2f"|format(alignment.l2) }}</b> (chance {{ "%.2f"|format(chance) }}).{% endif %}</p>
<h2>Models</h2>
<table><tr><th>model</th><th>loss</th><th>accuracy</th></tr>
{% for m in per_model %}<tr><td class="text">{{ m.name }}</td><td>{{ "%.4f"|format(m.base_loss) }}</td>
<td>{{ "%.3f"|format(m.base_accuracy) if m.base_accuracy is not none else "" }}</td></tr>{% endfor %}</table>
<h2>Importance (models x tokens)</h2>
<img alt="importance heatmap" src="data:image/png;base64,{{ images.importance }}">
<h2>Tokens: owner and location</h2>
<table><tr><th>token</th><th>owner</th><th>importance</th><th>location (cosine)</th><th>location (L2)</th>
{% for name in model_names %}<th>nearest in {{ name }}</th>{% endfor %}</tr>
{% for t in tokens %}<tr><td>{{ t.index }}</td><td class="text">{{ t.owner }}</td>
<td>{{ "%.4f"|format(t.strength) }}</td><td class="text">{{ t.location_cosine }}</td>
<td class="text">{{ t.location_l2 }}</td>
{% for n in t.nearest %}<td class="text">{{ n }}</td>{% endfor %}</tr>{% endfor %}</table>
<h2>Compression</h2>
<table><tr><th>model</th><th>mode</th><th>tokens kept</th><th>loss</th><th>accuracy</th></tr>
{% for c in compression %}<tr><td class="text">{{ c.model }}</td><td class="text">{{ c.mode }}</td>
<td>{{ c.tokens }}</td><td>{{ "%.4f"|format(c.loss) }}</td><td>{{ "%.3f"|format(c.accuracy) }}</td></tr>{% endfor %}</table>
<h2>Nearest vocabulary tokens</h2>
<img alt="nearest tokens" src="data:image/png;base64,{{ images.neighbours }}">
<h2>Projection</h2>
<img alt="projection" src="data:image/png;base64,{{ images.projection }}">
</body></html>
"""


def short(name: str) -> str:
    return Path(name).name or name


def figures(result: dict, projection: dict | None, folder: Path) -> dict[str, Path]:
    """Write the PNG figures; returns their paths by name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [short(m["name"]) for m in result["models"]]
    importance = np.array([m["importance"]["loss"] for m in result["models"]])
    paths = {}

    fig, ax = plt.subplots(figsize=(max(6, importance.shape[1] * 0.45), 1 + 0.6 * len(names)))
    image = ax.imshow(importance, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(names)), names)
    ax.set_xticks(range(importance.shape[1]))
    ax.set_xlabel("prompt token")
    ax.set_title("loss increase when the token is ablated")
    fig.colorbar(image, ax=ax)
    paths["importance"] = _save(fig, folder / "importance.png")

    rows = [
        [str(t["index"])] + [t["nearest"][i] for i in range(len(names))] for t in result["tokens"]
    ]
    fig, ax = plt.subplots(figsize=(2 + 2.5 * len(names), 0.35 * len(rows) + 1))
    ax.axis("off")
    ax.table(cellText=rows, colLabels=["token", *names], loc="center", cellLoc="left")
    ax.set_title("nearest vocabulary token (cosine)")
    paths["neighbours"] = _save(fig, folder / "neighbours.png")

    fig, ax = plt.subplots(figsize=(7, 6))
    if projection is not None:
        coords, labels = projection["coords"], projection["labels"]
        for model, name in enumerate(names):
            chosen = labels == model
            ax.scatter(coords[chosen, 0], coords[chosen, 1], s=4, alpha=0.35, label=name)
        prompt_points = coords[labels == -1]
        ax.scatter(
            prompt_points[:, 0],
            prompt_points[:, 1],
            s=60,
            c="black",
            marker="*",
            label="prompt tokens",
        )
        for token, (x, y) in zip(result["tokens"], prompt_points):
            ax.annotate(f"{token['index']}:{short(token['owner'])}", (x, y), fontsize=7)
        ax.legend(loc="best", fontsize=7)
    ax.set_title("prompt tokens among vocabulary embeddings")
    paths["projection"] = _save(fig, folder / "projection.png")
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_file(path) as temporary:
        fig.savefig(temporary, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def write_tables(result: dict, folder: Path) -> None:
    with atomic_text_file(folder / "importance.csv") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["model", "token", "importance_loss", "importance_accuracy", "importance_normalised"]
        )
        for model in result["models"]:
            imp = model["importance"]
            for token in range(len(imp["loss"])):
                accuracy = imp["accuracy"][token] if imp["accuracy"] is not None else ""
                writer.writerow(
                    [model["name"], token, imp["loss"][token], accuracy, imp["normalised"][token]]
                )
    with atomic_text_file(folder / "tokens.csv") as handle:
        writer = csv.writer(handle)
        writer.writerow(["token", "owner", "importance", "location_cosine", "location_l2"])
        for t in result["tokens"]:
            writer.writerow(
                [t["index"], t["owner"], t["strength"], t["location_cosine"], t["location_l2"]]
            )
    with atomic_text_file(folder / "neighbours.csv") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "token", "by", "rank", "neighbour", "score"])
        for model in result["models"]:
            for row in model["neighbours"]:
                for by in ("cosine", "l2"):
                    for rank, entry in enumerate(row[by], start=1):
                        writer.writerow(
                            [model["name"], row["index"], by, rank, entry["token"], entry["score"]]
                        )
    with atomic_text_file(folder / "compression.csv") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "mode", "kept", "tokens", "loss", "accuracy", "macro_f1"])
        for c in result["compression"]:
            writer.writerow(
                [
                    c["model"],
                    c["mode"],
                    " ".join(map(str, c["kept"])),
                    c["tokens"],
                    c["loss"],
                    c["accuracy"],
                    c["macro_f1"],
                ]
            )


def write_report(result: dict, projection: dict | None, folder: Path) -> dict[str, str]:
    """Everything into `folder`; returns the written files by kind."""
    from jinja2 import Environment

    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "explain.json", json.dumps(result, indent=2))
    write_tables(result, folder)
    pngs = figures(result, projection, folder)
    images = {k: base64.b64encode(p.read_bytes()).decode() for k, p in pngs.items()}
    context = {
        **result,
        "images": images,
        "model_names": [short(m["name"]) for m in result["models"]],
        "per_model": [
            {
                "name": short(m["name"]),
                "base_loss": m["base_loss"],
                "base_accuracy": m["base_accuracy"],
            }
            for m in result["models"]
        ],
        "tokens": [
            {
                **t,
                "owner": short(t["owner"]),
                "location_cosine": short(t["location_cosine"]),
                "location_l2": short(t["location_l2"]),
            }
            for t in result["tokens"]
        ],
        "compression": [{**c, "model": short(c["model"])} for c in result["compression"]],
        "chance": 1 / len(result["models"]),
    }
    html = Environment(autoescape=True).from_string(HTML).render(**context)
    write_text_atomic(folder / "report.html", html)
    write_text_atomic(folder / "report.md", markdown(result))
    return {
        "html": str(folder / "report.html"),
        "markdown": str(folder / "report.md"),
        "json": str(folder / "explain.json"),
        **{k: str(p) for k, p in pngs.items()},
    }


def markdown(result: dict) -> str:
    names = [short(m["name"]) for m in result["models"]]
    lines = [f"# What the prompt learned: {result['name']}", ""]
    lines.append(
        f"{result['length']} tokens, {len(names)} model(s), {result['split']} split, "
        f"ablation {result['ablation']}, importance {result['importance']}."
    )
    if len(names) > 1:
        lines.append(
            f"Alignment: cosine {result['alignment']['cosine']:.2f}, L2 "
            f"{result['alignment']['l2']:.2f} (chance {1 / len(names):.2f})."
        )
    lines += [
        "",
        "| token | owner | importance | location (cosine) | "
        + " | ".join(f"nearest in {n}" for n in names)
        + " |",
        "|---|---|---|---|" + "---|" * len(names),
    ]
    for t in result["tokens"]:
        nearest = " | ".join(f"`{n}`" for n in t["nearest"])
        lines.append(
            f"| {t['index']} | {short(t['owner'])} | {t['strength']:.4f} | "
            f"{short(t['location_cosine'])} | {nearest} |"
        )
    lines += ["", "| model | mode | tokens | loss | accuracy |", "|---|---|---|---|---|"]
    for c in result["compression"]:
        lines.append(
            f"| {short(c['model'])} | {c['mode']} | {c['tokens']} | {c['loss']:.4f} | "
            f"{c['accuracy']:.3f} |"
        )
    lines += ["", "![importance](importance.png)", "", "![projection](projection.png)", ""]
    return "\n".join(lines)
