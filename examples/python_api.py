"""softprompt from Python, cell by cell (`# %%` cells run in VS Code / Jupyter, or as a script).

Train a soft prompt on the bundled SmolLM2, evaluate it against zero-shot, classify new texts,
generate with it, explain which tokens matter, compress it, and round-trip it through a PEFT
adapter: everything the command line does.

    .venv/bin/python examples/python_api.py                    # bundled SmolLM2, 40 steps
    .venv/bin/python examples/python_api.py --model DIR --steps 2 --out /tmp/api   # any model
"""

# %% Set-up
import argparse
import json
from pathlib import Path

import softprompt

ROOT = Path(__file__).resolve().parent
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="smollm2-135m", help="bundled alias, model dir, hub id")
parser.add_argument("--steps", type=int, default=40)
parser.add_argument("--out", type=Path, default=Path("runs/python-api"))
args = parser.parse_args()
if (args.out / "train").exists():
    raise SystemExit(f"{args.out}/train already holds a run; choose another --out")

# %% Train: a config file plus overrides, exactly as `softprompt train CONFIG --set ...`
config = softprompt.load_config(
    ROOT / "configs" / "sentiment.yaml",
    [
        f"models=[{args.model}]",
        f"task.data={ROOT / 'data' / 'sentiment'}",
        f"train.steps={args.steps}",
        f"train.eval_every={max(1, args.steps // 2)}",
        "train.precision=fp32",
    ],
)
summary = softprompt.train(config, args.out / "train", progress=False)
prompt_path = Path(summary["prompt_path"])
print("best dev", summary["best_metric"], summary["best_value"], "->", prompt_path)

# %% Evaluate on the test split, beside the bare model (zero-shot, same template)
backbone = softprompt.load_backbone(args.model)
data = str(ROOT / "data" / "sentiment")
trained = softprompt.evaluate(str(prompt_path), backbone, data)
zero_shot = softprompt.evaluate(
    None,
    backbone,
    data,
    template=config.task.template,
    verbalizer=config.task.verbalizer,
)
print(f"test accuracy: trained {trained['accuracy']:.3f}, zero-shot {zero_shot['accuracy']:.3f}")

# %% Classify new texts
for row in softprompt.predict(str(prompt_path), ["A joy from start to end.", "Dull."], backbone):
    print(row)

# %% Generate with the prompt in front (greedy)
prompt = softprompt.load_prompt(prompt_path)
options = softprompt.SamplingOptions(max_new_tokens=12, greedy=True)
print(softprompt.generate(backbone, ["The film was"], prompt.embedding, options))

# %% Explain: nearest tokens, importance by ablation (gradient estimate: fast), a report
report = softprompt.explain(
    prompt, [backbone], data, importance="gradient", max_examples=16, keep=4
)
files = softprompt.write_report(report, None, args.out / "explain")
print("most important token:", max(report["tokens"], key=lambda t: t["strength"]))
print("report:", files["html"])

# %% Compress: keep the 4 most important tokens
compressed = softprompt.compress_prompt(
    prompt_path, args.model, 4, args.out / "prompt-4.safetensors", data=data, split="dev"
)
print(
    f"4 tokens: accuracy {compressed['before']['accuracy']:.3f} -> "
    f"{compressed['after']['accuracy']:.3f}"
)

# %% PEFT: export as an adapter folder, import it back, compare
adapter = softprompt.export_peft(prompt_path, backbone, args.out / "peft-adapter")
back = softprompt.import_peft(adapter, args.out / "from-peft.safetensors", [backbone])
same = softprompt.similarity_matrices([prompt.embedding, back.embedding])
print("PEFT round trip, cosine:", json.dumps(same["cosine_pairwise"]))
