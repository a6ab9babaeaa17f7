"""Compute kernels the models run on, importing only torch: the CPU attention fast path
(attention), the last layer computed only where the loss reads it (last_layer), and log-
probabilities that read the LM head once (logprobs)."""
