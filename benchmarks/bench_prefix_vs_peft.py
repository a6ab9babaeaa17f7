"""Prefix tuning: softprompt vs PEFT's PrefixTuningConfig, training and generation (target: at
least as fast as PEFT in both).

Training: softprompt's Trainer on the smiley task (examples/configs/smiley.yaml: method prefix,
L=10, MLP reparameterisation) against a PEFT prefix-tuning loop fed the very same token windows
in the same order, with the same LM loss (mean next-token NLL over the real tokens), AdamW,
gradient clipping at 1.0, constant learning rate, the same precision. PEFT sizes the prefix by
the key-value heads (GQA: token_dim = num_key_value_heads x head_dim) and its MLP is Embedding(L,
token_dim) -> Linear(token_dim, encoder_hidden_size) -> tanh -> Linear(., layers x 2 x
token_dim); softprompt's MLP hidden size is set to token_dim and PEFT starts from softprompt's
weights (output rows reordered to PEFT's layer-major layout), so both compute the same prefix
and their losses must agree step by step (the difference is printed).

Generation: greedy decoding of the same prompts (a batch of the smiley test set's first
sentences, left-padded), the same max_new_tokens, with the trained prefix: softprompt.generation
vs PeftModel.generate with that exact prefix loaded as PEFT's key/value embedding. Tokens/s
counts batch x max_new_tokens; the two continuations must be the same text (printed).

Contenders alternate in blocks (A B A B ...) in one process; medians and ratios are printed.
Run: .venv/bin/python benchmarks/bench_prefix_vs_peft.py [--dtype float32 bfloat16]
     [--steps 5] [--repeats 4] [--batch-size 8] [--gen-batch 4] [--new-tokens 32]
     [--model smollm2-135m] (any model spec: both sides load the same model)
"""

from __future__ import annotations

import argparse
import json

import torch
from common import (
    ROOT,
    alternate,
    default_precisions,
    device,
    loss_agreement,
    machine,
    median,
    ratio_line,
)

from softprompt.config import load_config
from softprompt.data import load_split
from softprompt.generation import SamplingOptions, generate
from softprompt.methods.prefix import PrefixEncoder
from softprompt.models import Backbone, load_backbone
from softprompt.steering.prefix import PrefixKV, prefix_geometry
from softprompt.tasks import data_spec
from softprompt.text.sentences import sentence_ends
from softprompt.training.trainer import Trainer

MODEL = "smollm2-135m"


def smiley_config(overrides: list[str]):
    """examples/configs/smiley.yaml with its data path made absolute, plus overrides."""
    data = f"task.data={ROOT / 'examples/data/smiley'}"
    return load_config(ROOT / "examples/configs/smiley.yaml", [data, *overrides])


def make_trainer(dtype: str, batch_size: int, model: str = MODEL) -> Trainer:
    """softprompt's trainer on the smiley config; MLP width = PEFT's token_dim (see above)."""
    backbone = load_backbone(model, dtype=dtype, device=device())
    _, kv_heads, head_dim = prefix_geometry(backbone.model)
    config = smiley_config(
        [
            f"models={json.dumps([model])}",
            f"prompt.mlp_hidden={kv_heads * head_dim}",
            f"train.precision={dtype}",
            f"train.batch_size={batch_size}",
            "train.steps=100000",
            "train.schedule=constant",
            "train.warmup=0",
            "train.max_grad_norm=1.0",
        ],
    )
    return Trainer(config, "/tmp/bench-prefix", backbones=[backbone], progress=False)


def peft_prefix_model(dtype: str, length: int, projection_hidden: int | None, model: str = MODEL):
    """A fresh copy of the model wrapped by PEFT prefix tuning (MLP when a width is given)."""
    from peft import PrefixTuningConfig, TaskType, get_peft_model

    base = load_backbone(model, dtype=dtype, device=device()).model
    base.set_attn_implementation("sdpa")  # as users run PEFT: transformers' default attention
    config = PrefixTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=length,
        prefix_projection=projection_hidden is not None,
        encoder_hidden_size=projection_hidden,
    )
    return get_peft_model(base, config)


def copy_mlp(ours: PrefixEncoder, peft_model) -> None:
    """Start PEFT's prefix MLP from ours: same embedding and first layer, the last layer's rows
    reordered from our [key/value, layer, kv-dim] layout to PEFT's [layer, key/value, kv-dim]."""
    encoder = peft_model.prompt_encoder["default"]
    layers = ours.geometry[0]
    last = ours.mlp[2]
    width = last.out_features // (2 * layers)
    with torch.no_grad():
        encoder.embedding.weight.copy_(ours.embedding.weight)
        encoder.transform[0].load_state_dict(ours.mlp[0].state_dict())
        weight = last.weight.view(2, layers, width, -1).transpose(0, 1).reshape_as(last.weight)
        bias = last.bias.view(2, layers, width).transpose(0, 1).reshape_as(last.bias)
        encoder.transform[2].weight.copy_(weight)
        encoder.transform[2].bias.copy_(bias)


