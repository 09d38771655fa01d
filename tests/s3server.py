"""A real S3 endpoint for tests: moto's standalone server as a subprocess on a loopback port.

Tests talk to it over HTTP exactly as to a cloud bucket (GDAL's ``/vsis3/`` and boto3 alike);
nothing is mocked inside the process under test.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: One access-log line of the server: ``"GET /bucket/key HTTP/1.1" 206 -``.
REQUEST = re.compile(r'"[A-Z]+ \S+ HTTP/[\d.]+" \d{3}')


@dataclass(frozen=True)
class S3Server:
    """A running moto server and the environment that points AWS clients at it."""

    endpoint: str
    env: dict[str, str]

    def client(self) -> Any:
        """A boto3 client of this server (for test set-up and checks)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name=self.env["AWS_DEFAULT_REGION"],
        )

    def put(self, local: str | Path, url: str) -> str:
        """Upload a local file to ``s3://bucket/key`` and return the URL."""
        bucket, _, key = url.removeprefix("s3://").partition("/")
        self.client().upload_file(str(local), bucket, key)
        return url

    def get(self, url: str) -> bytes:
        """An object's bytes."""
        bucket, _, key = url.removeprefix("s3://").partition("/")
        return bytes(self.client().get_object(Bucket=bucket, Key=key)["Body"].read())

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Keys under a prefix."""
        listing = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return sorted(str(item["Key"]) for item in listing.get("Contents", []))

    def requests(self) -> int:
        """Requests the server has answered so far (moto's request log)."""
        return len(self.log_lines())

    def log_lines(self) -> list[str]:
        """The server's access log lines (one per request answered)."""
        text = Path(self.env["P2P_TEST_S3_LOG"]).read_text()
        return [line for line in text.splitlines() if REQUEST.search(line)]


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def run_server(log: Path) -> Iterator[S3Server]:
    """Start ``moto_server`` on a free loopback port and stop it afterwards."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start: {log.read_text()}") from None
                time.sleep(0.2)
        env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
            "P2P_TEST_S3_LOG": str(log),
            # nothing from this machine's ~/.aws or an instance metadata service
            "AWS_SHARED_CREDENTIALS_FILE": str(log.with_name("no-credentials")),
            "AWS_CONFIG_FILE": str(log.with_name("no-config")),
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        yield S3Server(endpoint, env)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def clean_env() -> dict[str, str]:
    """The current environment without any AWS variable (so only the test's settings count)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
