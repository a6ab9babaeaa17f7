"""What steers a forward pass (a soft prompt, a prefix or nothing) and the forward passes
with it, including the CPU fast paths."""
