"""The one decoder that `generate`, `generate --input` and `softprompt serve` share.

Shaped like vLLM v1's split: `options.py` (what a request asks for), `sampler.py` (how one row
picks its next token, seeded per row), `text.py` (what text a row has produced: cut UTF-8 and
stop strings), `engine.py` (the loop: rows join, step one token at a time together, and leave)
and `rows.py` (the rows' keys and values). `generate` is a batch of rows that all join at step
0; the server is the same engine with rows joining and leaving while it runs.
"""
