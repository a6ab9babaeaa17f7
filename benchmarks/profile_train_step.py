"""Where a training step's time goes (issue #18), and how close its matmuls already are to the
machine: torch.profiler over the trainer's own steps, the operators grouped by what they do,
and the step's floor: the time its GEMMs alone take (benchmarks/common.py, gemm_pass), timed
in turns with the step, so that both see the same machine (whose matmul rate drifts).

Both methods of the speed benchmarks: prompt tuning as bench_bare_loop.py trains it (16-token
prompt, sentiment, batch 8) and prefix tuning as bench_prefix_vs_peft.py does (smiley, L = 10,
LM loss, batch 8). The floor's GEMMs are 4 * (their weights) * positions FLOPs: for prompt
tuning the body's weights at the packed positions (no LM head: the verbalizer loss runs 2 of
its rows); for prefix tuning the body and the LM head at every position of the packed rows
(the LM loss needs every position's full-vocabulary logits, forward and input gradient).
A method's samples/s can exceed batch / floor only by computing fewer positions.

Run: PYTHONPATH=src .venv/bin/python benchmarks/profile_train_step.py
     [--method prompt prefix] [--dtype float32] [--steps 3] [--warmup 2]
"""

from __future__ import annotations

import argparse

import bench_bare_loop
import bench_prefix_vs_peft
import torch
from common import alternate, gemm_pass, machine, median, prompt_tuning_gemms, total_flops
from torch.profiler import ProfilerActivity, profile

from softprompt.steering.packing import first_fit_decreasing

BATCH = 8
# operator name -> what it does; the first group whose words the name contains
GROUPS = [
    ("GEMMs (linear layers, LM head)", ("aten::mm", "aten::addmm", "aten::bmm")),
    ("attention", ("scaled_dot_product", "softmax_backward", "aten::_softmax")),
    ("loss (log-softmax, NLL)", ("log_softmax", "nll_loss", "cross_entropy")),
    (
        "elementwise (norms, rotary, SiLU gate, residuals, casts)",
        (
            "aten::mul",
            "aten::add",
            "aten::pow",
            "aten::mean",
            "aten::rsqrt",
            "aten::neg",
            "aten::silu",
            "aten::div",
            "aten::sum",
            "aten::sub",
            "aten::cat",
            "aten::_to_copy",
            "aten::masked_fill",
            "aten::where",
            "aten::clamp",
            "aten::sqrt",
            "aten::tanh",
        ),
    ),
    (
        "gathers, scatters, copies, fills (packing, segment attention)",
        ("index", "scatter", "gather", "aten::copy_", "aten::fill_", "aten::zero_"),
    ),
]


def group_of(name: str) -> str:
    for group, words in GROUPS:
        if any(word in name for word in words):
            return group
    return "the rest (views, allocation, autograd bookkeeping)"


def prompt_positions(trainer, indices: list[int]) -> int:
    """Positions one prompt-tuning step computes on a CPU: rows of [prompt | text | ...]."""
    slot = trainer.slots[0]
    lengths = [slot.task.item_length(slot.train[i]) for i in indices]
    return bench_bare_loop.packed_positions(lengths)


def prefix_positions(trainer, indices: list[int]) -> int:
    """Positions one prefix step computes: rows of [text | text ...] as wide as the batch."""
    slot = trainer.slots[0]
    lengths = [slot.task.item_length(slot.train[i]) for i in indices]
    bins = first_fit_decreasing(lengths, max(lengths))
    return len(bins) * max(lengths)


METHODS = {
    "prompt": (bench_bare_loop.make_trainer, prompt_positions, False),
    "prefix": (bench_prefix_vs_peft.make_trainer, prefix_positions, True),
}


def profile_method(method: str, dtype: str, steps: int, warmup: int) -> None:
    make, positions, head = METHODS[method]
    trainer = make(dtype, BATCH)
    state = trainer.fresh_state()
    for _ in range(warmup):
        trainer.train_step(state)
    tokens = []
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(steps):
            tokens.append(positions(trainer, trainer.step_indices(state.step)))
            trainer.train_step(state)
    gemms = prompt_tuning_gemms(trainer.backbones[0].model.config, round(median(tokens)), head)
    # the floor and the step timed in turns, without the profiler: the same machine drift
    contenders = {"step": lambda: trainer.train_step(state)}
    contenders["GEMMs alone"] = gemm_pass(gemms, getattr(torch, dtype))
    times = alternate(contenders, steps, 1)
    report(method, dtype, profiler, tokens, gemms, times)


def report(method, dtype, profiler, tokens, gemms, times) -> None:
    """The step's time by operator group, its GEMM rate and its floor."""
    per_group: dict[str, float] = {}
    for event in profiler.key_averages():
        group = group_of(event.key)
        per_group[group] = per_group.get(group, 0.0) + event.self_cpu_time_total / 1e6
    profiled = sum(per_group.values())
    print(f"{method} tuning, batch {BATCH}, {dtype}, {len(tokens)} profiled steps:")
    print(f"  positions per profiled step {tokens}; time by operator group (self time):")
    for group, spent in sorted(per_group.items(), key=lambda item: -item[1]):
        print(f"  {spent / len(tokens):7.3f} s/step  {spent / profiled:4.0%}  {group}")
    flops = total_flops(gemms)
    step, floor = median(times["step"]), median(times["GEMMs alone"])
    print(
        f"  without the profiler, in turns: step {step:.3f} s; its GEMMs alone at "
        f"{gemms[0].m} positions ({flops / 1e9:.1f} GFLOP) {floor:.3f} s "
        f"({flops / floor / 1e9:.1f} GFLOP/s): the floor, {BATCH / floor:.2f} samples/s at "
        f"most; the step is {step / floor:.2f}x the floor"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    args = parser.parse_args()
    print(machine())
    for method in args.method:
        profile_method(method, args.dtype, args.steps, args.warmup)


if __name__ == "__main__":
    main()
