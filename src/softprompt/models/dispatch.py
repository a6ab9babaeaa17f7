"""A model bigger than one device, for inference: `--device-map auto` (`--max-memory`).

accelerate's big-model dispatch decides, from each device's memory budget, where each decoder
layer lives: on the GPUs in turn, then in CPU memory, then (past the CPU's budget) on disk,
and moves the weights of an offloaded layer in only while it runs. softprompt reads the
input embeddings and the LM head directly (the prompt lives in the embedding space; a loss
reads a few vocabulary rows of the head), so those and the final norm stay on the first
device, outside the budget; only the decoder layers are spread.
"""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile

from softprompt.errors import UsageError

DEVICE_MAPS = ("auto",)
_SIZE = re.compile(r"^\d+(\.\d+)?\s*([KMGT]i?B)?$", re.IGNORECASE)


def parse_max_memory(text: str | None) -> dict[int | str, str] | None:
    """`--max-memory "0=70GiB,1=70GiB,cpu=200GiB"` (a bare size: the CPU's) as accelerate's
    `max_memory` dict: device index or "cpu" to a size string."""
    if not text:
        return None
    budget: dict[int | str, str] = {}
    for part in text.split(","):
        device, _, size = part.strip().rpartition("=")
        device = device.strip() or "cpu"
        if not _SIZE.match(size.strip()) or not (device == "cpu" or device.isdigit()):
            raise UsageError(
                f"--max-memory: cannot read {part.strip()!r}; give DEVICE=SIZE pairs such as "
                "0=70GiB,cpu=200GiB (DEVICE a GPU index or cpu; SIZE in B, KiB, MiB, GiB)"
            )
        budget[int(device) if device.isdigit() else device] = size.strip()
    return budget


def check_device_map(device_map: str | None) -> None:
    if device_map is not None and device_map not in DEVICE_MAPS:
        raise UsageError(f"--device-map {device_map!r}: the one choice is auto (or leave it out)")


def device_map_for(model_class, config, dtype, max_memory: dict | None, main: str) -> dict:
    """Where each module goes: accelerate's map for the budget, with the embeddings, final
    norm and head (every module outside a decoder layer) moved to the first device `main`."""
    import torch
    from accelerate import infer_auto_device_map, init_empty_weights

    with init_empty_weights():
        empty = model_class.from_config(config, dtype=dtype)
    empty.tie_weights()
    layers = set(getattr(empty, "_no_split_modules", None) or [])
    placed = infer_auto_device_map(
        empty, max_memory=max_memory, no_split_module_classes=sorted(layers), dtype=dtype
    )
    blocks = {name for name, m in empty.named_modules() if type(m).__name__ in layers}
    device_map = {}
    for name, device in _split(empty, placed, blocks).items():
        inside = any(name == b or name.startswith(b + ".") for b in blocks)
        device_map[name] = device if inside else main
    del empty
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return device_map


def _split(model, placed: dict, blocks: set[str]) -> dict:
    """The map with every entry that holds both decoder layers and other modules split into
    its children, so that the other modules can be placed on their own."""
    result = dict(placed)
    changed = True
    while changed:
        changed = False
        for name, device in list(result.items()):
            holds = [b for b in blocks if name == "" or b.startswith(name + ".")]
            if holds and name not in blocks:
                del result[name]
                module = model.get_submodule(name) if name else model
                prefix = f"{name}." if name else ""
                for child, _ in module.named_children():
                    result[prefix + child] = device
                for param, _ in module.named_parameters(recurse=False):
                    result[prefix + param] = device
                changed = True
    return result


def dispatch_kwargs(model_class, config, dtype, device, max_memory: dict | None) -> dict:
    """`from_pretrained` keywords that load the model straight into its places (weights beyond
    every budget offloaded to a temporary folder on disk)."""
    main = "cpu" if device.type == "cpu" else device.index or 0
    device_map = device_map_for(model_class, config, dtype, max_memory, main)
    offload = tempfile.mkdtemp(prefix="softprompt-offload-")
    atexit.register(shutil.rmtree, offload, ignore_errors=True)
    return {"device_map": device_map, "offload_folder": offload}
