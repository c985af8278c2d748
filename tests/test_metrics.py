"""GET /metrics through the real server: the numbers move as try-ons go through, and only numbers show."""

from __future__ import annotations

import base64
import sys
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from test_server import FAST

from app.errors import GenerationCancelled
from app.tryons.metrics import gpu_memory
from app.tryons.service import TryOnOptions
from app.web.server import create_app, health_only_app

BODY = {"person": "inputs/person.png", "garment": "inputs/garment.png", "mask": "inputs/mask.png", **FAST}
ALICE = {"Authorization": "Basic " + base64.b64encode(b"alice:wonder").decode()}


@pytest.fixture
def volume(volume_copy, images):
    inputs = volume_copy / "inputs"
    inputs.mkdir()
    for role, image in images.items():
        image.save(inputs / f"{role}.png")
    return volume_copy


class Scrape:
    """One scrape, parsed by prometheus_client's own parser: ``scrape["tryons_total", {"outcome": "done"}]``."""

    def __init__(self, response):
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain")
        self.text = response.text
        self.families = {family.name: family for family in text_string_to_metric_families(response.text)}
        self.samples = {(sample.name, frozenset(sample.labels.items())): sample.value
                        for family in self.families.values() for sample in family.samples}

    def __getitem__(self, key) -> float:
        name, labels = key if isinstance(key, tuple) else (key, {})
        return self.samples[name, frozenset(labels.items())]

    def has(self, name: str) -> bool:
        return any(sample_name == name for sample_name, _ in self.samples)


def outcome(scrape: Scrape, name: str) -> float:
    return scrape["tryons_total", {"outcome": name}]


def test_the_numbers_move_as_try_ons_go_through(volume, make_settings, images):
    app = create_app(make_settings(volume, queue_max=1), ui=False)
    service = app.state.service
    with TestClient(app) as client:
        before = Scrape(client.get("/metrics"))
        assert "set-cookie" not in client.get("/metrics").headers  # a scraper is no visitor with a gallery
        assert before["tryon_engine_state", {"state": "unloaded"}] == 1
        assert before["tryon_engine_state", {"state": "ready"}] == 0
        assert not before.has("tryon_engine_load_seconds") and before["tryon_engine_loads_total"] == 0
        assert {name: outcome(before, name) for name in ("done", "refused", "stopped", "failed", "flagged")} == \
            dict.fromkeys(("done", "refused", "stopped", "failed", "flagged"), 0)
        assert before["tryon_queue_depth", {"state": "waiting"}] == 0
        assert before["tryon_queue_depth", {"state": "running"}] == 0
        assert before["tryon_queue_limit"] == 1
        assert before.families["tryon_queue_wait_seconds"].type == "histogram"
        assert before["process_start_time_seconds"] > 0

        assert client.post("/v1/tryon", json={**BODY, "seed": 1}).status_code == 200
        done = Scrape(client.get("/metrics"))
        assert outcome(done, "done") == 1
        for histogram in ("tryon_queue_wait_seconds", "tryon_generation_seconds", "tryon_duration_seconds"):
            assert done[f"{histogram}_count"] == 1, histogram
            assert done[f"{histogram}_bucket", {"le": "+Inf"}] == 1
        assert done["tryon_duration_seconds_sum"] >= done["tryon_generation_seconds_sum"] > 0
        assert done["tryon_engine_state", {"state": "ready"}] == 1
        assert done["tryon_engine_state", {"state": "unloaded"}] == 0
        assert done["tryon_engine_load_seconds"] > 0 and done["tryon_engine_loads_total"] == 1
        assert done["tryon_build_info", {"device": "cpu", "dtype": "fp32", "tiny_models": "false",
                                         "version": __import__("app").__version__}] == 1

        # Two REST requests in progress fill TRYON_QUEUE_MAX=1 even for a caller with none (a newcomer gets in
        # up to twice the limit).
        with service.admitted("addr:203.0.113.1"), service.admitted("addr:203.0.113.2"):
            assert Scrape(client.get("/metrics"))["tryon_rest_requests_in_progress"] == 2
            busy = client.post("/v1/tryon", json=BODY)
        assert busy.status_code == 429, busy.text
        refused = Scrape(client.get("/metrics"))
        assert outcome(refused, "refused") == 1 and refused["tryon_refusals_total", {"reason": "busy"}] == 1
        assert refused["tryon_rest_requests_in_progress"] == 0
        assert outcome(refused, "done") == 1 and refused["tryon_queue_wait_seconds_count"] == 1  # nothing ran

        def stop(step: int, total: int) -> None:
            raise GenerationCancelled(f"stopped at step {step} of {total}")

        with pytest.raises(GenerationCancelled):
            service.run(images["person"], images["garment"], images["mask"], TryOnOptions(**FAST), progress=stop)
        stopped = Scrape(client.get("/metrics"))
        assert outcome(stopped, "stopped") == 1 and outcome(stopped, "done") == 1
        assert stopped["tryon_queue_wait_seconds_count"] == 2  # it waited, then was stopped
        assert stopped["tryon_duration_seconds_count"] == 1  # results only

        def disk_full(*args, **kwargs):
            raise OSError(28, "No space left on device")

        service.store.save = disk_full
        assert client.post("/v1/tryon", json=BODY).status_code == 500
        failed = Scrape(client.get("/metrics"))
        assert outcome(failed, "failed") == 1 and outcome(failed, "done") == 1
        assert failed["tryon_generation_seconds_count"] == 1  # the histograms count results only


