"""One training loop for a soft prompt on one or several frozen models.

The loss is the (weighted) mean of the per-model losses; each model's backward runs before the
next model's forward so only one model's activations are alive at a time. Everything needed to
continue a run lives in `TrainState` (softprompt.training.state) and is checkpointed in one
safetensors file of the run directory (softprompt.training.run_dir); which examples each step
takes is softprompt.training.schedule, what the user sees softprompt.training.console.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from softprompt.config import TrainConfig, config_to_dict
from softprompt.data import load_split
from softprompt.errors import SoftpromptError
from softprompt.evaluation import evaluate_task
from softprompt.methods import get_method
from softprompt.methods.artifact import model_record
from softprompt.methods.base import TrainableModule
from softprompt.models import Backbone, load_backbone, resolve_device
from softprompt.models.precision import DTYPE_NAMES, precision_of, training_precision
from softprompt.steering.base import Steering
from softprompt.steering.forward import as_steering
from softprompt.tasks import build_task, data_spec
from softprompt.training.console import DeferredSignals, Interrupted, ProgressBar
from softprompt.training.distributed import launched_processes
from softprompt.training.lr_finder import resolve_lr
from softprompt.training.resume import check_resume, record_changes, require_run
from softprompt.training.run_dir import RunDir, RunLog
from softprompt.training.schedule import BatchSchedule
from softprompt.training.sharding import Sharding
from softprompt.training.state import TrainState
from softprompt.training.tracking import check_trackers


@dataclass
class ModelSlot:
    """One frozen model of a run with its task and encoded splits."""

    backbone: Backbone
    task: object
    train: list
    dev: list
    weight: float


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
        self.run_dir = RunDir(self.out_dir, is_main=self.processes.is_main)
        self.run_dir.check_target()
        self.progress = progress and self.processes.is_main
        self.device = self.processes.training_device(self.settings)
        self.sharding = Sharding(self.settings, self.processes)
        self.backbones = self.sharding.load(
            lambda: backbones or _load_backbones(config, self.device, self.sharding.active),
            self.device,
        )
        self.slots = self._build_slots()
        self.schedule = BatchSchedule(
            self.slots[0].train,
            self.settings.batch_size,
            self.settings.seed,
            self.settings.length_bucketing,
            length=self.slots[0].task.item_length,
        )

    def _build_slots(self) -> list[ModelSlot]:
        spec = data_spec(self.config.task)
        limit = self.settings.max_eval_examples
        examples = {
            "train": functools.cache(lambda: load_split(spec, "train")),
            "dev": functools.cache(lambda: load_split(spec, "dev")[:limit]),
        }
        keep = self.out_dir if self.run_dir.is_main else None
        weights = self.config.model_weights or [1.0] * len(self.backbones)
        total = sum(weights)
        slots = []
        for backbone, weight in zip(self.backbones, weights):
            task = build_task(self.config.task, backbone, self.config.prompt.input_length)
            slots.append(
                ModelSlot(
                    backbone=backbone,
                    task=task,
                    train=task.run_items("train", examples["train"], keep, self.progress),
                    dev=task.run_items("dev", examples["dev"], keep, self.progress),
                    weight=weight / total,
                )
            )
        return slots

    # --- state -------------------------------------------------------------------------------

    def fresh_state(self) -> TrainState:
        """Step 0 of a run: a new module on the training device, its optimizer and schedule."""
        config = self.config
        with self.sharding.gathered():  # an init may read a sharded embedding table
            module = self.method.build_module(config.prompt, self.backbones, config.cross_model)
        module = module.to(self.device)
        return TrainState.fresh(module, self.settings, maps_lr=self.config.cross_model.lr)

    def load_checkpoint(self, state: TrainState) -> Path | None:
        """Restore the newest readable checkpoint into `state`; skip corrupt ones."""
        return self.run_dir.load_checkpoint(state, self.device)

    # --- one step ----------------------------------------------------------------------------

    def step_indices(self, step: int) -> list[int]:
        """The examples of optimizer step `step` (the same in every process and on resume)."""
        return self.schedule.indices(step)

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
                with self.sharding.gathered(slot.backbone):
                    loss = self._micro_loss(slot, _steering(prompt, index), micro) / denominator
                    (loss * slot.weight).backward()
                model_loss += float(loss.detach())
            losses[slot.backbone.name] = model_loss
        return losses

    def train_step(self, state: TrainState) -> float:
        """One optimizer step over exactly `batch_size` examples (micro-batches accumulated)."""
        losses = self.accumulate_gradients(state.module, self.step_indices(state.step))
        if self.processes.world > 1:
            self.processes.sum_gradients(state.module)
            losses = self.processes.sum_values(losses)
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

    def evaluate_dev(self, prompt) -> dict:
        """Dev metrics per model and their mean (`prompt`: a tensor or the trainable module)."""
        per_model = {}
        for index, slot in enumerate(self.slots):
            with self.sharding.gathered(slot.backbone):
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

    # --- a run -------------------------------------------------------------------------------

    def run(self, resume: bool = False, allow_changes: bool = False) -> dict:
        """Train to the end (or early stop) and write the run directory; returns the summary.

        The run directory is locked for the whole run (another training into it fails at once).
        `resume` continues the run there, which must exist, with its own config: a changed one
        is refused unless `allow_changes`, which records the change in config-changes.jsonl.
        SIGINT/SIGTERM finish the current step, save a checkpoint and stop (resumable); a
        non-finite loss stops before the bad update, keeping the last good prompt.
        """
        if resume:
            require_run(self.out_dir)
        with self.run_dir.lock():
            state, resumed_from = self._start(resume, allow_changes)
            started, first_step = time.perf_counter(), state.step
            stopped_early, last_dev = self._loop(state)
            seconds = time.perf_counter() - started
            self.run_dir.save_checkpoint(state)
            self._save_last(state)
            outcome = {
                "stopped_early": stopped_early,
                "last_dev": last_dev,
                "seconds": seconds,
                "steps_run": state.step - first_step,
                "resumed_from": resumed_from,
            }
            summary = _summary(self, state, outcome)
            self.run_dir.write_summary(summary)
            self.processes.wait_for_everyone()
        return summary

    def _start(self, resume: bool, allow_changes: bool) -> tuple[TrainState, Path | None]:
        """A fresh state, or the newest good checkpoint's; metrics past it are dropped. A resumed
        run's config must be its own, or the allowed change is recorded at the resumed step."""
        if not resume:
            self.run_dir.refuse_existing()
        self.lr_search = resolve_lr(self, resume)  # lr auto: the recorded or a searched rate
        changes = check_resume(self.out_dir, self.config, allow_changes) if resume else {}
        torch.manual_seed(self.settings.seed)
        state = self.fresh_state()
        resumed_from = self.load_checkpoint(state) if resume else None
        if changes and self.processes.is_main:
            record_changes(self.out_dir, changes, state.step)
        self.run_dir.prepare(self.config, state.step, resume, resumed_from)
        self.processes.wait_for_everyone()
        return state, resumed_from

    def _loop(self, state: TrainState) -> tuple[bool, dict | None]:
        """Steps until the last, an early stop or a signal; returns (stopped early, last dev)."""
        settings, (stopped_early, last_dev) = self.settings, self._resumed_end(state)
        log = RunLog(self.run_dir, settings.report_to, config_to_dict(self.config))
        with (
            ProgressBar(self.progress, settings.steps, state.step) as bar,
            DeferredSignals() as signals,
            log,
        ):
            while state.step < settings.steps and not stopped_early:
                loss, dev = self._step(state), None
                self._log_step(state, loss, log)
                if state.step % settings.eval_every == 0 or state.step == settings.steps:
                    dev = last_dev = self._evaluate(state, log)
                    stopped_early = self._after_eval(state, last_dev)
                bar.update(state.step, loss=loss, dev=dev)  # once a step: a log line has both
                if state.step % settings.checkpoint_every == 0 or stopped_early:
                    self.run_dir.save_checkpoint(state)
                log.flush()
                self._stop_if_signalled(state, signals)
        return stopped_early, last_dev

    def _resumed_end(self, state: TrainState) -> tuple[bool, dict | None]:
        """A run resumed from its last checkpoint (killed before its summary): whether it had
        stopped early, and its last evaluation's dev metrics (computed again, not logged
        twice), so its summary is the one the run would have written."""
        patience = self.settings.early_stopping_patience
        stopped = bool(patience and state.evals_without_improvement >= patience)
        evaluated = bool(state.history) and state.history[-1]["step"] == state.step
        if not evaluated or (state.step < self.settings.steps and not stopped):
            return False, None
        with torch.no_grad():
            return stopped, self.evaluate_dev(state.module)

    def _step(self, state: TrainState) -> float:
        """One training step; one that fails (a non-finite loss) still saves the last prompt."""
        try:
            return self.train_step(state)
        except SoftpromptError:
            self._save_last(state)
            raise

    def _log_step(self, state: TrainState, loss: float, log: RunLog) -> None:
        """The step's loss and learning rate (and each model's loss) to the run's log."""
        record = {"event": "train", "step": state.step, "loss": loss}
        record["lr"] = state.scheduler.get_last_lr()[0]
        if len(self.slots) > 1:
            record["model_losses"] = state.last_losses
        log.train(record)

    def _evaluate(self, state: TrainState, log: RunLog) -> dict:
        """Dev metrics of the prompt as it is now, logged."""
        with torch.no_grad():
            dev = self.evaluate_dev(state.module)
        log.eval(state.step, dev)
        return dev

    def _after_eval(self, state: TrainState, dev: dict) -> bool:
        """Keep the best prompt; returns True when early stopping says stop."""
        best_key = self.best_key()
        value = self._selection_metrics(dev)[best_key]
        if state.record_eval(dev["mean"], value, lower_is_better=best_key == "loss"):
            self.write_artifact(
                state, {"step": state.step, "dev": dev}, self.out_dir / "prompt.safetensors"
            )
        patience = self.settings.early_stopping_patience
        return bool(patience and state.evals_without_improvement >= patience)

    def _stop_if_signalled(self, state: TrainState, signals: DeferredSignals) -> None:
        """After SIGINT/SIGTERM in any process: checkpoint, save the last prompt, and stop."""
        if not self.processes.any(signals.received is not None):
            return
        self.run_dir.save_checkpoint(state)
        self._save_last(state)
        received = signals.received or "a signal (in another process)"
        raise Interrupted(
            f"{received} received: stopped at step {state.step} with a "
            f"checkpoint; continue with `softprompt train --resume {self.out_dir}`"
        )

    def _save_last(self, state: TrainState) -> None:
        self.write_artifact(state, {"step": state.step}, self.out_dir / "last.safetensors")

    # --- what gets saved, and how a step is scored -----------------------------------------

    def artifact(self, state: TrainState, training: dict | None = None):
        """What gets saved: the method's artifact of the trained module, with the header."""
        header = {
            "models": [model_record(b) for b in self.backbones],
            "task": self.config.task.recorded(),
            "init": self.config.prompt.model_dump(mode="json"),
            "training": training or {},
        }
        return state.module.artifact(header, self.backbones)

    def write_artifact(self, state: TrainState, training: dict, path: Path) -> None:
        if self.processes.is_main:
            self.artifact(state, training).save(path)

    def _micro_loss(self, slot: ModelSlot, steering: Steering, micro: list) -> torch.Tensor:
        """Summed loss of a micro-batch (divided by the whole batch's size by the caller)."""
        return slot.task.loss(steering, micro)

    def best_key(self) -> str:
        return self.slots[0].task.selection_metric(self.settings.best_metric)


