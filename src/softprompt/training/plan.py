"""`softprompt plan`: the peak memory a training run will need per process, before it runs.

The model of memory (bytes, per process; docs/scale.md derives each term):

- weights: every parameter of every frozen model, divided by the processes under
  `train.shard: fsdp`;
- gathered (sharded runs only): the root (embeddings, final norm, head) and one decoder
  layer whole, each `gather_copies` times: FSDP2 all-gathers a group into one buffer and copies
  it out into the whole parameters (2 copies at once, NCCL: by its design, not measured here).
  On gloo CPUs the measured peaks fit one copy plus a fixed `shard_runtime` of about 1 GiB per
  process that appears with the first sharded step (gloo's buffers and the heap it leaves;
  fitted on Qwen2.5-0.5B's four sharded rows, checked on the other models' rows:
  BENCHMARKS.md). The root is the largest group (its vocabulary rows);
- activations: what autograd keeps for the prompt's gradient. The weights are frozen, so a
  linear layer keeps nothing of its input; per token and layer a Llama-style layer keeps its
  two norms' inputs (2d), the rotated queries and the attention output (2 x heads x head_dim),
  the keys and values (2 x kv_heads x head_dim) and its gated MLP's three intermediates (3 x
  intermediate), in the model's dtype. With gradient checkpointing a layer keeps only its
  input (d) and one layer at a time is replayed whole. Plus a backward workspace of two MLP
  intermediates. Tokens: micro-batch x (prompt length + text length) (a prefix adds no
  tokens but its keys and values are read by every layer);
- trainable state: the prompt (or prefix, or its MLP) in float32: value, gradient and two
  AdamW moments (16 bytes per number);
- overhead: what the process holds before any model (the Python runtime and libraries on a
  CPU; a CUDA context on a GPU): given, not modelled.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

GIB = 1024**3
GATHER_COPIES = {"cuda": 2, "cpu": 1}  # a gathered group's copies at once (see above)
SHARD_RUNTIME = {"cuda": 0, "cpu": int(1.07 * 1024**3)}  # bytes a sharded process adds (above)


@dataclass(frozen=True)
class Shape:
    """What the memory model reads from a transformers config (Llama-style layers: Llama,
    Qwen2, Mistral; other families are approximated by the same layer)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qkv_bias: bool = False

    @classmethod
    def of(cls, config) -> Shape:
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(
            layers=config.num_hidden_layers,
            hidden=config.hidden_size,
            intermediate=getattr(config, "intermediate_size", None) or 4 * config.hidden_size,
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            vocab=config.vocab_size,
            tied=bool(getattr(config, "tie_word_embeddings", True)),
            qkv_bias=bool(getattr(config, "attention_bias", config.model_type == "qwen2")),
        )

    @property
    def layer_parameters(self) -> int:
        d, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        bias = q + 2 * kv if self.qkv_bias else 0
        return 2 * d * q + 2 * d * kv + 3 * d * self.intermediate + 2 * d + bias

    @property
    def root_parameters(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    @property
    def parameters(self) -> int:
        return self.layers * self.layer_parameters + self.root_parameters

    def saved_per_token(self, checkpointing: bool) -> int:
        """Numbers autograd keeps per token and layer for the prompt's gradient."""
        if checkpointing:
            return self.hidden
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return 2 * self.hidden + 2 * q + 2 * kv + 3 * self.intermediate


@dataclass(frozen=True)
class Run:
    """A training run's sizes: per process micro-batch, tokens per row, and how it runs."""

    micro_batch: int
    text_length: int
    prompt_length: int
    method: str = "prompt"  # prompt | prefix
    dtype_bytes: int = 4
    world: int = 1
    shard: bool = False
    checkpointing: bool = False
    prefix_mlp_hidden: int | None = None  # a prefix's reparameterisation MLP (None: none)
    gather_copies: int = 2
    shard_runtime: int = 0  # bytes a sharded process holds beyond its terms (SHARD_RUNTIME)


def trainable_numbers(shape: Shape, run: Run) -> int:
    """Numbers the optimizer updates: the prompt, or the prefix (or the MLP that makes it)."""
    if run.method != "prefix":
        return run.prompt_length * shape.hidden
    out = 2 * shape.layers * shape.kv_heads * shape.head_dim
    if run.prefix_mlp_hidden is None:
        return run.prompt_length * out
    hidden = run.prefix_mlp_hidden
    return run.prompt_length * hidden + hidden * hidden + hidden + hidden * out + out


def plan_memory(shape: Shape, run: Run, overhead_bytes: int = 0) -> dict:
    """Predicted peak bytes per process, term by term, and their sum (`peak`)."""
    b = run.dtype_bytes
    world = run.world if run.shard else 1
    tokens_per_row = run.text_length + (run.prompt_length if run.method != "prefix" else 0)
    tokens = run.micro_batch * tokens_per_row
    terms = {"weights": shape.parameters * b // world}
    gathered = (shape.root_parameters + shape.layer_parameters) * run.gather_copies * b
    terms["gathered"] = gathered + run.shard_runtime if run.shard and world > 1 else 0
    kept = shape.layers * shape.saved_per_token(run.checkpointing) * tokens
    replay = shape.saved_per_token(False) * tokens if run.checkpointing else 0
    workspace = 2 * shape.intermediate * tokens
    prefix_cache = 0
    if run.method == "prefix":  # keys and values, expanded to the batch, read by every layer
        prefix_cache = 2 * shape.layers * shape.kv_heads * shape.head_dim * run.prompt_length
        prefix_cache *= run.micro_batch
    terms["activations"] = (kept + replay + workspace + prefix_cache) * b
    terms["trainable"] = 16 * trainable_numbers(shape, run)
    terms["overhead"] = overhead_bytes
    return {**terms, "peak": sum(terms.values())}


def plan_run(config, world: int = 1, device_memory_gb: float | None = None, overhead_gb=0.0):
    """The plan of a validated `TrainConfig` on `world` processes: per model the terms, the
    peak of the largest, and whether it fits `device_memory_gb` (None: not asked)."""
    from transformers import AutoConfig

    from softprompt.models.loading import resolve_device, resolve_spec

    settings = config.train
    share = max(1, settings.batch_size // world)
    kind = "cpu" if resolve_device(settings.device).type == "cpu" else "cuda"
    prompt = config.prompt
    run = Run(
        micro_batch=min(settings.micro_batch, share),
        text_length=config.task.max_length,
        prompt_length=prompt.length,
        method="prefix" if config.method == "prefix" else "prompt",
        dtype_bytes=2 if settings.precision == "bf16" else 4,
        world=world,
        shard=settings.shard == "fsdp",
        checkpointing=settings.gradient_checkpointing,
        prefix_mlp_hidden=_prefix_mlp(prompt),
        gather_copies=GATHER_COPIES[kind],
        shard_runtime=SHARD_RUNTIME[kind],
    )
    models = {}
    for spec in config.models:
        source, extra = resolve_spec(spec, trust_remote_code=config.trust_remote_code)
        shape = Shape.of(AutoConfig.from_pretrained(source, **extra))
        models[spec] = plan_memory(shape, run, int(overhead_gb * GIB))
    # models run one after another: their weights add up, the rest is the largest one's
    weights = sum(m["weights"] for m in models.values())
    rest = max(m["peak"] - m["weights"] for m in models.values())
    peak = weights + rest
    fits = None if device_memory_gb is None else peak <= device_memory_gb * GIB
    return {"run": asdict(run), "models": models, "peak": peak, "fits": fits}


def _prefix_mlp(prompt) -> int | None:
    if getattr(prompt, "reparameterization", "none") != "mlp":
        return None
    return prompt.mlp_hidden
