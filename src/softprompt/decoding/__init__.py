"""The one decoder that `generate`, `generate --input` and `softprompt serve` share.

Shaped like vLLM v1's split: `options.py` (what a request asks for), `sampler.py` (how one row
picks its next token, seeded per row), `text.py` (what text a row has produced: cut UTF-8 and
stop strings), `engine.py` (the loop: schedule -> execute -> update), `scheduler.py` (the
one decider of each step and the one list of running rows), `executor.py`, `update.py`,
`events.py` (typed events), `request.py` (`Job`), `blocks.py` (keys and values in blocks, a
prefix held once) and `rows.py` (one step's attention over the blocks). `generate` is a batch
of rows that all join at step 0; the server is the same engine with rows joining and leaving
while it runs.
"""
