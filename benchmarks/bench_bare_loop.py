"""Overhead vs the bare limit: softprompt's Trainer against the smallest hand-written PyTorch
loop that computes the same loss on the same batches (target: the trainer within 10%).

Both train a 16-token prompt for the sample sentiment task on the bundled SmolLM2: the same
starting prompt, the same examples in the same order, the same batch size, AdamW with the same
learning rate, constant schedule, no clipping, the same precision. The bare loop tokenises every
example once up front, prepends the prompt embeddings, runs the frozen model, takes the logits
of the verbalizer tokens at the label position, cross-entropy, backward, step. The two
alternate in blocks (A B A B ...) in one process; after the same number of steps their losses
must agree (the difference is printed).

Also printed: the FLOP/s the model achieves while training, against two matmul limits measured
in the same run, in fp32 and bf16, each warm (untimed calls first) and the best of several timed
blocks: a square --matmul-size matmul, and the model-shape limit, the step's own GEMMs (every
linear layer's forward and input gradient at the contender's tokens per step; common.py,
prompt_tuning_gemms) timed the same way, total FLOPs over total best time.
FLOPs per step = 4 * N * tokens, N = parameters of the transformer body (embeddings and LM
head excluded: the verbalizer loss uses 2 rows of the head), tokens = the positions each
contender runs through the model: batch x (16 + padded text width) for the bare loop; for the
trainer on a CPU, rows of [prompt | text | text ...] x their width. 4N = forward
2N + backward 2N for the activation gradients only: the frozen weights get no weight gradient,
so the usual 6N (which adds 2N for weight gradients) would overstate the work; 6N is printed
too, labelled, for comparison with fine-tuning figures. Attention-score FLOPs (about 1% at
these lengths) are left out.

Run: .venv/bin/python benchmarks/bench_bare_loop.py [--dtype float32|bfloat16]
     [--steps 5] [--repeats 4] [--batch-size 8] [--matmul-size 2048] [--matmul-blocks 5]
     [--matmul-per-block 10] [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from common import (
    BLOCK_S,
    ROOT,
    SHAPE_BUDGET_S,
    WARMUP_CALLS,
    alternate,
    default_precisions,
    gemm_pass,
    limits_line,
    loss_agreement,
    machine,
    matmul_limits,
    median,
    prompt_tuning_gemms,
    ratio_line,
    total_flops,
)

from softprompt.config import load_config
from softprompt.data import load_split
from softprompt.steering.packing import PROMPT_ROW_TOKENS, first_fit_decreasing
from softprompt.tasks import data_spec
from softprompt.training.trainer import Trainer

PROMPT_LENGTH = 16
MODEL = "smollm2-135m"
DTYPES = ["float32", "bfloat16"]
GEMMS_ALONE = "the trainer's GEMMs alone"  # the floor's name among the alternated contenders


def make_trainer(dtype: str, batch_size: int, model: str = MODEL) -> Trainer:
    """softprompt's trainer on the demo task, set to the bare loop's plain AdamW."""
    config = load_config(
        ROOT / "examples/configs/sentiment.yaml",
        [
            f"models={json.dumps([model])}",
            f"task.data={ROOT / 'examples/data/sentiment'}",
            f"prompt.length={PROMPT_LENGTH}",
            f"train.precision={dtype}",
            f"train.batch_size={batch_size}",
            f"train.micro_batch_size={batch_size}",
            "train.steps=100000",
            "train.schedule=constant",
            "train.warmup=0",
            "train.max_grad_norm=null",
        ],
    )
    return Trainer(config, "/tmp/bench-bare-loop", progress=False)


class BareLoop:
    """The smallest loop computing the trainer's loss: everything tokenised and padded once."""

    def __init__(self, trainer: Trainer, prompt: torch.Tensor, schedule: list[list[int]]):
        backbone = trainer.backbones[0]
        task_config = trainer.config.task
        self.model, self.device = backbone.model, backbone.device
        examples = load_split(data_spec(task_config), "train")
        words = list(task_config.verbalizer.values())
        texts = [task_config.template.replace("{text}", e.text) for e in examples]
        encoded = backbone.tokenizer(texts, padding=True, return_tensors="pt")
        self.input_ids = encoded.input_ids.to(self.device)
        self.mask = encoded.attention_mask.to(self.device)
        self.lengths = self.mask.sum(1)
        labels = [list(task_config.verbalizer).index(e.label) for e in examples]
        self.labels = torch.tensor(labels, device=self.device)
        word_ids = [backbone.tokenizer(w, add_special_tokens=False).input_ids[0] for w in words]
        self.head_rows = self.model.get_output_embeddings().weight[word_ids]  # [C, d]
        self.schedule = [torch.tensor(s, device=self.device) for s in schedule]
        self.prompt = torch.nn.Parameter(prompt.detach().clone())
        settings = trainer.settings
        self.optimizer = torch.optim.AdamW(
            [self.prompt], lr=settings.lr, weight_decay=settings.weight_decay
        )
        self.step_number = 0

    def check_tokens(self, trainer: Trainer) -> None:
        """Stop unless every example's tokens equal the trainer's own encoding of it."""
        for i, item in enumerate(trainer.slots[0].train):
            ids = self.input_ids[i, : int(self.lengths[i])].tolist()
            if ids != item.rows[0][0]:
                raise SystemExit(f"bare loop tokenises train example {i} differently")

    def step(self) -> float:
        rows = self.schedule[self.step_number]
        self.step_number += 1
        lengths = self.lengths[rows]
        width = int(lengths.max())
        ids, mask = self.input_ids[rows, :width], self.mask[rows, :width]
        embeds = self.model.get_input_embeddings()(ids)
        soft = self.prompt.to(embeds.dtype).expand(len(rows), -1, -1)
        mask = torch.cat([mask.new_ones(len(rows), PROMPT_LENGTH), mask], dim=1)
        hidden = self.model.base_model(
            inputs_embeds=torch.cat([soft, embeds], dim=1), attention_mask=mask, use_cache=False
        ).last_hidden_state
        label_hidden = hidden[
            torch.arange(len(rows), device=self.device), PROMPT_LENGTH + lengths - 1
        ]
        logits = (label_hidden @ self.head_rows.T).float()
        loss = F.cross_entropy(logits, self.labels[rows])
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


