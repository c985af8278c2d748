"""`just setup-volume-upload` with the real AWS CLI against an S3-compatible server on loopback (moto)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BUCKET = "volume-test01"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def s3():
    pytest.importorskip("moto")
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    import boto3

    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
    client.create_bucket(Bucket=BUCKET)
    yield client, f"http://127.0.0.1:{port}"
    server.stop()


def run_just(recipe: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TRYON_", "RUNPOD_", "AWS_"))}
    base["PATH"] = f"{BIN}:{base.get('PATH', '/usr/bin:/bin')}"
    return subprocess.run([str(BIN / "just"), recipe], cwd=ROOT, env={**base, **env}, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.skipif(shutil.which("aws", path=str(BIN)) is None and shutil.which("aws") is None,
                    reason="needs the AWS CLI (pip install awscli; in the test extra)")
@pytest.mark.slow
def test_upload_syncs_models_app_and_assets_with_matching_sizes(s3, volume_copy):
    client, endpoint = s3
    (volume_copy / "models" / ".staging").mkdir()
    (volume_copy / "models" / ".staging" / "leftover.partial").write_bytes(b"x" * 10)
    done = run_just("setup-volume-upload", TRYON_VOLUME=str(volume_copy), RUNPOD_VOLUME_ID=BUCKET,
                    RUNPOD_DATACENTER="EU-RO-1", RUNPOD_S3_ENDPOINT=endpoint, AWS_ACCESS_KEY_ID="test",
                    AWS_SECRET_ACCESS_KEY="test")
    assert done.returncode == 0, done.stderr + done.stdout
    listed = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        listed.update({obj["Key"]: obj["Size"] for obj in page.get("Contents", [])})
    expected = {}
    for local_root, prefix in ((volume_copy / "models", "models"), (ROOT / "app", "app"), (ROOT / "assets", "assets")):
        for path in local_root.rglob("*"):
            rel = path.relative_to(local_root).as_posix()
            skipped = "__pycache__" in rel or rel.endswith(".pyc") or rel.startswith(".staging")
            if path.is_file() and not skipped:
                expected[f"{prefix}/{rel}"] = path.stat().st_size
    assert listed == expected
    assert "models/zhengchong/CatVTON/mix-48k-1024/attention/model.safetensors" in listed


def test_missing_variable_stops_the_recipe_with_its_name(volume_copy):
    done = run_just("setup-volume-upload", TRYON_VOLUME=str(volume_copy), RUNPOD_DATACENTER="EU-RO-1")
    assert done.returncode != 0
    assert "RUNPOD_VOLUME_ID" in done.stderr and "set RUNPOD_VOLUME_ID" in done.stderr
    image = run_just("build-volume")
    assert image.returncode != 0 and "IMAGE" in image.stderr
