"""The frozen model facade: a model with its tokenizer and the pieces of it the prompt code
uses (embeddings, heads, the fast paths); the model kinds (causal, masked) and dtypes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from softprompt.errors import ModelError
from softprompt.kernels.attention import NAME as SEGMENT_ATTENTION
from softprompt.kernels.attention import Segments
from softprompt.kernels.last_layer import last_mlp_at
from softprompt.kernels.logprobs import vocab_logprobs

ModelKind = Literal["causal", "masked"]


KIND_CHOICES = ("auto", "causal", "masked")


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


MASKED_MODEL_TYPES = {
    "bert",
    "roberta",
    "distilbert",
    "albert",
    "electra",
    "deberta",
    "deberta-v2",
    "xlm-roberta",
    "camembert",
    "mpnet",
    "modernbert",
}


@dataclass
class Backbone:
    """A frozen language model with its tokenizer; the prompt code only talks to this."""

    name: str
    model: nn.Module
    tokenizer: object
    kind: ModelKind

    @property
    def hidden_size(self) -> int:
        return int(self.input_embeddings.weight.shape[1])

    @property
    def input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    @property
    def device(self) -> torch.device:
        return self.input_embeddings.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.input_embeddings.weight.dtype

    @property
    def segment_attention(self) -> bool:
        """Whether the model runs softprompt.kernels.attention's segment attention."""
        return getattr(self.model.config, "_attn_implementation", None) == SEGMENT_ATTENTION

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "") or self.name)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of token ids, as the model feeds them (Gemma's module scales them)."""
        return self.input_embeddings(input_ids)

    def embedding_table(self) -> torch.Tensor:
        """The input-embedding matrix [vocab, d] in the space a prompt lives in: float32 on the
        CPU whatever the model's device and dtype, with the module's `embed_scale` applied where
        it has one (Gemma), so its rows are what `embed` feeds the model."""
        table = self.input_embeddings.weight.detach().float().cpu()
        scale = getattr(self.input_embeddings, "embed_scale", None)
        return table * float(scale) if scale is not None else table

    def body(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        past_key_values=None,
        position_ids: torch.Tensor | None = None,
        segments: Segments | None = None,
        read: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Last hidden states of the transformer body (no LM head), after a cache if given.

        `segments`: the mask's blocks, for a model running segment attention. `read`: the only
        flat positions (row * width + column) the caller reads; the others' last MLP is skipped
        and their states are not final (softprompt.kernels.last_layer)."""
        extra = {"segments": segments} if segments is not None and self.segment_attention else {}
        with last_mlp_at(self.model, read):
            out = self.model.base_model(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                past_key_values=past_key_values,
                position_ids=position_ids,
                use_cache=past_key_values is not None,
                **extra,
            )
        return out.last_hidden_state

    def head_logits(
        self, hidden: torch.Tensor, token_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """LM-head logits (float32) for hidden states, optionally only for some vocabulary rows.

        Restricting to a few rows skips most of the head's cost (the vocabulary is large).
        """
        head = _head_module(self.model)
        if token_ids is not None and isinstance(head, nn.Linear):
            logits = hidden @ head.weight[token_ids].T
            if head.bias is not None:
                logits = logits + head.bias[token_ids]
        else:
            logits = head(hidden)
            if token_ids is not None:
                logits = logits[..., token_ids]
        logits = logits.float()
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def vocab_logprobs(self, hidden: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary log-probabilities (float32) of `token_ids` [..., C] at hidden
        states [..., d]; on CPUs in one pass over the head (softprompt.kernels.logprobs)."""
        head = _head_module(self.model)
        capped = getattr(self.model.config, "final_logit_softcapping", None)
        if (
            isinstance(head, nn.Linear)
            and hidden.device.type == "cpu"
            and not capped
            and not head.weight.requires_grad
        ):
            return vocab_logprobs(hidden, head.weight, head.bias, token_ids)
        return torch.log_softmax(self.head_logits(hidden), dim=-1).gather(-1, token_ids)


def _head_module(model: nn.Module) -> nn.Module:
    """The LM head: the one top-level child that is not the transformer body."""
    cached = getattr(model, "_softprompt_head", None)
    if cached is not None:
        return cached
    body = model.base_model
    others = [child for child in model.children() if child is not body]
    if len(others) != 1:
        raise ModelError(f"cannot find the LM head of {type(model).__name__}")
    object.__setattr__(model, "_softprompt_head", others[0])
    return others[0]


def detect_kind(config: object) -> ModelKind:
    """Masked or causal LM, from the config's architectures, else its model type."""
    for arch in getattr(config, "architectures", None) or []:
        if arch.endswith("ForMaskedLM"):
            return "masked"
        if arch.endswith("ForCausalLM") or arch.endswith("LMHeadModel"):
            return "causal"
    return "masked" if getattr(config, "model_type", "") in MASKED_MODEL_TYPES else "causal"


def auto_class(kind: ModelKind):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    return AutoModelForCausalLM if kind == "causal" else AutoModelForMaskedLM