def _summary(trainer: Trainer, state: TrainState, outcome: dict) -> dict:
    """summary.json: where the prompt is, how far the run got and how fast."""
    seconds, resumed_from = outcome["seconds"], outcome["resumed_from"]
    per_second = outcome["steps_run"] * trainer.settings.batch_size / seconds if seconds else 0.0
    return {
        "run_dir": str(trainer.out_dir),
        "prompt_path": str(trainer.out_dir / "prompt.safetensors"),
        "models": [b.name for b in trainer.backbones],
        "steps": state.step,
        "stopped_early": outcome["stopped_early"],
        "best_metric": trainer.best_key(),
        "best_value": state.best_value,
        "best_step": state.best_step,
        "dev": outcome["last_dev"],
        "best_dev": state.best_dev,
        "train_seconds": seconds,
        "train_samples_per_second": per_second,
        "resumed_from": str(resumed_from) if resumed_from else None,
        "processes": trainer.processes.world,
        "sharding": trainer.sharding.record,
        "precision": precision_of(trainer.backbones[0].dtype),
        "lr": trainer.settings.rate,
        "lr_search": getattr(trainer, "lr_search", None),
    }


def _load_backbones(
    config: TrainConfig, device: torch.device, sharded: bool = False
) -> list[Backbone]:
    """The run's models, each on its device (`train.devices` round-robin, else `device`), in
    the run's precision (`auto` resolved for those devices). Sharded models load into CPU
    memory: FSDP moves each process's shards to `device` (softprompt.training.sharding)."""
    names = config.train.devices or [str(device)]
    devices = [resolve_device(name) for name in names]
    dtype = DTYPE_NAMES[training_precision(config.train.precision, devices)]
    return [
        load_backbone(
            spec,
            dtype=dtype,
            device="cpu" if sharded else devices[i % len(devices)],
            trust_remote_code=config.trust_remote_code or None,
        )
        for i, spec in enumerate(config.models)
    ]


def _steering(source, model_index: int) -> Steering:
    """What model `model_index` is steered with: `source` is the trainable module (run anew,
    so gradients reach its parameters) or what a caller steers with (a prompt tensor)."""
    if isinstance(source, TrainableModule):
        return source.steering(model_index)
    return as_steering(source)


def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    allow_changes: bool = False,
    progress: bool = True,
    backbones: list[Backbone] | None = None,
) -> dict:
    """Train a soft prompt as configured; writes the run directory and returns its summary.
    `resume` continues the run in `out_dir` (see `Trainer.run` for `allow_changes`)."""
    trainer = Trainer(config, out_dir, backbones=backbones, progress=progress)
    return trainer.run(resume=resume, allow_changes=allow_changes)
