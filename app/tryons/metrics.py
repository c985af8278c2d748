"""Numbers for an operator's Prometheus at ``GET /metrics``: queue, waits and run times, try-ons by outcome, the
engine, GPU memory.

One registry per app, never the library's global one (tests build many apps in one process). The queue and
the engine are read when scraped; the service reports each try-on through the small :class:`TryOnEvents`
interface, which does nothing until the server attaches :class:`Metrics`. Labels carry states, outcomes and
reasons from fixed lists only: never an owner, an address, a path or a result id.
"""

from __future__ import annotations

import functools
import sys

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import choose_encoder

from app import __version__
from app.errors import BusyError, GenerationCancelled
from app.model.engine import FAILED, LOADING, READY, UNLOADED

OUTCOMES = ("done", "refused", "stopped", "failed", "flagged")
REFUSALS = ("busy", "owner_limit", "quota")  # anything else is counted as "other"
ENGINE_STATES = (UNLOADED, LOADING, READY, FAILED)
disable_created_metrics()  # no *_created series beside each counter and histogram: noise on a dashboard
# 0.1 s (a tiny model, an empty queue) to 10 min (a full-size try-on on the CPU, a long queue).
SECONDS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class TryOnEvents:
    """What the service reports (app.tryons.service); this base records nothing, so a service without a server,
    as in the CLI or tests, needs no registry."""

    def refused(self, reason: str) -> None:
        """A request turned away before any work (429): ``reason`` busy, owner_limit or quota."""

    def queue_waited(self, seconds: float) -> None:
        """A try-on got the GPU after ``seconds`` in the queue."""

    def tryon_finished(self, outcome: str, generated: float | None = None, total: float | None = None) -> None:
        """A try-on that joined the queue ended: ``outcome`` done, stopped, failed or flagged; ``generated``:
        the pipeline's seconds, ``total``: from the request's arrival to the result."""

    def tryon_flagged(self, generated: float | None = None, total: float | None = None) -> None:
        """A result the safety checker flagged (not saved as an image): counted as outcome "flagged"."""
        self.tryon_finished("flagged", generated, total)


def counted(generate):
    """For ``TryOnService._generate``: a try-on that raises is counted here, stopped (GenerationCancelled:
    Stop, a client gone, TRYON_MAX_RUN_S) or failed (any other error); a refusal (BusyError) was counted
    where it was raised, and a try-on that returns reports its own outcome (done or flagged)."""
    @functools.wraps(generate)
    def counting(service, *args, **kwargs):
        try:
            return generate(service, *args, **kwargs)
        except GenerationCancelled:
            service.metrics.tryon_finished("stopped")
            raise
        except BusyError:
            raise
        except Exception:
            service.metrics.tryon_finished("failed")
            raise
    return counting


class Metrics(TryOnEvents):
    """The app's registry: the service's events as counters and histograms, and a collector that reads the
    queue (``service.queue_state()``) and the engine (``engine.status()``) at each scrape."""

    def __init__(self, service, engine):
        self.registry = CollectorRegistry()
        self.tryons = Counter("tryons", "Try-ons by outcome: done, refused (429: busy, owner_limit, quota), "
                              "stopped (Stop, client gone, TRYON_MAX_RUN_S), failed (an error), flagged (safety "
                              "checker).", ["outcome"], registry=self.registry)
        self.refusals = Counter("tryon_refusals", "Requests refused before any work (429), by reason.", ["reason"],
                                registry=self.registry)
        self.queue_wait = Histogram("tryon_queue_wait_seconds", "Time a try-on waited in the queue for the GPU.",
                                    buckets=SECONDS, registry=self.registry)
        self.generation = Histogram("tryon_generation_seconds", "Time the pipeline took for one try-on (a model "
                                    "load before it not included).", buckets=SECONDS, registry=self.registry)
        self.duration = Histogram("tryon_duration_seconds", "Time from a request's arrival to its try-on's result "
                                  "(done or flagged): reading, masks, queue, a model load, GPU, paste-back.",
                                  buckets=SECONDS, registry=self.registry)
        for outcome in OUTCOMES:
            self.tryons.labels(outcome)  # every outcome shows from the start, at 0
        for reason in (*REFUSALS, "other"):
            self.refusals.labels(reason)
        self.registry.register(ServingCollector(service, engine))
        ProcessCollector(registry=self.registry)  # process_start_time_seconds, CPU, memory, open files
        PlatformCollector(registry=self.registry)  # python_info

    def refused(self, reason: str) -> None:
        self.tryons.labels("refused").inc()
        self.refusals.labels(reason if reason in REFUSALS else "other").inc()

    def queue_waited(self, seconds: float) -> None:
        self.queue_wait.observe(max(0.0, seconds))

    def tryon_finished(self, outcome: str, generated: float | None = None, total: float | None = None) -> None:
        self.tryons.labels(outcome if outcome in OUTCOMES else "failed").inc()
        if generated is not None:
            self.generation.observe(generated)
        if total is not None:
            self.duration.observe(total)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The scrape's body and content type: Prometheus' text format, or OpenMetrics when asked for."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


