"""A local S3 for the tests: moto's server on a free port of 127.0.0.1, with one bucket made."""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest


@contextmanager
def moto_s3(bucket: str) -> Iterator[str]:
    """Start moto_server, create `bucket` once it answers, yield its endpoint URL; stop it on exit."""
    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if moto is None:
        pytest.fail("moto_server is missing: it comes with moto[server] in requirements.txt")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1")
    try:
        for _ in range(100):
            try:
                s3.create_bucket(Bucket=bucket)
                break
            except Exception:
                time.sleep(0.1)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)
