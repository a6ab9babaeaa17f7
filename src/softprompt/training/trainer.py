"""One training loop for a soft prompt on one or several frozen models.

The loss is the (weighted) mean of the per-model losses; each model's backward runs before the
next model's forward so only one model's activations are alive at a time. Everything needed to
continue a run lives in `TrainState` and is checkpointed in one safetensors file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from softprompt.config import TrainConfig, config_to_dict
from softprompt.data import load_split
from softprompt.errors import ConfigError, SoftpromptError, UsageError
from softprompt.evaluation import evaluate_task
from softprompt.files import read_safetensors, write_safetensors_atomic
from softprompt.methods import get_method
from softprompt.methods.artifact import model_record
from softprompt.methods.base import TrainableModule
from softprompt.models.backbone import Backbone, load_backbone, resolve_device
from softprompt.steering.base import Steering
from softprompt.steering.forward import as_steering
from softprompt.tasks import build_task, data_spec
from softprompt.training.distributed import launched_processes
from softprompt.training.tracking import Trackers, check_trackers

CHECKPOINT_DIR = "checkpoints"
KEEP_CHECKPOINTS = 2


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Learning-rate multiplier for optimizer step `step` (0-based): linear warmup, then decay."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class ModelSlot:
    """One frozen model of a run with its task and encoded splits."""

    backbone: Backbone
    task: object
    train: list
    dev: list
    weight: float


@dataclass
class TrainState:
    """Everything that changes during training; a checkpoint is exactly this."""

    module: TrainableModule  # the method's trainable parameters
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    step: int = 0
    best_value: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    history: list[dict] = field(default_factory=list)
    last_losses: dict[str, float] = field(default_factory=dict)

    @property
    def prompt(self) -> torch.nn.Parameter:
        """The soft prompt being trained (method prompt)."""
        return self.module.embedding

    def steer(self):
        """What the model is steered with now: a prompt tensor or a PrefixKV."""
        return self.module()


def _stream(start: int, stop: int, n: int, seed: int) -> list[int]:
    """Positions start..stop of the example stream: per-epoch seeded permutations, end to end."""
    orders: dict[int, torch.Tensor] = {}
    indices = []
    for position in range(start, stop):
        epoch, offset = divmod(position, n)
        if epoch not in orders:
            orders[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        indices.append(int(orders[epoch][offset]))
    return indices


def _batch_indices(
    step: int,
    batch_size: int,
    n: int,
    seed: int,
    lengths: list[int] | None = None,
    window: int = 0,
) -> list[int]:
    """The training examples of optimizer step `step`, a function of the step alone (exact
    resume). With length bucketing, each run of `window` batches of the stream is sorted by
    length, cut into batches, and those batches are taken in a seeded random order."""
    if not window or lengths is None:
        return _stream(step * batch_size, (step + 1) * batch_size, n, seed)
    block, slot = divmod(step, window)
    span = window * batch_size
    members = sorted(_stream(block * span, (block + 1) * span, n, seed), key=lengths.__getitem__)
    order = torch.randperm(window, generator=torch.Generator().manual_seed(seed * 7919 + block))
    first = int(order[slot]) * batch_size
    return members[first : first + batch_size]


def _steering(source, model_index: int) -> Steering:
    """What model `model_index` is steered with: `source` is the trainable module (run anew,
    so gradients reach its parameters) or what a caller steers with (a prompt tensor)."""
    if isinstance(source, TrainableModule):
        return source.steering(model_index)
    return as_steering(source)


class Trainer:
    """Trains one soft prompt for a config; `run()` returns the summary dict."""

    def __init__(
        self,
        config: TrainConfig,
        out_dir: str | Path,
        *,
        backbones: list[Backbone] | None = None,
        progress: bool = True,
    ) -> None:
        self.config = config
        self.method = get_method(config.method)
        self.settings = config.train
        self.out_dir = Path(out_dir)
        check_trackers(self.settings.report_to)
        self.processes = launched_processes(self.settings.device)
        self.progress = progress and self.processes.is_main
        self.device = self._process_device()
        self.dtype = "bfloat16" if self.settings.precision == "bf16" else "float32"
        self.backbones = backbones or [
            load_backbone(
                spec,
                dtype=self.dtype,
                device=device,
                trust_remote_code=config.trust_remote_code or None,
            )
            for spec, device in zip(config.models, self._model_devices())
        ]
        if self.settings.best_model is not None and self.settings.best_model not in config.models:
            raise ConfigError(
                f"train.best_model {self.settings.best_model!r} is not one of the models "
                f"({', '.join(config.models)})"
            )
        self.slots = self._build_slots()

    def _process_device(self) -> torch.device:
        """The training device; under a launcher each process takes its own (e.g. cuda:RANK)."""
        if self.processes.world == 1:
            return resolve_device(self.settings.device)
        if self.settings.devices:
            raise ConfigError(
                "train.devices spreads models over devices within one process; with several "
                "processes (torchrun / accelerate launch) each uses its own device: remove it"
            )
        if self.settings.batch_size < self.processes.world:
            raise ConfigError(
                f"train.batch_size ({self.settings.batch_size}) is smaller than the number of "
                f"processes ({self.processes.world}); raise it or launch fewer processes"
            )
        return self.processes.device

    def _model_devices(self) -> list[torch.device]:
        """Where each model lives: `train.devices` round-robin, else the training device."""
        names = self.settings.devices or [str(self.device)]
        return [resolve_device(names[i % len(names)]) for i in range(len(self.config.models))]

    def _build_slots(self) -> list[ModelSlot]:
        spec = data_spec(self.config.task)
        train_examples = load_split(spec, "train")
        dev_examples = load_split(spec, "dev")
        if self.settings.max_eval_examples:
            dev_examples = dev_examples[: self.settings.max_eval_examples]
        weights = self.config.model_weights or [1.0] * len(self.backbones)
        total = sum(weights)
        slots = []
        for backbone, weight in zip(self.backbones, weights):
            task = build_task(self.config.task, backbone, self.config.prompt.input_length)
            slots.append(
                ModelSlot(
                    backbone=backbone,
                    task=task,
                    train=task.encode_split(train_examples),
                    dev=task.encode_split(dev_examples),
                    weight=weight / total,
                )
            )
        return slots

    # --- state -------------------------------------------------------------------------------

    def _fresh_state(self) -> TrainState:
        module = self.method.build_module(
            self.config.prompt, self.backbones, self.config.cross_model
        )
        module = module.to(self.device)
        maps = [p for name, p in module.named_parameters() if name.startswith("maps.")]
        own = [p for name, p in module.named_parameters() if not name.startswith("maps.")]
        groups = [{"params": own}]
        if maps:
            groups.append({"params": maps, "lr": self.config.cross_model.lr})
        optimizer = torch.optim.AdamW(
            groups, lr=self.settings.lr, weight_decay=self.settings.weight_decay
        )
        total, warmup, schedule = (
            self.settings.steps,
            self.settings.warmup_steps,
            self.settings.schedule,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, total, warmup, schedule)
        )
        return TrainState(module=module, optimizer=optimizer, scheduler=scheduler)

    def artifact(self, state: TrainState, training: dict | None = None):
        """What gets saved: the method's artifact of the trained module, with the header."""
        header = {
            "models": [model_record(b) for b in self.backbones],
            "task": self.config.task.model_dump(mode="json"),
            "init": self.config.prompt.model_dump(mode="json"),
            "training": training or {},
        }
        return state.module.artifact(header, self.backbones)

    def write_artifact(self, state: TrainState, training: dict, path: Path) -> None:
        if self.processes.is_main:
            self.artifact(state, training).save(path)

    def save_checkpoint(self, state: TrainState) -> Path:
        """Write the whole training state atomically; keep the newest few checkpoints."""
        folder = self.out_dir / CHECKPOINT_DIR
        path = folder / f"step-{state.step:08d}.safetensors"
        if not self.processes.is_main:
            return path
        folder.mkdir(parents=True, exist_ok=True)
        optimizer = state.optimizer.state_dict()
        tensors = {
            f"module.{name}": value.detach().cpu().contiguous()
            for name, value in state.module.state_dict().items()
        }
        for index, slots in optimizer["state"].items():
            for key, value in slots.items():
                tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).detach().cpu()
        tensors["rng.torch"] = torch.get_rng_state()
        meta = {
            "step": state.step,
            "best_value": state.best_value,
            "best_step": state.best_step,
            "evals_without_improvement": state.evals_without_improvement,
            "optimizer_param_groups": optimizer["param_groups"],
            "scheduler": state.scheduler.state_dict(),
            "history": state.history,
        }
        write_safetensors_atomic(tensors, {"state": json.dumps(meta)}, path)
        for old in sorted(folder.glob("step-*.safetensors"))[:-KEEP_CHECKPOINTS]:
            old.unlink()
        return path

    def load_checkpoint(self, state: TrainState) -> Path | None:
        """Restore the newest readable checkpoint into `state`; skip corrupt ones."""
        folder = self.out_dir / CHECKPOINT_DIR
        for path in sorted(folder.glob("step-*.safetensors"), reverse=True):
            try:
                tensors, meta = read_safetensors(path)
                saved = json.loads(meta["state"])
            except (SoftpromptError, KeyError, json.JSONDecodeError):
                _warn(f"checkpoint {path} is unreadable; trying an older one")
                continue
            module_state = {
                name.removeprefix("module."): value.to(self.device)
                for name, value in tensors.items()
                if name.startswith("module.")
            }
            state.module.load_state_dict(module_state)
            optimizer_state: dict[int, dict] = {}
            for name, value in tensors.items():
                if name.startswith("optimizer."):
                    _, index, key = name.split(".", 2)
                    optimizer_state.setdefault(int(index), {})[key] = value
            state.optimizer.load_state_dict(
                {"state": optimizer_state, "param_groups": saved["optimizer_param_groups"]}
            )
            state.scheduler.load_state_dict(saved["scheduler"])
            torch.set_rng_state(tensors["rng.torch"])
            state.step = saved["step"]
            state.best_value = saved["best_value"]
            state.best_step = saved["best_step"]
            state.evals_without_improvement = saved["evals_without_improvement"]
            state.history = saved["history"]
            return path
        return None

    # --- the loop ----------------------------------------------------------------------------

    def step_indices(self, step: int) -> list[int]:
        train = self.slots[0].train
        lengths = None
        if self.settings.length_bucketing:
            if getattr(self, "_lengths", None) is None:
                self._lengths = [self.slots[0].task.item_length(item) for item in train]
            lengths = self._lengths
        return _batch_indices(
            step,
            self.settings.batch_size,
            len(train),
            self.settings.seed,
            lengths,
            self.settings.length_bucketing,
        )

    def accumulate_gradients(self, prompt, indices: list[int]) -> dict[str, float]:
        """Add d(loss)/d(parameters) for one batch into the gradients; returns each model's loss.

        `prompt` is the prompt tensor, or the trainable module (called for every micro-batch).

        Loss = sum over models of weight * (mean loss over the batch). Each micro-batch of each
        model is backpropagated before the next forward, so only one model's activations live.
        """
        losses = {}
        for index, slot in enumerate(self.slots):
            items = [slot.train[i % len(slot.train)] for i in indices]
            denominator = slot.task.loss_denominator(items)  # of the whole (global) batch
            share = self.processes.share(items)
            model_loss = 0.0
            for start in range(0, len(share), self.settings.micro_batch):
                micro = share[start : start + self.settings.micro_batch]
                loss = self._micro_loss(slot, _steering(prompt, index), micro) / denominator
                (loss * slot.weight).backward()
                model_loss += float(loss.detach())
            losses[slot.backbone.name] = model_loss
        return losses

    def train_step(self, state: TrainState) -> float:
        """One optimizer step over exactly `batch_size` examples (micro-batches accumulated)."""
        losses = self.accumulate_gradients(state.module, self.step_indices(state.step))
        if self.processes.world > 1:
            losses = self._sum_over_processes(state.module, losses)
        total = sum(loss * slot.weight for loss, slot in zip(losses.values(), self.slots))
        grads = [p.grad for p in state.module.parameters() if p.grad is not None]
        if not math.isfinite(total) or not all(torch.isfinite(g).all() for g in grads):
            state.optimizer.zero_grad(set_to_none=True)
            raise SoftpromptError(
                f"training loss became non-finite ({total}) at step {state.step + 1}; stopped "
                f"with the last good prompt in {self.out_dir / 'last.safetensors'}; lower "
                "train.lr or use precision fp32"
            )
        if self.settings.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(state.module.parameters(), self.settings.max_grad_norm)
        state.optimizer.step()
        state.scheduler.step()
        state.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.last_losses = losses
        return total

    def _sum_over_processes(self, module: torch.nn.Module, losses: dict) -> dict[str, float]:
        """Each process holds its share's gradients and losses; every process gets the sums."""
        for parameter in module.parameters():
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            self.processes.sum(parameter.grad)
        summed = self.processes.sum(torch.tensor(list(losses.values()), device=self.device))
        return dict(zip(losses, summed.tolist()))

    def _any_process(self, flag: bool) -> bool:
        """True when `flag` holds in any process (so that all stop at the same step)."""
        if self.processes.world == 1:
            return flag
        return bool(self.processes.sum(torch.tensor([float(flag)], device=self.device)) > 0)

    def _micro_loss(self, slot: ModelSlot, steering: Steering, micro: list) -> torch.Tensor:
        """Summed loss of a micro-batch (divided by the whole batch's size by the caller)."""
        return slot.task.loss(steering, micro)

    def evaluate_dev(self, prompt) -> dict:
        """Dev metrics per model and their mean (`prompt`: a tensor or the trainable module)."""
        per_model = {}
        for index, slot in enumerate(self.slots):
            per_model[slot.backbone.name] = evaluate_task(
                slot.task, _steering(prompt, index), slot.dev, self.settings.eval_batch_size
            )
        keys = [k for k in next(iter(per_model.values())) if k not in ("examples", "tokens")]
        mean = {k: sum(m[k] for m in per_model.values()) / len(per_model) for k in keys}
        return {"mean": mean, "models": per_model}

    def _selection_metrics(self, dev: dict) -> dict:
        """The dev metrics that pick the best prompt: the mean, or `train.best_model`'s."""
        if self.settings.best_model is None:
            return dev["mean"]
        return dev["models"][self.settings.best_model]

    def _best_key(self) -> str:
        return self.slots[0].task.selection_metric(self.settings.best_metric)

    def _is_better(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        return value < best if self._best_key() == "loss" else value > best

    def _start(self, resume: bool) -> tuple[TrainState, Path | None]:
        """A fresh state, or the newest good checkpoint's; metrics past it are dropped."""
        if not resume and any((self.out_dir / CHECKPOINT_DIR).glob("step-*.safetensors")):
            raise UsageError(
                f"{self.out_dir} already holds a training run; continue it with --resume "
                f"{self.out_dir} or choose another --out"
            )
        torch.manual_seed(self.settings.seed)
        state = self._fresh_state()
        resumed_from = self.load_checkpoint(state) if resume else None
        if self.processes.is_main:
            self._prepare_out_dir(state, resume, resumed_from)
        self.processes.wait_for_everyone()
        return state, resumed_from

    def _prepare_out_dir(self, state: TrainState, resume: bool, resumed_from: Path | None):
        """Config copy, stale temporary files removed, metrics trimmed to the resumed step."""
        if resume and resumed_from is None:
            _warn(f"no checkpoint in {self.out_dir}; starting from step 0")
        elif resumed_from is not None:
            _warn(f"resuming from {resumed_from} (step {state.step})")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "config.yaml").write_text(
            yaml.safe_dump(config_to_dict(self.config), sort_keys=False, allow_unicode=True)
        )
        for stale in [*self.out_dir.glob(".*.tmp"), *self.out_dir.glob(f"{CHECKPOINT_DIR}/.*.tmp")]:
            stale.unlink()  # left by a process killed while writing
        metrics_path = self.out_dir / "metrics.jsonl"
        kept = []
        if resumed_from is not None and metrics_path.exists():
            lines = metrics_path.read_text(encoding="utf-8").splitlines()
            kept = [line for line in lines if _step_of(line) <= state.step]
        metrics_path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def _after_eval(self, state: TrainState, dev: dict, best_key: str) -> bool:
        """Keep the best prompt; returns True when early stopping says stop."""
        value = self._selection_metrics(dev)[best_key]
        state.history.append({"step": state.step, "dev": dev["mean"]})
        if self._is_better(value, state.best_value):
            state.best_value, state.best_step = value, state.step
            state.evals_without_improvement = 0
            self.write_artifact(
                state, {"step": state.step, "dev": dev}, self.out_dir / "prompt.safetensors"
            )
        else:
            state.evals_without_improvement += 1
        patience = self.settings.early_stopping_patience
        return bool(patience and state.evals_without_improvement >= patience)

    def _save_last(self, state: TrainState) -> None:
        self.write_artifact(state, {"step": state.step}, self.out_dir / "last.safetensors")

    def run(self, resume: bool = False) -> dict:
        """Train to the end (or early stop) and write the run directory; returns the summary.

        SIGINT/SIGTERM finish the current step, save a checkpoint and stop (resumable); a
        non-finite loss stops before the bad update, keeping the last good prompt.
        """
        settings = self.settings
        state, resumed_from = self._start(resume)
        best_key = self._best_key()
        stopped_early = False
        started = time.perf_counter()
        first_step = state.step
        last_dev = None
        trackers = Trackers(
            settings.report_to,
            self.out_dir,
            config_to_dict(self.config),
            enabled=self.processes.is_main,
        )
        metrics_path = self.out_dir / "metrics.jsonl" if self.processes.is_main else os.devnull
        with (
            _progress_bar(self.progress, settings.steps, state.step) as bar,
            open(metrics_path, "a", encoding="utf-8") as metrics,
            _DeferredSignals() as signals,
            contextlib.closing(trackers),
        ):
            while state.step < settings.steps and not stopped_early:
                try:
                    loss = self.train_step(state)
                except SoftpromptError:
                    self._save_last(state)
                    raise
                record = {"event": "train", "step": state.step, "loss": loss}
                record["lr"] = state.scheduler.get_last_lr()[0]
                if len(self.slots) > 1:
                    record["model_losses"] = state.last_losses
                metrics.write(json.dumps(record) + "\n")
                trackers.log({"train": record}, state.step)
                bar.update(loss=loss, step=state.step)
                if state.step % settings.eval_every == 0 or state.step == settings.steps:
                    with torch.no_grad():
                        last_dev = self.evaluate_dev(state.module)
                    metrics.write(
                        json.dumps({"event": "eval", "step": state.step, "dev": last_dev}) + "\n"
                    )
                    trackers.log({"dev": last_dev}, state.step)
                    bar.update(dev=last_dev, step=state.step)
                    stopped_early = self._after_eval(state, last_dev, best_key)
                if state.step % settings.checkpoint_every == 0 or stopped_early:
                    self.save_checkpoint(state)
                metrics.flush()
                if self._any_process(signals.received is not None):
                    self.save_checkpoint(state)
                    self._save_last(state)
                    received = signals.received or "a signal (in another process)"
                    raise Interrupted(
                        f"{received} received: stopped at step {state.step} with a "
                        f"checkpoint; continue with `softprompt train CONFIG --resume "
                        f"{self.out_dir}`"
                    )
        seconds = time.perf_counter() - started
        self.save_checkpoint(state)
        self._save_last(state)
        steps_run = state.step - first_step
        summary = {
            "run_dir": str(self.out_dir),
            "prompt_path": str(self.out_dir / "prompt.safetensors"),
            "models": [b.name for b in self.backbones],
            "steps": state.step,
            "stopped_early": stopped_early,
            "best_metric": best_key,
            "best_value": state.best_value,
            "best_step": state.best_step,
            "dev": last_dev,
            "best_dev": next(
                (h["dev"] for h in state.history if h["step"] == state.best_step), None
            ),
            "train_seconds": seconds,
            "train_samples_per_second": steps_run * settings.batch_size / seconds
            if seconds
            else 0.0,
            "resumed_from": str(resumed_from) if resumed_from else None,
            "processes": self.processes.world,
        }
        if self.processes.is_main:
            (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        self.processes.wait_for_everyone()
        return summary


def _describe_dev(dev: dict) -> str:
    """Dev metrics for the progress bar: the mean, and each model's when there are several."""
    key = "accuracy" if "accuracy" in dev["mean"] else "perplexity"
    text = f"dev loss {dev['mean']['loss']:.3f} {key} {dev['mean'][key]:.3f}"
    if len(dev["models"]) > 1:
        per_model = " ".join(f"{Path(n).name}:{m[key]:.2f}" for n, m in dev["models"].items())
        text += f" ({per_model})"
    return text


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return 1 << 62  # an unreadable (torn) line: drop it


class Interrupted(SoftpromptError):
    """Training stopped by a signal after saving a checkpoint."""

    exit_code = 130


class _DeferredSignals:
    """Turn SIGINT/SIGTERM into a flag checked between steps (a second SIGINT still aborts)."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __enter__(self) -> _DeferredSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _warn(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[yellow]warning:[/] {message}")


class _progress_bar:
    """A rich progress bar on stderr with live loss and dev metrics (or nothing if disabled)."""

    def __init__(self, enabled: bool, total: int, completed: int) -> None:
        self.enabled = enabled
        self.total, self.completed = total, completed
        self.fields = {"loss": "", "dev": ""}

    def __enter__(self) -> _progress_bar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[loss]} {task.fields[dev]}"),
                console=Console(stderr=True),
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(
                "train", total=self.total, completed=self.completed, **self.fields
            )
        return self

    def update(self, step: int, loss: float | None = None, dev: dict | None = None) -> None:
        if not self.enabled:
            return
        if loss is not None:
            self.fields["loss"] = f"loss {loss:.4f}"
        if dev is not None:
            self.fields["dev"] = _describe_dev(dev)
        self._progress.update(self._task, completed=step, **self.fields)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._progress.__exit__(*exc)


def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    backbones: list[Backbone] | None = None,
) -> dict:
    """Train a soft prompt as configured; writes the run directory and returns its summary."""
    return Trainer(config, out_dir, backbones=backbones, progress=progress).run(resume=resume)
