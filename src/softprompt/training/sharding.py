"""`train.shard: fsdp`: each frozen model's weights sharded across the processes of a launch.

torch's FSDP2 (`torch.distributed.fsdp.fully_shard`) wraps every decoder layer, then the whole
model (the root: embeddings, final norm, LM head). Each process then holds about 1/world of
every model's weights; a layer is all-gathered only while it runs (in forward, and again in
backward, since the prompt's gradient needs the layer's weights) and freed after. The prompt,
prefix or encoder is not sharded: it stays replicated and its gradient is summed as in plain
data-parallel training (softprompt.training.distributed).

softprompt calls the body and the LM head of a model separately (to read only the positions a
loss needs), never the root's own forward, so the root's parameters are gathered explicitly
for the span of a micro-batch (`Sharding.gathered`): `unshard()` before, `reshard()` after.
One forward through the root at setup lets FSDP pick its root as it expects.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from softprompt.config import TrainSettings
from softprompt.errors import ConfigError
from softprompt.models import Backbone
from softprompt.training.distributed import Processes


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks: modules of the classes transformers keeps whole when it
    splits a model (`_no_split_modules`: LlamaDecoderLayer, GPT2Block, BertLayer, ...)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ConfigError(
            f"train.shard: fsdp cannot find the decoder layers of {type(model).__name__} "
            "(it declares no _no_split_modules); train it without train.shard"
        )
    return layers


def wrap_model(model: nn.Module, world: int, device: torch.device) -> None:
    """FSDP2's wrapping alone (per decoder layer, then the root): local, no communication, so
    processes may wrap one after another (see `Sharding.load`)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world,))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


def settle_root(model: nn.Module, device: torch.device) -> None:
    """One forward through the wrapped model, by every process at once: it tells FSDP which
    module is the root (it would take the first layer to run otherwise); the root keeps its
    weights after a forward, so they are freed after it."""
    with torch.no_grad():
        token = torch.zeros((1, 1), dtype=torch.long, device=device)
        model(input_ids=token, attention_mask=torch.ones_like(token))
    model.reshard()


def release_freed_memory() -> None:
    """Give freed heap pages back to the system (glibc's malloc_trim), so that a whole model
    dropped after sharding leaves room for the next process's turn."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def checkpoint_layers(model: nn.Module) -> None:
    """Gradient checkpointing (transformers' own, non-reentrant): each layer's activations are
    recomputed in backward instead of kept. transformers checkpoints only layers in training
    mode, so the layers alone are flagged as training (their dropout modules stay in eval)."""
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False) is True:
            module.training = True


def local_parameter_bytes(model: nn.Module) -> int:
    """Bytes of the parameters this process holds: its shards only, for a sharded model."""
    total = 0
    for parameter in model.parameters():
        local = parameter.to_local() if hasattr(parameter, "to_local") else parameter
        total += local.numel() * local.element_size()
    return total


class Sharding:
    """The run's sharding: none (every process holds every model whole) or FSDP2."""

    def __init__(self, settings: TrainSettings, processes: Processes) -> None:
        mode = settings.shard
        if mode == "fsdp" and processes.world == 1:
            raise ConfigError(
                "train.shard: fsdp shards over the processes of a launch and this run has one; "
                "launch with `torchrun --nproc_per_node N -m softprompt.cli train ...` or "
                "remove train.shard"
            )
        if mode == "fsdp" and settings.batch_size % processes.world:
            raise ConfigError(
                f"train.shard: fsdp needs the same share of every batch in every process (each "
                f"forward all-gathers the layers with the others): make train.batch_size "
                f"({settings.batch_size}) a multiple of the number of processes ({processes.world})"
            )
        self.mode = mode
        self.checkpointing = settings.gradient_checkpointing
        self.processes = processes
        self.models: list[nn.Module] = []
        self.record: dict = {"mode": mode}

    @property
    def active(self) -> bool:
        return self.mode == "fsdp"

    def load(self, load: Callable[[], list[Backbone]], device: torch.device) -> list[Backbone]:
        """The run's frozen models from `load`, checkpointed (`train.gradient_checkpointing`)
        and sharded (`train.shard: fsdp`). Sharded, the processes of a machine load and wrap
        in turns, each dropping the whole weights for its shards before the next loads, so a
        machine's memory holds one whole copy of the models at a time, not one per process.
        Each process's shards go to `device` (a model never lands whole on a GPU)."""
        if not self.active:
            backbones = load()
            for backbone in backbones if self.checkpointing else []:
                checkpoint_layers(backbone.model)
            return backbones
        backbones: list[Backbone] = []
        turns = int(os.environ.get("LOCAL_WORLD_SIZE", self.processes.world))
        turn_of_this = int(os.environ.get("LOCAL_RANK", self.processes.rank))
        for turn in range(turns):
            if turn == turn_of_this:
                backbones = load()
                for backbone in backbones:
                    if self.checkpointing:
                        checkpoint_layers(backbone.model)
                    wrap_model(backbone.model, self.processes.world, device)
                release_freed_memory()
            torch.distributed.barrier()
        for backbone in backbones:
            settle_root(backbone.model, device)
            self.models.append(backbone.model)
        self._record_bytes(device)
        return backbones

    def _record_bytes(self, device: torch.device) -> None:
        """The largest share any process holds, against the models whole (summary.json)."""
        local = sum(local_parameter_bytes(model) for model in self.models)
        most = torch.tensor([local], dtype=torch.float64, device=device)  # NCCL: on the GPU
        torch.distributed.all_reduce(most, op=torch.distributed.ReduceOp.MAX)
        whole = sum(p.numel() * p.element_size() for m in self.models for p in m.parameters())
        self.record |= {"local_bytes": int(most.item()), "model_bytes": int(whole)}

    def gathered(self, backbone: Backbone | None = None):
        """A block within which the root weights (embeddings, final norm, LM head) of
        `backbone`'s model (None: every model's) are whole; the decoder layers gather
        themselves when they run."""
        models = self.models if backbone is None else [backbone.model]
        return self._gathered(models) if self.models else nullcontext()

    @contextmanager
    def _gathered(self, models: list[nn.Module]) -> Iterator[None]:
        for model in models:
            model.unshard()
        try:
            yield
        finally:
            for model in models:
                model.reshard()