class ServingCollector:
    """The queue, the engine and GPU memory as they are at scrape time."""

    def __init__(self, service, engine):
        self.service, self.engine = service, engine

    def collect(self):
        queue = self.service.queue_state()
        depth = GaugeMetricFamily("tryon_queue_depth", "Try-ons in the queue by state: waiting for the GPU, or "
                                  "running on it.", labels=["state"])
        depth.add_metric(["waiting"], float(queue.get("waiting", 0)))
        depth.add_metric(["running"], float(int(queue.get("running") or 0)))  # a flag today; a count is fine
        yield depth
        yield GaugeMetricFamily("tryon_queue_limit", "Requests that may wait or be in progress (TRYON_QUEUE_MAX).",
                                value=float(queue.get("max", 0)))
        if "owners_waiting" in queue:  # a count (app.tryons.fair_queue), never who
            yield GaugeMetricFamily("tryon_owners_waiting", "Owners (parties: a login, an API key, or an address) "
                                    "with at least one try-on waiting.", value=float(queue["owners_waiting"]))
        yield GaugeMetricFamily("tryon_rest_requests_in_progress", "REST try-on requests admitted and not yet "
                                "answered (reading, masks, queue, GPU, saving).",
                                value=float(queue.get("rest_in_progress", 0)))

        status = self.engine.status()
        state = GaugeMetricFamily("tryon_engine_state", "The model's state: 1 for the current one.",
                                  labels=["state"])
        for name in ENGINE_STATES:
            state.add_metric([name], 1.0 if status.state == name else 0.0)
        yield state
        if "total" in status.load_timings:
            yield GaugeMetricFamily("tryon_engine_load_seconds", "Seconds the last model load took.",
                                    value=status.load_timings["total"])
        yield CounterMetricFamily("tryon_engine_loads", "Successful model loads.", value=status.loads)
        yield CounterMetricFamily("tryon_engine_releases", "Model releases (idle or explicit).",
                                  value=status.releases)
        info = InfoMetricFamily("tryon_build", "The app's version, and the loaded model's device and dtype.")
        info.add_metric([], {"version": __version__, "tiny_models": str(status.tiny_models).lower(),
                             "device": status.device or "", "dtype": status.dtype or ""})
        yield info
        yield from gpu_memory()


def gpu_memory():
    """Per CUDA device: bytes allocated and reserved by torch, and the device's total. Only where the model
    already brought torch in and initialised CUDA: a scrape never imports torch or starts a CUDA context."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return
    families = {
        "allocated": GaugeMetricFamily("tryon_gpu_memory_allocated_bytes", "GPU memory held by tensors.",
                                       labels=["device"]),
        "reserved": GaugeMetricFamily("tryon_gpu_memory_reserved_bytes", "GPU memory reserved by torch's caching "
                                      "allocator.", labels=["device"]),
        "total": GaugeMetricFamily("tryon_gpu_memory_total_bytes", "The GPU's memory.", labels=["device"]),
    }
    for index in range(torch.cuda.device_count()):
        device = [str(index)]
        families["allocated"].add_metric(device, torch.cuda.memory_allocated(index))
        families["reserved"].add_metric(device, torch.cuda.memory_reserved(index))
        families["total"].add_metric(device, torch.cuda.get_device_properties(index).total_memory)
    yield from families.values()

