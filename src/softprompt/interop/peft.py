"""PEFT adapters both ways: a softprompt prompt or prefix as a PEFT prompt-tuning or
prefix-tuning adapter directory (`adapter_config.json` + `adapter_model.safetensors`), and such
adapters back as softprompt artifacts.

The layout follows PEFT's own code (peft 0.21, `PeftModel.get_prompt`); the adapter holds one
tensor, `prompt_embeddings`:

- prompt tuning: [L, hidden], prepended to the input embeddings with attention mask 1, which is
  what softprompt does with a prompt;
- prefix tuning: [L, layers * 2 * kv_dim], viewed as [L, layers * 2, kv_heads, head_dim] with the
  key of layer i at row 2i and its value at 2i + 1. For grouped-query attention PEFT stores the
  key-value heads in `num_attention_heads` and their width in `token_dim`. With
  `prefix_projection=True`, PEFT saves the MLP's output, so the file holds the final keys/values
  too and needs no encoder to run.

PEFT is not needed at run time: the two files are written and read directly. Export also stores
the softprompt header (models, task, training) in the safetensors metadata, which PEFT ignores,
so a round trip keeps the template and verbalizer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from softprompt.errors import ModelError, PromptFileError, UsageError
from softprompt.files import atomic_folder, read_safetensors, write_safetensors_atomic
from softprompt.methods import load_artifact
from softprompt.methods.artifact import header_metadata, model_record, parse_json_field
from softprompt.methods.prefix import SavedPrefix
from softprompt.methods.prompt import SoftPrompt
from softprompt.models import BUNDLED, Backbone, as_backbone
from softprompt.steering.prefix import PrefixKV, prefix_geometry

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
TENSOR = "prompt_embeddings"
HEADER_KEY = "softprompt"
# the PEFT types an import reads, and the softprompt artifact each becomes (a P_TUNING adapter
# saves the prompt its encoder outputs, so it imports as a plain prompt)
METHODS = {
    "PROMPT_TUNING": "prompt",
    "P_TUNING": "prompt",
    "PREFIX_TUNING": "prefix",
    "CARTRIDGE": "cartridge",
}
KV_TYPES = ("PREFIX_TUNING", "CARTRIDGE")  # PEFT types whose tensor is flat keys/values


def export_peft(
    artifact_path: str | os.PathLike,
    model: Backbone | str,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> Path:
    """Write a prompt or prefix artifact as a PEFT adapter directory for `model` (a loaded
    backbone or a model spec) that `PeftModel.from_pretrained(base_model, out_dir)` loads as is.

    The folder appears complete or not at all (written beside it, then renamed); an existing,
    non-empty folder is replaced only with `overwrite=True`.
    """
    backbone = as_backbone(model)
    if backbone.kind != "causal":
        raise ModelError(
            f"PEFT export needs a causal LM; {backbone.name} is a masked LM (PEFT's prompt "
            "tuning has no masked-LM task type)"
        )
    artifact = load_artifact(artifact_path)
    if artifact.method not in CODECS:
        raise UsageError(f"{artifact_path}: a {artifact.method!r} artifact has no PEFT form")
    tensor, config = CODECS[artifact.method].to_peft(artifact, backbone, str(artifact_path))
    metadata = {"format": "pt", HEADER_KEY: json.dumps(header_metadata(artifact), sort_keys=True)}
    return _write_adapter_dir(Path(out_dir), config, tensor, metadata, overwrite)


def import_peft(
    adapter_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    backbones: list[Backbone] | None = None,
) -> SoftPrompt | SavedPrefix:
    """Read a PEFT prompt-tuning or prefix-tuning adapter directory and write it as a softprompt
    artifact at `out_path`; returns the artifact.

    The header names `backbones` when given (each is checked to fit), else the models recorded
    by a softprompt export, else the adapter's `base_model_name_or_path`.
    """
    artifact = peft_artifact(adapter_dir, backbones)
    artifact.save(out_path)
    return artifact


def peft_artifact(
    adapter_dir: str | os.PathLike, backbones: list[Backbone] | None = None
) -> SoftPrompt | SavedPrefix:
    """A PEFT prompt-tuning or prefix-tuning adapter directory as a softprompt artifact, in
    memory (see `import_peft`)."""
    config, tensor, metadata = read_peft_adapter(adapter_dir)
    method = METHODS[config["peft_type"]]
    header = _embedded_header(metadata, method, adapter_dir)
    base = config.get("base_model_name_or_path")
    named = [{"name": base}] if isinstance(base, str) and base else []
    fields = {
        "models": header.get("models") or named,
        "task": header.get("task", {}),
        "training": header.get("training", {}),
        "init": {
            "init": "file",
            "file": str(adapter_dir),
            "imported_from": "peft",
            "peft_type": config["peft_type"],
            "prefix_projection": bool(config.get("prefix_projection", False)),
        },
    }
    if config["peft_type"] == "CARTRIDGE":
        fields["init"]["frozen"] = int(config.get("num_frozen_tokens", 1))
    artifact = CODECS[method].from_peft(tensor, config, fields)
    for backbone in backbones or []:
        artifact.steering_for(backbone, source=str(adapter_dir))  # checks that it fits
    if backbones:
        artifact.models = [model_record(b) for b in backbones]
    return artifact


class _PromptCodec:
    """Prompt tuning: the [L, hidden] matrix is PEFT's tensor as it is."""

    def to_peft(self, artifact: SoftPrompt, backbone: Backbone, source: str):
        """A prompt trained with p-tuning (its header's `init.method`) as PEFT's `P_TUNING`,
        which loads the encoder's output as is; any other prompt as `PROMPT_TUNING`."""
        artifact.check_fits(backbone.hidden_size, backbone.name, source=source)
        if artifact.init.get("method") == "p_tuning":
            return artifact.embedding, _p_tuning_config(backbone, artifact.length, artifact.init)
        return artifact.embedding, _prompt_config(backbone, artifact.length)

    def from_peft(self, tensor: torch.Tensor, config: dict, fields: dict) -> SoftPrompt:
        return SoftPrompt(embedding=tensor, **fields)


