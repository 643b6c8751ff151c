"""Prometheus metrics, one registry per app so several apps can live in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from server.timing import Timing

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Requests by endpoint and status, batching, queue depth, model and search latency."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "moco_requests", "HTTP requests", ["endpoint", "method", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "moco_request_seconds",
            "request latency",
            ["endpoint"],
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.batch_size = Histogram(
            "moco_batch_size", "images per model forward", registry=r, buckets=BATCH_BUCKETS
        )
        self.forwards = Counter("moco_model_forwards", "batched model forwards", registry=r)
        self.queue_depth = Gauge("moco_queue_depth", "embed jobs waiting", registry=r)
        self.model_seconds = Histogram(
            "moco_model_seconds", "model forward latency", registry=r, buckets=LATENCY_BUCKETS
        )
        self.search_seconds = Histogram(
            "moco_search_seconds",
            "index search latency",
            ["mode"],
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.stage_seconds = {
            stage: Histogram(
                f"moco_{stage}_seconds",
                f"per embedding request: {what} (x-{stage}-time)",
                registry=r,
                buckets=LATENCY_BUCKETS,
            )
            for stage, what in (
                ("queue", "waiting for a batch slot"),
                ("preprocess", "decode + preprocess of its batch"),
                ("inference", "model forward of its batch"),
            )
        }
        self.index_size = Gauge("moco_index_size", "live items in the index", registry=r)
        self.rejected = Counter("moco_rejected", "embed jobs refused (queue full)", registry=r)

    def observe_timing(self, timing: Timing) -> None:
        """The split sent in a response's x-*-time headers (search is in moco_search_seconds)."""
        self.stage_seconds["queue"].observe(timing.queue)
        self.stage_seconds["preprocess"].observe(timing.preprocess)
        self.stage_seconds["inference"].observe(timing.inference)
