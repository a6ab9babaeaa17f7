"""What a server reports at GET /metrics (Prometheus text format): requests by adapter and
status, queue length, running rows, decoding batch sizes, tokens generated and tokens/s, and
request latency. One registry per server, so several servers in one process stay apart."""

from __future__ import annotations

import collections
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

WINDOW_SECONDS = 10.0


class ServerMetrics:
    """The server's Prometheus metrics."""

    def __init__(self, pending, running) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "softprompt_requests",
            "Requests answered, by endpoint, adapter and HTTP status.",
            ["endpoint", "adapter", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "softprompt_request_latency_seconds",
            "Time from a request's arrival to its last byte, by endpoint.",
            ["endpoint"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.batch = Histogram(
            "softprompt_batch_size",
            "Rows in each decoding step.",
            buckets=(1, 2, 4, 8, 12, 16, 24, 32, 64),
            registry=self.registry,
        )
        self.tokens = Counter(
            "softprompt_generated_tokens", "Tokens generated.", registry=self.registry
        )
        Gauge(
            "softprompt_queue_length", "Requests waiting for a row.", registry=self.registry
        ).set_function(pending)
        Gauge("softprompt_running_rows", "Rows decoding now.", registry=self.registry).set_function(
            running
        )
        Gauge(
            "softprompt_tokens_per_second",
            f"Tokens generated per second over the last {WINDOW_SECONDS:.0f} s.",
            registry=self.registry,
        ).set_function(self.tokens_per_second)
        self._recent: collections.deque = collections.deque()
        self._lock = threading.Lock()

    def step(self, rows: int, tokens: int) -> None:
        """Record one decoding step (called from the engine thread)."""
        self.batch.observe(rows)
        self.tokens.inc(tokens)
        now = time.monotonic()
        with self._lock:
            self._recent.append((now, tokens))
            while self._recent and self._recent[0][0] < now - WINDOW_SECONDS:
                self._recent.popleft()

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            total = sum(n for t, n in self._recent if t >= now - WINDOW_SECONDS)
        return total / WINDOW_SECONDS

    def text(self) -> bytes:
        return generate_latest(self.registry)
