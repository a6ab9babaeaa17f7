"""`train.lr: auto`: a learning-rate range test (Smith 2017, "Cyclical Learning Rates"; the
test Lightning's `lr_find` and fastai's `lr_find` run) that picks the run's rate before it trains.

The test trains a copy of the run's starting state for `train.lr_search_steps` optimizer steps
on the run's first 5 batches in turn, the rate growing exponentially from the low to the high
end of `train.lr_search_range`, and notes each step's loss; the copy is then thrown away and the
RNG put back, so the run starts exactly as a run given the found rate as a number would. It
stops early once the loss has clearly diverged (4x its lowest, or not finite).

The curve is a centred moving average over 5 steps, read only where its window is whole: each
point then averages the same 5 batches, so batch-to-batch noise (larger, with batches of 8,
than what 20 steps of training change) cancels and only the rate moves the curve. The rule
(RULE): the steepest descent of that curve below its lowest point (Lightning's suggestion),
chosen over fastai's lowest / 10 and two others by bench_lr's sweep (BENCHMARKS.md); every
rule's pick is kept in summary.json. A method's other parameter groups (an encoder) move with
the prompt's rate at their fixed scale, and learned cross-model maps keep their own rate, both
during the test and after it.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from softprompt.errors import ConfigError, SoftpromptError
from softprompt.files import atomic_file, atomic_text_file
from softprompt.training.resume import run_config
from softprompt.training.state import TrainState

DIVERGED = 4.0  # stop once the smoothed loss is this many times its lowest so far
WINDOW = 5  # steps in the centred moving average
RULE = "steepest"  # which of RULES picks the run's rate (BENCHMARKS.md, issue #39)
MIN_FALL = 0.02  # a curve whose lowest point is not this much (relative) below its start
CSV_FILE, PNG_FILE = "lr_find.csv", "lr_find.png"


@dataclass
class LRCurve:
    """The range test's curve and what was read off it."""

    rates: list[float]
    losses: list[float]
    smoothed: list[float]
    chosen: float
    lowest: float  # the rate at the smoothed curve's lowest point
    steepest: float  # the rate where the smoothed loss falls fastest (per log-rate)
    seconds: float = 0.0

    @property
    def picks(self) -> dict[str, float]:
        """The rate each rule of RULES reads off this curve (summary.json keeps them all)."""
        return {name: rule(self) for name, rule in RULES.items()}

    def shape(self) -> str:
        """One line on how the curve went: where it started, its lowest point, its end (the
        smoothed loss where its window is whole, as the rule reads it)."""
        half = min(WINDOW // 2, len(self.rates) - 1)
        first, low = self.smoothed[half], self.smoothed[self.rates.index(self.lowest)]
        end = "diverged" if self.smoothed[-1] > 2 * low else "ended"
        return (
            f"loss {first:.3g} at {self.rates[half]:.2g}, lowest {low:.3g} at {self.lowest:.2g}, "
            f"{end} at {self.smoothed[-1]:.3g} at {self.rates[-1]:.2g}; steepest fall at "
            f"{self.steepest:.2g}"
        )

    def record(self) -> dict:
        """What summary.json keeps of the test."""
        return {
            "rule": RULE,
            "chosen": self.chosen,
            "lowest": self.lowest,
            "steepest": self.steepest,
            "alternatives": self.picks,
            "steps": len(self.rates),
            "seconds": self.seconds,
            "curve": CSV_FILE,
        }


def exponential_rates(low: float, high: float, steps: int) -> list[float]:
    """`steps` rates from `low` to `high`, evenly spaced on a log scale."""
    return [low * (high / low) ** (i / max(1, steps - 1)) for i in range(steps)]


def smooth(losses: list[float], window: int = WINDOW) -> list[float]:
    """A centred moving average (shorter at the ends)."""
    half = window // 2
    return [
        sum(losses[max(0, i - half) : i + half + 1]) / len(losses[max(0, i - half) : i + half + 1])
        for i in range(len(losses))
    ]


def read_curve(rates: list[float], losses: list[float]) -> LRCurve:
    """The rate to train at from a range test's curve; a ConfigError when the loss never fell
    (no rate in the range trains this prompt: there is nothing to pick)."""
    if len(losses) <= WINDOW:
        raise ConfigError(
            f"train.lr auto: the loss diverged within {len(losses)} steps of the range test "
            f"(at lr {rates[-1]:.2g}); lower train.lr_search_range's start or give train.lr "
            "a number"
        )
    smoothed, half = smooth(losses), WINDOW // 2
    full = range(half, max(half + 1, len(losses) - half))  # whole windows: every batch once
    first, low = full[0], min(full, key=smoothed.__getitem__)
    if smoothed[low] > smoothed[first] * (1 - MIN_FALL) or low == first:
        raise ConfigError(
            f"train.lr auto: the loss never fell in the range test ({smoothed[first]:.3g} at lr "
            f"{rates[first]:.2g}, at best {smoothed[low]:.3g} up to {rates[full[-1]]:.2g}); give "
            "train.lr a number, widen train.lr_search_range or lengthen train.lr_search_steps"
        )
    logs = [math.log(r) for r in rates]
    slopes = {i: (smoothed[i + 1] - smoothed[i]) / (logs[i + 1] - logs[i]) for i in full[:-1]}
    steep = min((i for i in slopes if i < low), key=slopes.__getitem__)
    curve = LRCurve(
        rates=rates,
        losses=losses,
        smoothed=smoothed,
        chosen=0.0,
        lowest=rates[low],
        steepest=math.sqrt(rates[steep] * rates[steep + 1]),
    )
    curve.chosen = RULES[RULE](curve)
    return curve


def range_test(step: Callable[[], float], set_rate: Callable[[float], None], rates) -> tuple:
    """Run `step()` once per rate (after `set_rate(rate)`), stopping at divergence; returns the
    rates and losses reached. A step that raises SoftpromptError (a non-finite loss) ends it."""
    done, losses, lowest = [], [], math.inf
    for rate in rates:
        set_rate(rate)
        try:
            loss = step()
        except SoftpromptError:
            break
        if not math.isfinite(loss):
            break
        done.append(rate)
        losses.append(loss)
        recent = sum(losses[-WINDOW:]) / len(losses[-WINDOW:])
        lowest = min(lowest, recent)
        if recent > DIVERGED * lowest:
            break
    return done, losses


def find_lr(trainer) -> LRCurve:
    """The range test for `trainer`'s run and the rate read off its curve."""
    started = time.perf_counter()
    curve = read_curve(*run_range_test(trainer))
    curve.seconds = time.perf_counter() - started
    return curve


def run_range_test(trainer, cycle: int | None = WINDOW) -> tuple[list[float], list[float]]:
    """The range test's rates and losses for `trainer`'s run: its starting state (built as the
    run builds it, then thrown away), its parameter groups, its first `cycle` batches in turn
    (None: a new batch each step, as the run takes them); the RNG is left as it was."""
    settings = trainer.settings
    low, high = settings.lr_search_range
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        search = settings.model_copy(update={"lr": low, "lr_found": None, "warmup": 0})
        module = trainer.method.build_module(
            trainer.config.prompt, trainer.backbones, trainer.config.cross_model
        ).to(trainer.device)
        state = TrainState.fresh(module, search, maps_lr=trainer.config.cross_model.lr)
        bases = [group["lr"] for group in state.optimizer.param_groups]
        names = [group.get("name") for group in state.optimizer.param_groups]

        def set_rate(rate: float) -> None:
            for group, base, name in zip(state.optimizer.param_groups, bases, names):
                group["lr"] = base if name == "maps" else base * rate / low

        state.scheduler = _Fixed()

        def step() -> float:
            if cycle:
                state.step %= cycle  # the first `cycle` batches in turn
            return trainer.train_step(state)

        return range_test(
            step,
            set_rate,
            exponential_rates(low, high, settings.lr_search_steps),
        )


def resolve_lr(trainer, resume: bool) -> dict | None:
    """Fill in `train.lr_found` for a run with `lr: auto` (the trainer's config and settings are
    replaced): a resumed run reads the rate its config.yaml recorded (no second search), a new
    one runs the range test, writes the curve to the run folder and says what it found.
    Returns the test's record for summary.json (None when nothing was searched)."""
    settings = trainer.settings
    if settings.lr != "auto" or settings.lr_found is not None:
        return None
    found, record = (run_config(trainer.out_dir).train.lr_found if resume else None), None
    if found is None:
        curve = find_lr(trainer)
        found, record = curve.chosen, curve.record()
        if trainer.processes.is_main:
            write_curve(curve, trainer.out_dir)
            print(
                f"lr auto: {found:.3g} ({curve.shape()}; "
                f"{curve.seconds:.0f} s; {trainer.out_dir / CSV_FILE})",
                file=sys.stderr,
            )
    trainer.settings = settings.model_copy(update={"lr_found": found})
    trainer.config = trainer.config.model_copy(update={"train": trainer.settings})
    return record


RULES: dict[str, Callable[[LRCurve], float]] = {
    "lowest/10": lambda curve: curve.lowest / 10,  # fastai's `minimum` suggestion
    "lowest/3": lambda curve: curve.lowest / 3,
    "lowest": lambda curve: curve.lowest,
    "steepest": lambda curve: curve.steepest,  # Lightning's suggestion
}


class _Fixed:
    """A scheduler that leaves the rates the range test sets alone."""

    def step(self) -> None:
        pass

    def get_last_lr(self) -> list[float]:
        return []


def write_curve(curve: LRCurve, folder: Path) -> None:
    """lr_find.csv (rate, loss, smoothed loss per step) and lr_find.png (the curve on a log
    axis with the chosen rate marked), each written atomically."""
    with atomic_text_file(folder / CSV_FILE) as handle:
        handle.write("step,lr,loss,smoothed_loss\n")
        for i, (rate, loss, smoothed) in enumerate(zip(curve.rates, curve.losses, curve.smoothed)):
            handle.write(f"{i},{rate:.6g},{loss:.6g},{smoothed:.6g}\n")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(6, 4))
    axes.plot(curve.rates, curve.losses, ".", alpha=0.4, label="loss")
    axes.plot(curve.rates, curve.smoothed, "-", label="smoothed")
    axes.axvline(curve.chosen, color="red", linestyle="--", label=f"chosen {curve.chosen:.2g}")
    axes.set_xscale("log")
    axes.set_xlabel("learning rate")
    axes.set_ylabel("training loss")
    axes.legend()
    try:
        with atomic_file(folder / PNG_FILE) as temporary:
            figure.savefig(temporary, format="png", dpi=100)
    finally:
        pyplot.close(figure)
