"""softprompt: train, use, explain and compress soft prompts for frozen language models.

The public Python API (everything the CLI does):

    from softprompt import load_config, train, evaluate, predict, generate, load_backbone
    from softprompt import predict_file, generate_file
    from softprompt import explain, compress_prompt, export_peft, import_peft, transfer_prompt

See README.md "Python API" and examples/python_api.py.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ below imports
    from softprompt.alignment.cache import load_alignment
    from softprompt.alignment.fit import Alignment, fit_alignment
    from softprompt.alignment.vocabulary import shared_vocabulary
    from softprompt.analysis.compress_command import compress_prompt
    from softprompt.analysis.explain import explain
    from softprompt.analysis.explain_report import write_explain_report
    from softprompt.analysis.report import write_report
    from softprompt.analysis.similarity import similarity_matrices
    from softprompt.artifacts import open_artifact
    from softprompt.batch_files import generate_file, predict_file, read_inputs
    from softprompt.config import TrainConfig, load_config
    from softprompt.crossmodel.matrix import transfer_matrix, write_matrix
    from softprompt.crossmodel.transfer import transfer_prompt
    from softprompt.demo import run_demo
    from softprompt.errors import SoftpromptError
    from softprompt.generation import SamplingOptions, generate, generate_samples
    from softprompt.interop.esp import import_esp
    from softprompt.interop.peft import export_peft, import_peft
    from softprompt.methods import load_artifact
    from softprompt.methods.prefix import SavedPrefix, load_prefix, save_prefix
    from softprompt.methods.prompt import SoftPrompt, load_prompt, save_prompt
    from softprompt.migration import migrate
    from softprompt.models import Backbone, load_backbone
    from softprompt.models.tiny import tiny_family
    from softprompt.serving.server import Server, serve
    from softprompt.session import Session, evaluate, predict
    from softprompt.study import load_study, run_study
    from softprompt.training.trainer import train

__version__ = "0.1.0"

# Public name -> the module defining it. A name's module is imported on first use (PEP 562), so
# that `import softprompt`, and with it the CLI's --help, does not wait for torch and
# transformers.
_EXPORTS = {
    "Alignment": "softprompt.alignment.fit",
    "Backbone": "softprompt.models.backbone",
    "SamplingOptions": "softprompt.generation",
    "Session": "softprompt.session",
    "SavedPrefix": "softprompt.methods.prefix",
    "Server": "softprompt.serving.server",
    "SoftPrompt": "softprompt.methods.prompt",
    "SoftpromptError": "softprompt.errors",
    "TrainConfig": "softprompt.config",
    "compress_prompt": "softprompt.analysis.compress_command",
    "evaluate": "softprompt.session",
    "explain": "softprompt.analysis.explain",
    "export_peft": "softprompt.interop.peft",
    "fit_alignment": "softprompt.alignment.fit",
    "generate": "softprompt.generation",
    "generate_file": "softprompt.batch_files",
    "generate_samples": "softprompt.generation",
    "import_esp": "softprompt.interop.esp",
    "import_peft": "softprompt.interop.peft",
    "load_alignment": "softprompt.alignment.cache",
    "load_artifact": "softprompt.methods",
    "load_backbone": "softprompt.models.loading",
    "load_config": "softprompt.config",
    "load_prefix": "softprompt.methods.prefix",
    "load_prompt": "softprompt.methods.prompt",
    "load_study": "softprompt.study",
    "migrate": "softprompt.migration",
    "open_artifact": "softprompt.artifacts",
    "predict": "softprompt.session",
    "predict_file": "softprompt.batch_files",
    "read_inputs": "softprompt.batch_files",
    "run_demo": "softprompt.demo",
    "run_study": "softprompt.study",
    "save_prefix": "softprompt.methods.prefix",
    "save_prompt": "softprompt.methods.prompt",
    "serve": "softprompt.serving.server",
    "shared_vocabulary": "softprompt.alignment.vocabulary",
    "similarity_matrices": "softprompt.analysis.similarity",
    "train_cartridge": "softprompt.training.cartridge",
    "tiny_family": "softprompt.models.tiny",
    "train": "softprompt.training.trainer",
    "plan_run": "softprompt.training.plan",
    "plan_memory": "softprompt.training.plan",
    "transfer_matrix": "softprompt.crossmodel.matrix",
    "transfer_prompt": "softprompt.crossmodel.transfer",
    "write_explain_report": "softprompt.analysis.explain_report",
    "write_matrix": "softprompt.crossmodel.matrix",
    "write_report": "softprompt.analysis.report",
}
__all__ = [
    "Alignment",
    "Backbone",
    "SamplingOptions",
    "SavedPrefix",
    "Server",
    "Session",
    "SoftPrompt",
    "SoftpromptError",
    "TrainConfig",
    "compress_prompt",
    "evaluate",
    "explain",
    "export_peft",
    "fit_alignment",
    "generate",
    "generate_file",
    "generate_samples",
    "import_esp",
    "import_peft",
    "load_alignment",
    "load_artifact",
    "load_backbone",
    "load_config",
    "load_prefix",
    "load_prompt",
    "load_study",
    "migrate",
    "open_artifact",
    "plan_memory",
    "plan_run",
    "predict",
    "predict_file",
    "read_inputs",
    "run_demo",
    "run_study",
    "save_prefix",
    "save_prompt",
    "serve",
    "shared_vocabulary",
    "similarity_matrices",
    "tiny_family",
    "train",
    "train_cartridge",
    "transfer_matrix",
    "transfer_prompt",
    "write_explain_report",
    "write_matrix",
    "write_report",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access and keep the name here."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