def body_parameters(model: torch.nn.Module) -> int:
    """N: the parameters every token passes through (body without embeddings / LM head)."""
    skip = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dtype",
        nargs="+",
        choices=DTYPES,
        help="default: both where this machine computes bf16 natively, else float32 only",
    )
    parser.add_argument("--steps", type=int, default=5, help="steps per block")
    parser.add_argument("--repeats", type=int, default=4, help="blocks per contender")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--matmul-size", type=int, default=2048, help="square matmul limit")
    parser.add_argument("--matmul-blocks", type=int, default=5, help="timed blocks per shape")
    parser.add_argument("--matmul-per-block", type=int, default=10, help="matmuls per block")
    parser.add_argument("--model", default=MODEL, help="model spec (alias, local dir, ...)")
    args = parser.parse_args()
    print(machine())
    print(f"model: {args.model}")
    for dtype in args.dtype or default_precisions(DTYPES):
        bench(argparse.Namespace(**{**vars(args), "dtype": dtype}))


def bench(args: argparse.Namespace) -> None:
    """Trainer, bare loop and the trainer's GEMMs alone, alternating, in `args.dtype`."""
    trainer = make_trainer(args.dtype, args.batch_size, args.model)
    state = trainer.fresh_state()
    total = 1 + args.steps * args.repeats  # one untimed warm-up step each
    schedule = [trainer.step_indices(step) for step in range(total)]
    bare = BareLoop(trainer, state.module.embedding, schedule)
    bare.check_tokens(trainer)
    losses = {"trainer": [], "bare loop": []}
    contenders = {
        "trainer": lambda: losses["trainer"].append(trainer.train_step(state)),
        "bare loop": lambda: losses["bare loop"].append(bare.step()),
    }
    computed = positions_computed(args, bare, schedule)
    floor = trainer_gemms(bare.model.config, computed["trainer"])
    if floor:
        contenders[GEMMS_ALONE] = gemm_pass(floor, getattr(torch, args.dtype))
    for step in contenders.values():
        step()
    times = alternate(contenders, args.repeats, args.steps)
    floor_times = times.pop(GEMMS_ALONE, None)
    report(args, bare, computed, times, losses)
    if floor:
        report_floor(floor, floor_times, times["trainer"], computed["trainer"], bare.model)


def trainer_gemms(config, trainer_tokens: list[int]) -> list:
    """The GEMMs of a trainer step at its median positions ([]: not a Llama-style model)."""
    try:
        return prompt_tuning_gemms(config, round(median(trainer_tokens)))
    except ValueError:
        return []


def report_floor(gemms, floor_times, trainer_times, trainer_tokens, model) -> None:
    """The trainer's FLOP/s against its own GEMMs run alone in the same alternation: the share
    least moved by the machine's drift."""
    flops = total_flops(gemms)
    alone = flops / median(floor_times)
    n = body_parameters(model)
    achieved = median([4 * n * t / s for t, s in zip(trainer_tokens, trainer_times)])
    print(
        f"  floor, timed in the same alternation: the trainer's GEMMs alone at {gemms[0].m} "
        f"positions {median(floor_times):.3f} s a step ({alone / 1e9:.1f} GFLOP/s); the "
        f"trainer's median step {median(trainer_times):.3f} s; trainer 4N*tokens "
        f"{achieved / 1e9:.1f} GFLOP/s = {achieved / alone:.0%} of its GEMMs alone"
    )


