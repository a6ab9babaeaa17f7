"""softprompt: train, use, explain and compress soft prompts for frozen language models.

The public Python API (everything the CLI does):

    from softprompt import load_config, train, evaluate, predict, generate, load_backbone
"""

from softprompt.backbones import Backbone, load_backbone
from softprompt.config import TrainConfig, load_config
from softprompt.demo import run_demo
from softprompt.errors import SoftpromptError
from softprompt.evaluate import evaluate, predict
from softprompt.generate import SamplingOptions, generate
from softprompt.prompts import SoftPrompt, load_prompt, save_prompt
from softprompt.train import train

__version__ = "0.1.0"
__all__ = [
    "Backbone",
    "SamplingOptions",
    "SoftPrompt",
    "SoftpromptError",
    "TrainConfig",
    "evaluate",
    "generate",
    "load_backbone",
    "load_config",
    "load_prompt",
    "predict",
    "run_demo",
    "save_prompt",
    "train",
]
