"""Cross-model work on top of softprompt.alignment, one concept per module:

- transfer: moving a soft prompt to another model (`softprompt transfer` / `softprompt align`);
- matrix: the transfer matrix, every prompt on every model with baselines.
"""
