"""The server's metrics in Prometheus' text format (``GET /metrics``), for dashboards, alerts and load balancers.

Two kinds. Per answered turn - the API's requests and the browser demo's turns, labelled by ``model`` and ``source``
- counters of turns (by finish reason) and of prompt, cached-prompt and completion tokens, and histograms of the
time to the first token and of the whole answer (:meth:`ServerMetrics.answered`). And the server's state read at
each scrape: requests generating and waiting for a slot, requests refused (429: busy, 503: waited too long), each
model's batch (rows decoding, turns queued for a row, decode steps), and the caches conversations keep between
turns (positions, conversations, hits, evictions). Each app has its own registry, so several apps in one process
(tests) do not mix; each server process exposes its own, and Prometheus sums a fleet (docs/serving.md).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mmgpt.chat import Reply
from mmgpt.serve.conversations import IdleConversations
from mmgpt.serve.limits import Admission
from mmgpt.serve.models import ServedModels

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Seconds: a first token from ~10 ms (a GPU, a short prompt) to a minute (a long queue); answers up to ten minutes.
FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ANSWER_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)


class ServerMetrics:
    """One app's metrics: updated by :meth:`answered`, the rest read from ``admission``, the models' schedulers and
    ``conversations`` when scraped (:meth:`exposition`)."""

    def __init__(self, models: ServedModels, admission: Admission, conversations: IdleConversations) -> None:
        self.registry = CollectorRegistry()
        labels = ["model", "source"]
        self._turns = Counter(
            "mmgpt_turns", "Answers finished, by finish reason", [*labels, "finish_reason"], registry=self.registry
        )
        self._prompt = Counter("mmgpt_prompt_tokens", "Prompt tokens of the answers", labels, registry=self.registry)
        self._cached = Counter(
            "mmgpt_cached_prompt_tokens", "Prompt tokens taken from a cache", labels, registry=self.registry
        )
        self._completion = Counter("mmgpt_completion_tokens", "Tokens generated", labels, registry=self.registry)
        self._first_token = Histogram(
            "mmgpt_time_to_first_token_seconds",
            "From the turn's arrival to its first token",
            labels,
            buckets=FIRST_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self._answer = Histogram(
            "mmgpt_answer_seconds",
            "From the turn's arrival to its answer's end",
            labels,
            buckets=ANSWER_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_ServerState(models, admission, conversations))

    def answered(
        self, model: str, source: str, reply: Reply, first_token: float | None, seconds: float, *, failed: bool = False
    ) -> None:
        """A turn of ``model`` from ``source`` ("api" or "web") ended with ``reply`` (``failed``: the model raised;
        counted as finish reason "error"); its first piece of answer came ``first_token`` seconds after the turn
        arrived (None: none came) - queueing, images and prefill included - its end after ``seconds``."""
        self._turns.labels(model, source, "error" if failed else reply.finish_reason).inc()
        self._prompt.labels(model, source).inc(reply.prompt_tokens)
        self._cached.labels(model, source).inc(reply.reused_tokens)
        self._completion.labels(model, source).inc(reply.completion_tokens)
        if first_token is not None:
            self._first_token.labels(model, source).observe(first_token)
        self._answer.labels(model, source).observe(seconds)

    def exposition(self) -> bytes:
        """Every metric in Prometheus' text format (served with :data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


class _ServerState(Collector):
    """What the server is doing now, read at each scrape."""

    def __init__(self, models: ServedModels, admission: Admission, conversations: IdleConversations) -> None:
        self.models, self.admission, self.conversations = models, admission, conversations

    def collect(self) -> Iterator[Metric]:
        admission, conversations = self.admission, self.conversations
        yield GaugeMetricFamily("mmgpt_requests_running", "API requests generating", value=admission.active)
        yield GaugeMetricFamily("mmgpt_requests_waiting", "API requests waiting for a slot", value=admission.waiting)
        refused = CounterMetricFamily("mmgpt_requests_refused", "API requests refused", labels=["code"])
        for code in ("server_busy", "queue_timeout"):  # both always there, so a rate over them starts at 0
            refused.add_metric([code], admission.refused[code])
        yield refused
        rows = GaugeMetricFamily("mmgpt_batch_rows", "Answers decoding in the model's batch", labels=["model"])
        queued = GaugeMetricFamily("mmgpt_batch_queued_turns", "Turns waiting for a row", labels=["model"])
        steps = CounterMetricFamily("mmgpt_decode_steps", "Decode steps of the model's batch", labels=["model"])
        for chat_model in self.models.chat_models:
            if (scheduler := chat_model.scheduler) is not None:
                rows.add_metric([chat_model.name], scheduler.rows)
                queued.add_metric([chat_model.name], scheduler.queued())
                steps.add_metric([chat_model.name], scheduler.steps)
        yield from (rows, queued, steps)
        yield GaugeMetricFamily(
            "mmgpt_idle_cache_bytes", "Memory conversations keep between turns", value=conversations.bytes
        )
        yield GaugeMetricFamily(
            "mmgpt_idle_conversations", "Conversations waiting for their next turn", value=len(conversations)
        )
        yield CounterMetricFamily(
            "mmgpt_idle_cache_hits", "Turns that took their conversation's kept session", value=conversations.hits
        )
        yield CounterMetricFamily(
            "mmgpt_idle_cache_evictions", "Kept caches dropped to stay under the bound", value=conversations.evicted
        )
