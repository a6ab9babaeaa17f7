"""What steers a forward pass (a soft prompt, a prefix or nothing) and the forward passes
with it (the CPU kernels they run on are in softprompt.kernels)."""
