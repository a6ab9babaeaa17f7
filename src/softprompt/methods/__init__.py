"""Steering methods, registered by name like PEFT's tuners: each module defines its config
section, trainable module and artifact (softprompt.methods.base); one line here registers it.
"""

from __future__ import annotations

import difflib
import os

from softprompt.errors import ConfigError
from softprompt.methods.artifact import header_method
from softprompt.methods.base import Artifact, Method
from softprompt.methods.cartridge import CartridgeMethod
from softprompt.methods.p_tuning import PTuningMethod
from softprompt.methods.prefix import PrefixMethod
from softprompt.methods.prompt import PromptMethod
from softprompt.methods.residual import ResidualMethod

METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Make a method available to configs (`method: NAME`) and to `load_artifact`."""
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method called `name`, or a ConfigError listing the known ones."""
    if name not in METHODS:
        close = difflib.get_close_matches(str(name), list(METHODS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown method {name!r}{hint}; use one of {', '.join(METHODS)}")
    return METHODS[name]


def load_artifact(path: str | os.PathLike) -> Artifact:
    """A soft prompt, a prefix, or any registered method's artifact: whatever the file's
    header names."""
    return get_method(header_method(path)).load(path)


register_method(PromptMethod())
register_method(PrefixMethod())
register_method(PTuningMethod())
register_method(ResidualMethod())
register_method(CartridgeMethod())
