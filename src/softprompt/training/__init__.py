"""The training loop and its pieces: schedule, state, run directory, console, processes,
trackers."""
