"""Frozen models behind one facade (Backbone) and their loading: bundled alias, folder,
.gguf file or hub id; tiny families for tests.

The modules, each depending only on those above it: backbone (the facade class and the model
kinds), gguf (checking and converting GGUF files, the cache), bundled (the bundled aliases),
loading (a spec to a Backbone, the device). This package re-exports what the rest of
softprompt uses.
"""

from softprompt.models.backbone import Backbone, detect_kind
from softprompt.models.bundled import BUNDLED, DEFAULT_MODEL, ensure_bundled, list_models
from softprompt.models.gguf import cache_root, check_gguf_readable
from softprompt.models.loading import as_backbone, load_backbone, resolve_device, resolve_spec

__all__ = [
    "BUNDLED",
    "DEFAULT_MODEL",
    "Backbone",
    "as_backbone",
    "cache_root",
    "check_gguf_readable",
    "detect_kind",
    "ensure_bundled",
    "list_models",
    "load_backbone",
    "resolve_device",
    "resolve_spec",
]