def load_kv(prefix: PrefixKV, peft_model) -> None:
    """Put final keys/values into a PEFT prefix without MLP: its embedding row for virtual
    token t is [layer][key, value][kv head][head dim], flattened."""
    kv = torch.stack([prefix.keys, prefix.values], dim=1)  # [layers, 2, kv, L, hd]
    flat = kv.permute(3, 0, 1, 2, 4).reshape(prefix.length, -1)
    peft_model.prompt_encoder["default"].load_prompt_embeddings(flat.detach().float())


def peft_training_step(trainer: Trainer, peft_model):
    """PEFT's loop on the trainer's own windows, in the trainer's order, step by step."""
    task, windows = trainer.slots[0].task, trainer.slots[0].train
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=trainer.settings.lr, weight_decay=trainer.settings.weight_decay
    )
    step_number = [0]

    def step() -> float:
        batch = task.collate([windows[i] for i in trainer.step_indices(step_number[0])])
        step_number[0] += 1
        ids, mask = batch.input_ids.to(device()), batch.attention_mask.to(device())
        loss = peft_model(
            input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)
        ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, trainer.settings.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def bench_training(args, dtype: str):
    """Alternate the trainer and the PEFT loop; returns the trainer's model and prefix."""
    trainer = make_trainer(dtype, args.batch_size, args.model)
    state = trainer.fresh_state()
    peft_model = peft_prefix_model(
        dtype, state.module.length, state.module.mlp[0].in_features, args.model
    )
    copy_mlp(state.module, peft_model)
    peft_step = peft_training_step(trainer, peft_model)
    losses = {"softprompt": [], "peft": []}
    contenders = {
        "softprompt": lambda: losses["softprompt"].append(trainer.train_step(state)),
        "peft": lambda: losses["peft"].append(peft_step()),
    }
    for step in contenders.values():  # untimed warm-up step each, the same batch
        step()
    times = alternate(contenders, args.repeats, args.steps)
    rates = {name: args.batch_size / median(t) for name, t in times.items()}
    print(ratio_line(f"  training (batch {args.batch_size})", rates, "samples/s"))
    print("  " + loss_agreement(losses))
    with torch.no_grad():
        return trainer.slots[0].backbone, state.module()


def first_sentences(count: int) -> list[str]:
    """Generation prompts: the first sentence of each smiley test document."""
    examples = load_split(data_spec(smiley_config([]).task), "test")
    texts = [e.text[: sentence_ends(e.text)[0]] for e in examples]
    return (texts * count)[:count]


def bench_generation(args, dtype: str, backbone: Backbone, prefix: PrefixKV) -> None:
    """Greedy generation with the same prefix: softprompt.generate vs PeftModel.generate."""
    prefix = PrefixKV(prefix.keys.detach(), prefix.values.detach())
    texts = first_sentences(args.gen_batch)
    options = SamplingOptions(max_new_tokens=args.new_tokens, greedy=True)
    peft_model = peft_prefix_model(dtype, prefix.length, None, args.model)
    load_kv(prefix, peft_model)
    tokenizer = backbone.tokenizer
    tokenizer.padding_side = "left"
    encoded = tokenizer(texts, return_tensors="pt", padding=True).to(device())
    tokenizer.padding_side = "right"
    outputs = {}

    def ours() -> None:
        outputs["softprompt"] = generate(backbone, texts, prefix, options)

    def theirs() -> None:
        ids = peft_model.generate(
            **encoded,
            max_new_tokens=args.new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        new = ids[:, encoded.input_ids.shape[1] :]
        outputs["peft"] = tokenizer.batch_decode(new, skip_special_tokens=True)

    with torch.no_grad():
        ours(), theirs()  # warm-up
        times = alternate({"softprompt": ours, "peft": theirs}, args.repeats, args.gen_calls)
    tokens = args.gen_batch * args.new_tokens
    rates = {name: tokens / median(t) for name, t in times.items()}
    label = f"  generation (batch {args.gen_batch}, {args.new_tokens} new tokens, greedy)"
    print(ratio_line(label, rates, "tokens/s"))
    same = sum(a == b for a, b in zip(outputs["softprompt"], outputs["peft"]))
    print(f"  same continuations: {same} of {len(texts)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dtype",
        nargs="+",
        choices=["float32", "bfloat16"],
        help="default: both where this machine computes bf16 natively, else float32 only",
    )
    parser.add_argument("--steps", type=int, default=5, help="training steps per block")
    parser.add_argument("--repeats", type=int, default=4, help="blocks per contender")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--gen-batch", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--gen-calls", type=int, default=2, help="generate calls per block")
    parser.add_argument(
        "--model", default=MODEL, help="model spec (alias, local dir, ...) for both sides"
    )
    args = parser.parse_args()
    print(machine())
    for dtype in args.dtype or default_precisions(["float32", "bfloat16"]):
        length = smiley_config([]).prompt.length
        print(f"prefix tuning, {args.model}, L={length}, {dtype}, {args.repeats} blocks, medians:")
        backbone, prefix = bench_training(args, dtype)
        bench_generation(args, dtype, backbone, prefix)


if __name__ == "__main__":
    main()