def packed_positions(lengths: list[int]) -> int:
    """Positions the trainer computes for a batch on a CPU (softprompt.steering.packing)."""
    bins = first_fit_decreasing(lengths, max(max(lengths), PROMPT_ROW_TOKENS))
    return len(bins) * (PROMPT_LENGTH + max(sum(lengths[i] for i in b) for b in bins))


def positions_computed(args, bare, schedule) -> dict[str, list[int]]:
    """Positions each contender runs through the model per timed step: the bare loop
    [prompt; text] per row; the trainer on a CPU rows of [prompt | text | text ...] (on a GPU
    [prompt; text] rows too)."""
    lengths = [bare.lengths[torch.tensor(s)].tolist() for s in schedule[1:]]
    widths = [max(batch) for batch in lengths]
    computed = {"bare loop": [args.batch_size * (PROMPT_LENGTH + w) for w in widths]}
    computed["trainer"] = computed["bare loop"]
    if next(bare.model.parameters()).device.type == "cpu":
        computed["trainer"] = [packed_positions(batch) for batch in lengths]
    return computed


def report(args, bare, computed, times, losses) -> None:
    """Samples/s and ratio, loss agreement, achieved model FLOP/s against the matmul limits."""
    print(
        f"prompt tuning, L={PROMPT_LENGTH}, batch {args.batch_size}, {args.dtype}, "
        f"{args.repeats} blocks x {args.steps} steps each, medians:"
    )
    rates = {name: args.batch_size / median(t) for name, t in times.items()}
    print(ratio_line("  throughput", rates, "samples/s") + "  (target >= 0.90x)")
    print("  " + loss_agreement(losses))
    n = body_parameters(bare.model)
    print(
        f"  N = {n / 1e6:.1f}M body parameters; median tokens computed per step: "
        + ", ".join(f"{name} {median(t):.0f}" for name, t in computed.items())
    )
    report_flops(args, bare.model, n, computed, times)


def model_tokens(config, computed: dict[str, list[int]]) -> dict[str, int]:
    """Each contender's median positions per step, the m of its GEMMs; printed with the weights
    the model-shape GEMMs cover (to check against N), or {} if the model is not Llama-style."""
    try:
        gemms = prompt_tuning_gemms(config, 1)
    except ValueError as error:
        print(f"  model-shape limit: n/a ({error})")
        return {}
    covered = sum(g.k * g.n * g.count for g in gemms if g.stored_t)
    print(
        f"  model-shape GEMMs: q/k/v/o and gate/up/down forward and input gradients (weights "
        f"frozen: no weight gradients), no LM head; {covered / 1e6:.1f}M weights of N"
    )
    return {name: round(median(tokens)) for name, tokens in computed.items()}


def report_flops(args, model, n: int, computed, times) -> None:
    """Achieved 4N*tokens FLOP/s of each contender, as shares of both limits in the run's dtype;
    both limits in fp32 and bf16, each measured warm (best of blocks) in this run."""
    tokens = model_tokens(model.config, computed)
    print(
        f"  limits measured warm: {WARMUP_CALLS} untimed calls, then the best of up to "
        f"{args.matmul_blocks} blocks of up to {args.matmul_per_block} calls, per shape "
        f"(fewer where a call takes over {BLOCK_S / args.matmul_per_block:.2f} s or a shape "
        f"over {SHAPE_BUDGET_S:.0f} s)"
    )
    run = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    dtypes = [run, torch.float32 if run == torch.bfloat16 else torch.bfloat16]
    timing = (args.matmul_size, args.matmul_blocks, args.matmul_per_block)
    every = {
        dtype: matmul_limits(model.config, tokens.values(), dtype, *timing) for dtype in dtypes
    }
    for dtype, found in every.items():
        print("  " + limits_line(dtype, args.matmul_size, found))
    limits = every[run]
    for name, seconds in times.items():
        achieved = median([4 * n * t / s for t, s in zip(computed[name], seconds)])
        square = f"{args.matmul_size}x{args.matmul_size}"
        shares = [f"{achieved / limits['square']:.0%} of the {square} matmul limit"]
        if name in tokens:
            share = achieved / limits[tokens[name]]
            shares.append(f"{share:.0%} of the model-shape limit at {tokens[name]} tokens")
        print(
            f"  {name}: 4N*tokens {achieved / 1e9:.1f} GFLOP/s ({args.dtype}: "
            f"{', '.join(shares)}); 6N*tokens convention {1.5 * achieved / 1e9:.1f} GFLOP/s"
        )


if __name__ == "__main__":
    main()
