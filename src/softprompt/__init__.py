"""softprompt: train, use, explain and compress soft prompts for frozen language models.

The public Python API (everything the CLI does):

    from softprompt import load_config, train, evaluate, predict, generate, load_backbone
    from softprompt import explain, compress_prompt, export_peft, import_peft, transfer_prompt

See README.md "Python API" and examples/python_api.py.
"""

from softprompt.analysis.compress_command import compress_prompt
from softprompt.analysis.explain import explain
from softprompt.analysis.explain_report import write_explain_report
from softprompt.analysis.report import write_report
from softprompt.analysis.similarity import similarity_matrices
from softprompt.config import TrainConfig, load_config
from softprompt.crossmodel.alignment import (
    Alignment,
    fit_alignment,
    load_alignment,
    shared_vocabulary,
    transfer_prompt,
)
from softprompt.crossmodel.matrix import transfer_matrix, write_matrix
from softprompt.demo import run_demo
from softprompt.errors import SoftpromptError
from softprompt.evaluation import evaluate, predict
from softprompt.generation import SamplingOptions, generate, generate_samples
from softprompt.interop.esp import import_esp
from softprompt.interop.peft import export_peft, import_peft
from softprompt.methods.prefix import SavedPrefix, load_artifact, load_prefix, save_prefix
from softprompt.methods.prompt import SoftPrompt, load_prompt, save_prompt
from softprompt.models.backbone import Backbone, load_backbone
from softprompt.models.tiny import tiny_family
from softprompt.study import load_study, run_study
from softprompt.training.trainer import train

__version__ = "0.1.0"
__all__ = [
    "Alignment",
    "Backbone",
    "SamplingOptions",
    "SavedPrefix",
    "SoftPrompt",
    "SoftpromptError",
    "TrainConfig",
    "compress_prompt",
    "evaluate",
    "explain",
    "export_peft",
    "fit_alignment",
    "generate",
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
    "predict",
    "run_demo",
    "run_study",
    "save_prefix",
    "save_prompt",
    "shared_vocabulary",
    "similarity_matrices",
    "tiny_family",
    "train",
    "transfer_matrix",
    "transfer_prompt",
    "write_explain_report",
    "write_matrix",
    "write_report",
]
