"""One training loop for a soft prompt on one or several frozen models.

The loss is the (weighted) mean of the per-model losses; each model's backward runs before the
next model's forward so only one model's activations are alive at a time. Everything needed to
continue a run lives in `TrainState` (softprompt.training.state) and is checkpointed in one
safetensors file of the run directory (softprompt.training.run_dir); which examples each step
takes is softprompt.training.schedule, what the user sees softprompt.training.console.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from softprompt.config import TrainConfig, config_to_dict
from softprompt.data import load_split
from softprompt.errors import ConfigError, SoftpromptError
from softprompt.evaluation import evaluate_task
from softprompt.methods.prefix import (
    PrefixEncoder,
    PrefixKV,
    SavedPrefix,
    prefix_geometry,
    save_prefix,
    text_prefix,
)
from softprompt.methods.prompt import SoftPrompt, init_embedding, model_record, save_prompt
from softprompt.models.backbone import Backbone, load_backbone, resolve_device
from softprompt.tasks import ClassificationTask, build_task, data_spec, encode_examples
from softprompt.training.console import DeferredSignals, Interrupted, ProgressBar
from softprompt.training.distributed import launched_processes
from softprompt.training.run_dir import RunDir, RunLog
from softprompt.training.schedule import BatchSchedule
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


class LinearMap(torch.nn.Module):
    """x @ weight + bias: from the prompt's space into one model's; learned or fixed."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, learned: bool) -> None:
        super().__init__()
        if learned:
            self.weight = torch.nn.Parameter(weight.clone())
            self.bias = torch.nn.Parameter(bias.clone())
        else:
            self.register_buffer("weight", weight.clone())
            self.register_buffer("bias", bias.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


class SoftPromptModule(torch.nn.Module):
    """The trainable [L, d] soft prompt; with models of other hidden sizes, also the map into
    each one's space (`maps[i]` is None for a model that takes the prompt as it is)."""

    def __init__(self, embedding: torch.Tensor, maps: list[LinearMap | None] | None = None) -> None:
        super().__init__()
        self.embedding = torch.nn.Parameter(embedding)
        self.maps = torch.nn.ModuleList([m or torch.nn.Identity() for m in maps or []])

    def forward(self) -> torch.Tensor:
        return self.embedding

    def view(self, model_index: int, prompt: torch.Tensor) -> torch.Tensor:
        """The prompt as model `model_index` takes it."""
        if model_index >= len(self.maps):
            return prompt
        return self.maps[model_index](prompt)

    def mapped_models(self) -> list[int]:
        return [i for i, m in enumerate(self.maps) if isinstance(m, LinearMap)]


def _item_length(item) -> int:
    """Token length of an encoded training item (classification rows or an LM window)."""
    if hasattr(item, "rows"):
        return max(len(ids) for ids, _, _ in item.rows)
    return len(item)


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
        if config.method == "prefix" and len(config.models) > 1:
            raise ConfigError("method 'prefix' trains on one model; list a single model")
        self.config = config
        self.settings = config.train
        self.out_dir = Path(out_dir)
        check_trackers(self.settings.report_to)
        self.processes = launched_processes(self.settings.device)
        self.run_dir = RunDir(self.out_dir, is_main=self.processes.is_main)
        self.progress = progress and self.processes.is_main
        self.device = self.processes.training_device(self.settings)
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
        self.schedule = BatchSchedule(
            self.slots[0].train,
            self.settings.batch_size,
            self.settings.seed,
            self.settings.length_bucketing,
            length=_item_length,
        )

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
            task = build_task(self.config.task, backbone, self._positions_used())
            slots.append(
                ModelSlot(
                    backbone=backbone,
                    task=task,
                    train=encode_examples(task, train_examples),
                    dev=encode_examples(task, dev_examples),
                    weight=weight / total,
                )
            )
        return slots

    # --- state -------------------------------------------------------------------------------

    def fresh_state(self) -> TrainState:
        """Step 0 of a run: a new module on the training device, its optimizer and schedule."""
        module = self._fresh_module().to(self.device)
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
            denominator = self._loss_denominator(slot, items)  # of the whole (global) batch
            share = self.processes.share(items)
            model_loss = 0.0
            for start in range(0, len(share), self.settings.micro_batch):
                micro = share[start : start + self.settings.micro_batch]
                loss = self._micro_loss(slot, self._steer(prompt, index), micro) / denominator
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
            per_model[slot.backbone.name] = evaluate_task(
                slot.task, self._steer(prompt, index), slot.dev, self.settings.eval_batch_size
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

    def run(self, resume: bool = False) -> dict:
        """Train to the end (or early stop) and write the run directory; returns the summary.

        SIGINT/SIGTERM finish the current step, save a checkpoint and stop (resumable); a
        non-finite loss stops before the bad update, keeping the last good prompt.
        """
        state, resumed_from = self._start(resume)
        started, first_step = time.perf_counter(), state.step
        stopped_early, last_dev = self._loop(state)
        seconds = time.perf_counter() - started
        self.run_dir.save_checkpoint(state)
        self._save_last(state)
        summary = self._summary(
            state,
            stopped_early=stopped_early,
            last_dev=last_dev,
            seconds=seconds,
            steps_run=state.step - first_step,
            resumed_from=resumed_from,
        )
        self.run_dir.write_summary(summary)
        self.processes.wait_for_everyone()
        return summary

    def _start(self, resume: bool) -> tuple[TrainState, Path | None]:
        """A fresh state, or the newest good checkpoint's; metrics past it are dropped."""
        if not resume:
            self.run_dir.refuse_existing()
        torch.manual_seed(self.settings.seed)
        state = self.fresh_state()
        resumed_from = self.load_checkpoint(state) if resume else None
        self.run_dir.prepare(self.config, state.step, resume, resumed_from)
        self.processes.wait_for_everyone()
        return state, resumed_from

    def _loop(self, state: TrainState) -> tuple[bool, dict | None]:
        """Steps until the last, an early stop or a signal; returns (stopped early, last dev)."""
        settings, stopped_early, last_dev = self.settings, False, None
        log = RunLog(self.run_dir, settings.report_to, config_to_dict(self.config))
        with (
            ProgressBar(self.progress, settings.steps, state.step) as bar,
            DeferredSignals() as signals,
            log,
        ):
            while state.step < settings.steps and not stopped_early:
                loss = self._step(state)
                self._log_step(state, loss, log, bar)
                if state.step % settings.eval_every == 0 or state.step == settings.steps:
                    last_dev = self._evaluate(state, log, bar)
                    stopped_early = self._after_eval(state, last_dev)
                if state.step % settings.checkpoint_every == 0 or stopped_early:
                    self.run_dir.save_checkpoint(state)
                log.flush()
                self._stop_if_signalled(state, signals)
        return stopped_early, last_dev

    def _step(self, state: TrainState) -> float:
        """One training step; one that fails (a non-finite loss) still saves the last prompt."""
        try:
            return self.train_step(state)
        except SoftpromptError:
            self._save_last(state)
            raise

    def _log_step(self, state: TrainState, loss: float, log: RunLog, bar: ProgressBar) -> None:
        """The step's loss and learning rate (and each model's loss) to the log and the bar."""
        record = {"event": "train", "step": state.step, "loss": loss}
        record["lr"] = state.scheduler.get_last_lr()[0]
        if len(self.slots) > 1:
            record["model_losses"] = state.last_losses
        log.train(record)
        bar.update(loss=loss, step=state.step)

    def _evaluate(self, state: TrainState, log: RunLog, bar: ProgressBar) -> dict:
        """Dev metrics of the prompt as it is now, logged and shown."""
        with torch.no_grad():
            dev = self.evaluate_dev(state.module)
        log.eval(state.step, dev)
        bar.update(dev=dev, step=state.step)
        return dev

    def _after_eval(self, state: TrainState, dev: dict) -> bool:
        """Keep the best prompt; returns True when early stopping says stop."""
        best_key = self._best_key()
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
            f"checkpoint; continue with `softprompt train CONFIG --resume "
            f"{self.out_dir}`"
        )

    def _save_last(self, state: TrainState) -> None:
        self.write_artifact(state, {"step": state.step}, self.out_dir / "last.safetensors")

    def _summary(
        self,
        state: TrainState,
        *,
        stopped_early: bool,
        last_dev: dict | None,
        seconds: float,
        steps_run: int,
        resumed_from: Path | None,
    ) -> dict:
        """summary.json: where the prompt is, how far the run got and how fast."""
        return {
            "run_dir": str(self.out_dir),
            "prompt_path": str(self.out_dir / "prompt.safetensors"),
            "models": [b.name for b in self.backbones],
            "steps": state.step,
            "stopped_early": stopped_early,
            "best_metric": self._best_key(),
            "best_value": state.best_value,
            "best_step": state.best_step,
            "dev": last_dev,
            "best_dev": state.best_dev,
            "train_seconds": seconds,
            "train_samples_per_second": steps_run * self.settings.batch_size / seconds
            if seconds
            else 0.0,
            "resumed_from": str(resumed_from) if resumed_from else None,
            "processes": self.processes.world,
        }

    # --- method and task specifics (moving to methods/ and tasks/) ---

    def _positions_used(self) -> int:
        """Input positions the prompt takes (a prefix lives in the cache instead)."""
        return self.config.prompt.length if self.config.method == "prompt" else 0

    def _fresh_module(self) -> torch.nn.Module:
        prompt_cfg = self.config.prompt
        if self.config.method == "prefix":
            return self._fresh_prefix()
        embedding = init_embedding(
            prompt_cfg.length,
            self.backbones[0],
            prompt_cfg.init,
            seed=prompt_cfg.seed,
            text=prompt_cfg.text,
            file=prompt_cfg.file,
        )
        return SoftPromptModule(embedding, self._cross_model_maps())

    def _cross_model_maps(self) -> list[LinearMap | None]:
        """A map from the first model's embedding space into each model of another hidden
        size, fitted on the shared vocabulary (cached on disk, see softprompt.crossmodel)."""
        first = self.backbones[0]
        if all(b.hidden_size == first.hidden_size for b in self.backbones):
            return []
        from softprompt.crossmodel.alignment import load_alignment

        settings = self.config.cross_model
        maps: list[LinearMap | None] = []
        for backbone in self.backbones:
            if backbone.hidden_size == first.hidden_size:
                maps.append(None)
                continue
            fitted = load_alignment(first, backbone, settings.alignment)
            maps.append(LinearMap(fitted.weight, fitted.bias, settings.maps == "learned"))
        return maps

    def _fresh_prefix(self) -> torch.nn.Module:
        prompt_cfg = self.config.prompt
        model = self.backbones[0].model
        start = None
        if prompt_cfg.init == "text":
            if not prompt_cfg.text:
                raise ConfigError("prompt.init 'text' needs prompt.text (the text to start from)")
            ids = self.backbones[0].tokenizer(prompt_cfg.text, return_tensors="pt").input_ids
            ids = ids[:, : prompt_cfg.length]
            start = PrefixKV(*text_prefix(model, ids.to(self.backbones[0].device)))
        elif prompt_cfg.init not in ("random", "text"):
            raise ConfigError("a prefix starts from init 'random' or 'text'")
        length = start.length if start is not None else prompt_cfg.length
        return PrefixEncoder(
            prefix_geometry(model),
            length,
            reparameterization=prompt_cfg.reparameterization,
            hidden=prompt_cfg.mlp_hidden,
            start=start,
            seed=prompt_cfg.seed,
        )

    def artifact(self, state: TrainState, training: dict | None = None):
        """What gets saved: the soft prompt, or the prefix's final keys/values (no MLP)."""
        header = {
            "models": [model_record(b) for b in self.backbones],
            "task": self.config.task.model_dump(mode="json"),
            "init": self.config.prompt.model_dump(mode="json"),
            "training": training or {},
        }
        with torch.no_grad():
            steer = state.steer()
        if isinstance(steer, PrefixKV):
            kv = PrefixKV(steer.keys.detach().cpu(), steer.values.detach().cpu())
            return SavedPrefix(kv=kv, **header)
        with torch.no_grad():
            views = {
                self.backbones[i].name: state.module.view(i, steer).float().cpu()
                for i in state.module.mapped_models()
            }
        return SoftPrompt(embedding=steer.detach().float().cpu(), views=views, **header)

    def write_artifact(self, state: TrainState, training: dict, path: Path) -> None:
        if not self.processes.is_main:
            return
        artifact = self.artifact(state, training)
        if isinstance(artifact, SavedPrefix):
            save_prefix(artifact, path)
        else:
            save_prompt(artifact, path)

    def _loss_denominator(self, slot: ModelSlot, items: list) -> float:
        if isinstance(slot.task, ClassificationTask):
            return float(len(items))
        return float(sum(len(w) - 1 for w in items))

    def _micro_loss(self, slot: ModelSlot, prompt: torch.Tensor, micro: list) -> torch.Tensor:
        """Summed loss of a micro-batch (divided by the whole batch's size by the caller)."""
        task = slot.task
        if isinstance(task, ClassificationTask):
            batch = task.collate(micro)
            return task.losses(task.class_scores(prompt, batch), batch.labels).sum()
        nll, _ = task.token_losses(prompt, task.collate(micro))
        return nll

    @staticmethod
    def _steer(prompt, model_index: int):
        """What model `model_index` is steered with: `prompt` is a tensor, or the trainable
        module (run anew, then mapped into that model's space where needed)."""
        if not isinstance(prompt, torch.nn.Module):
            return prompt
        steer = prompt()
        return prompt.view(model_index, steer) if isinstance(prompt, SoftPromptModule) else steer

    def _best_key(self) -> str:
        if isinstance(self.slots[0].task, ClassificationTask):
            return self.settings.best_metric
        return "loss"


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
