"""The serving path stays light: settings, weights and the engine import without torch."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_engine_and_config_import_without_torch():
    code = ("import sys; import app.config, app.engine, app.weights, app.imaging, app.cli; "
            "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules); "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_engine_status_works_without_torch():
    code = ("import sys; from app.config import Settings; from app.engine import Engine; "
            "print(Engine(Settings.from_env({}, volume='v')).status().state, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["unloaded", "False"]


def test_a_metrics_scrape_imports_no_torch():
    code = ("import sys; from app.config import Settings; from app.engine import Engine; "
            "from app.metrics import Metrics; "
            "queue = type('Queue', (), {'queue_state': lambda self: {'waiting': 0, 'running': False, 'max': 1}})(); "
            "body, _ = Metrics(queue, Engine(Settings.from_env({}, volume='v'))).exposition(None); "
            "print(b'tryon_engine_state{state=\"unloaded\"} 1.0' in body, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]