class _PrefixCodec:
    """Prefix tuning: keys/values flattened the way PEFT lays them out."""

    def to_peft(self, artifact: SavedPrefix, backbone: Backbone, source: str):
        artifact.check_fits(backbone.model, backbone.name, source=source)
        return flatten_prefix(artifact.kv), _prefix_config(backbone, artifact.length)

    def from_peft(self, tensor: torch.Tensor, config: dict, fields: dict) -> SavedPrefix:
        kv = unflatten_prefix(tensor, config["num_layers"], config["num_attention_heads"])
        return SavedPrefix(kv=kv, **fields)


class _CartridgeCodec:
    """Cartridge: PEFT's CARTRIDGE keeps the keys/values in prefix tuning's flat layout, with
    the number of frozen first positions (`num_frozen_tokens`) in its config."""

    def to_peft(self, artifact: SavedPrefix, backbone: Backbone, source: str):
        artifact.check_fits(backbone.model, backbone.name, source=source)
        frozen = min(int(artifact.init.get("frozen", 1)), artifact.length)
        config = _prefix_config(backbone, artifact.length)
        config.update(peft_type="CARTRIDGE", num_frozen_tokens=frozen)
        for key in ("encoder_hidden_size", "prefix_projection"):
            config.pop(key)
        return flatten_prefix(artifact.kv), config

    def from_peft(self, tensor: torch.Tensor, config: dict, fields: dict) -> SavedPrefix:
        kv = unflatten_prefix(tensor, config["num_layers"], config["num_attention_heads"])
        return SavedPrefix(kv=kv, method="cartridge", **fields)


# how each method's artifact maps to a PEFT adapter (by softprompt method name)
CODECS = {"prompt": _PromptCodec(), "prefix": _PrefixCodec(), "cartridge": _CartridgeCodec()}