def test_metrics_need_a_login_where_logins_are_configured_and_show_no_one(volume, make_settings):
    settings = make_settings(volume, auth="alice:wonder", api_keys="ci:ck-456")
    app = create_app(settings, ui=False)
    with TestClient(app, follow_redirects=False) as client:
        refused = client.get("/metrics")
        assert refused.status_code == 401 and "set-cookie" not in refused.headers
        assert "tryon" not in refused.text
        assert client.post("/v1/tryon", json=BODY, headers=ALICE).status_code == 200
        for headers in (ALICE, {"X-API-Key": "ck-456"}):
            scrape = Scrape(client.get("/metrics", headers=headers))
            assert outcome(scrape, "done") == 1
        for secret in ("alice", "wonder", "ck-456", str(volume), "outputs/", "inputs/"):
            assert secret not in scrape.text, secret
        assert {name for family in scrape.families.values() for sample in family.samples
                for name in sample.labels} <= {"outcome", "reason", "state", "le", "device", "dtype", "tiny_models",
                                                "version", "implementation", "major", "minor", "patchlevel"}

        # The health port (PORT_HEALTH) serves /ping and the same numbers without a login: an internal port.
        with TestClient(health_only_app(settings, app.state.engine, app.state.service.metrics)) as health:
            assert outcome(Scrape(health.get("/metrics")), "done") == 1
            assert health.get("/ping").status_code == 200
            assert health.get("/v1/status").status_code == 404


def test_openmetrics_when_the_scraper_asks_for_it(volume, make_settings):
    with TestClient(create_app(make_settings(volume), ui=False)) as client:
        response = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/openmetrics-text")
        assert response.text.rstrip().endswith("# EOF")


def test_gpu_memory_per_device_only_once_the_model_has_started_cuda(monkeypatch):
    started = {"on": False}
    cuda = SimpleNamespace(is_available=lambda: True, is_initialized=lambda: started["on"], device_count=lambda: 2,
                           memory_allocated=lambda i: 1e9 * (i + 1), memory_reserved=lambda i: 2e9 * (i + 1),
                           get_device_properties=lambda i: SimpleNamespace(total_memory=141e9))
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert list(gpu_memory()) == []  # no torch imported: none imported for a scrape
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))
    assert list(gpu_memory()) == []  # CUDA not started: a scrape never starts it
    started["on"] = True
    families = {family.name: family for family in gpu_memory()}
    assert {(sample.labels["device"], sample.value) for sample in families["tryon_gpu_memory_allocated_bytes"].samples
            } == {("0", 1e9), ("1", 2e9)}
    assert [sample.value for sample in families["tryon_gpu_memory_reserved_bytes"].samples] == [2e9, 4e9]
    assert [sample.value for sample in families["tryon_gpu_memory_total_bytes"].samples] == [141e9, 141e9]