def flatten_prefix(kv: PrefixKV) -> torch.Tensor:
    """softprompt keys/values ([layers, kv_heads, L, head_dim] each) as PEFT's flat prefix
    [L, layers * 2 * kv_heads * head_dim] (layer-major, key before value)."""
    stacked = torch.stack([kv.keys, kv.values], dim=1)  # [layers, 2, kv_heads, L, head_dim]
    layers, _, heads, length, head_dim = stacked.shape
    flat = stacked.permute(3, 0, 1, 2, 4).reshape(length, layers * 2 * heads * head_dim)
    return flat.detach().float().cpu().contiguous()


def unflatten_prefix(flat: torch.Tensor, layers: int, kv_heads: int) -> PrefixKV:
    """PEFT's flat prefix [L, layers * 2 * kv_dim] as softprompt keys/values."""
    kv = flat.float().reshape(flat.shape[0], layers, 2, kv_heads, -1).permute(2, 1, 3, 0, 4)
    return PrefixKV(kv[0].contiguous(), kv[1].contiguous())


def read_peft_adapter(adapter_dir: str | os.PathLike) -> tuple[dict, torch.Tensor, dict]:
    """The validated config, `prompt_embeddings` tensor (float32) and safetensors metadata of a
    PEFT prompt-tuning or prefix-tuning adapter directory."""
    folder = Path(adapter_dir)
    if not folder.is_dir():
        found = "is a file, not a folder" if folder.exists() else "not found"
        raise PromptFileError(f"PEFT adapter folder {folder} {found}")
    config = _read_config(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        hint = ""
        if (folder / "adapter_model.bin").is_file():
            hint = "; only adapter_model.bin is there: re-save it with save_pretrained(...)"
        raise PromptFileError(f"{folder} has no {WEIGHTS_FILE}{hint}")
    tensors, metadata = read_safetensors(weights)
    tensor = tensors.get(TENSOR)
    if tensor is None:
        found = ", ".join(tensors) or "nothing"
        raise PromptFileError(f"{weights} has no {TENSOR!r} tensor (found: {found})")
    _check_tensor(tensor, config, weights)
    return config, tensor.float().contiguous(), metadata


def _read_config(folder: Path) -> dict:
    """adapter_config.json, checked for a supported type and sane sizes."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise PromptFileError(f"{folder} is not a PEFT adapter folder: it has no {CONFIG_FILE}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PromptFileError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise PromptFileError(f"{path} must hold a JSON object")
    peft_type = config.get("peft_type")
    if peft_type not in METHODS:
        raise PromptFileError(
            f"{folder} holds a {peft_type} adapter; softprompt imports only "
            "PROMPT_TUNING, P_TUNING, PREFIX_TUNING and CARTRIDGE adapters"
        )
    for key in ("num_virtual_tokens", "token_dim", "num_layers", "num_attention_heads"):
        value = config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise PromptFileError(f"{path}: {key!r} must be a positive integer, got {value!r}")
    submodules = config.get("num_transformer_submodules") or 1
    if submodules != 1:
        raise PromptFileError(
            f"{path}: num_transformer_submodules is {submodules} (an encoder-decoder adapter); "
            "softprompt imports adapters of decoder-only or encoder-only models"
        )
    return config


def _check_tensor(tensor: torch.Tensor, config: dict, weights: Path) -> None:
    """The tensor's shape must be what the config says (PEFT's layout), its values finite."""
    length, width = config["num_virtual_tokens"], config["token_dim"]
    if config["peft_type"] in KV_TYPES:
        if width % config["num_attention_heads"]:
            raise PromptFileError(
                f"{weights.parent / CONFIG_FILE}: token_dim {width} is not a multiple of "
                f"num_attention_heads {config['num_attention_heads']}"
            )
        width = config["num_layers"] * 2 * width
    if not tensor.is_floating_point() or list(tensor.shape) != [length, width]:
        raise PromptFileError(
            f"{weights}: {TENSOR!r} is {tensor.dtype} {list(tensor.shape)}, but the adapter "
            f"config implies a float [{length}, {width}] matrix"
        )
    if not torch.isfinite(tensor).all():
        raise PromptFileError(f"{weights}: {TENSOR!r} holds NaN or infinite values")


def _embedded_header(metadata: dict, method: str, adapter_dir) -> dict:
    """models/task/training stored by a softprompt export (parsed and type-checked), or {}."""
    text = metadata.get(HEADER_KEY)
    if text is None:
        return {}
    try:
        inner = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PromptFileError(f"{adapter_dir}: metadata {HEADER_KEY!r} is not valid JSON") from exc
    if not isinstance(inner, dict) or inner.get("method") != method:
        return {}
    header = {k: parse_json_field(inner, k, adapter_dir) for k in ("models", "task", "training")}
    if not all(isinstance(m, dict) for m in header["models"]):
        raise PromptFileError(f"{adapter_dir}: metadata 'models' must be a list of objects")
    return header


def _base_model_name(backbone: Backbone) -> str:
    """What the adapter records as its base model: a bundled alias as is, a local folder as an
    absolute path, anything else (a hub id) as given."""
    name = backbone.name
    path = Path(name).expanduser()
    if name not in BUNDLED and path.exists():
        return str(path.resolve())
    return name


def _common_config(backbone: Backbone, peft_type: str, length: int, token_dim: int, heads: int):
    """The PromptLearningConfig fields that PEFT 0.21 writes, minus its optional `peft_version`
    and `init_weights` (newer keys that older PEFT releases may not know)."""
    return {
        "peft_type": peft_type,
        "task_type": "CAUSAL_LM",
        "inference_mode": True,
        "base_model_name_or_path": _base_model_name(backbone),
        "revision": None,
        "auto_mapping": None,
        "modules_to_save": None,
        "num_virtual_tokens": length,
        "token_dim": token_dim,
        "num_transformer_submodules": 1,
        "num_attention_heads": heads,
        "num_layers": prefix_geometry(backbone.model)[0],
    }


def _prompt_config(backbone: Backbone, length: int) -> dict:
    config = backbone.model.config.get_text_config(decoder=True)
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    return {
        **_common_config(backbone, "PROMPT_TUNING", length, backbone.hidden_size, int(heads)),
        "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_text": None,
        "tokenizer_name_or_path": None,
        "tokenizer_kwargs": None,
    }


def _p_tuning_config(backbone: Backbone, length: int, settings: dict) -> dict:
    """PEFT's PromptEncoderConfig with the encoder the prompt was trained with (PEFT loads
    only the saved output in inference mode; the encoder's shape is recorded for the reader)."""
    config = backbone.model.config.get_text_config(decoder=True)
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    return {
        **_common_config(backbone, "P_TUNING", length, backbone.hidden_size, int(heads)),
        "encoder_reparameterization_type": str(settings.get("encoder", "mlp")).upper(),
        "encoder_hidden_size": int(settings.get("encoder_hidden_size", 128)),
        "encoder_num_layers": 2,
        "encoder_dropout": 0.0,
    }


def _prefix_config(backbone: Backbone, length: int) -> dict:
    """Key-value heads as `num_attention_heads` and their width as `token_dim`: the values PEFT
    itself derives for grouped-query attention (`_prepare_prompt_learning_config`)."""
    _, kv_heads, head_dim = prefix_geometry(backbone.model)
    return {
        **_common_config(backbone, "PREFIX_TUNING", length, kv_heads * head_dim, kv_heads),
        "encoder_hidden_size": kv_heads * head_dim,
        "prefix_projection": False,
    }


def _write_adapter_dir(
    target: Path, config: dict, tensor: torch.Tensor, metadata: dict, overwrite: bool
) -> Path:
    """Write both files into a fresh sibling folder, then move it into place."""
    if target.exists() and not target.is_dir():
        raise UsageError(f"--out {target} is a file; give a folder for the PEFT adapter")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise UsageError(f"{target} exists and is not empty; choose another --out or add --force")
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(target) as staging:
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        tensors = {TENSOR: tensor.detach().float().cpu().contiguous()}
        write_safetensors_atomic(tensors, metadata, staging / WEIGHTS_FILE)
    return target
