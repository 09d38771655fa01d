"""Credentials come from the standard AWS chain when they are used, never copied: a moto
server that checks signatures and session tokens (IAM auth on), temporary credentials from
its STS, and a rotation in the middle of a run (a ``credential_process`` that hands out new
credentials while the old ones lose their rights)."""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import numpy as np
import pytest
import zarr

from p2p.core import files
from p2p.core.config import DaskConfig
from p2p.core.errors import P2PError
from p2p.raster.scene import open_raster
from p2p.raster.vsi import ObjectAccess
from p2p.stages import tile
from tests import bucket_worker
from tests.faultkit import cli, yaml_config
from tests.s3server import S3Server, run_server
from tests.test_tiling import make_pair

ALLOW_S3 = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
)
TRUST = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}],
    }
)


class Iam:
    """A moto server with IAM auth switched on, and the admin calls a test needs."""

    def __init__(self, server: S3Server) -> None:
        self.server = server
        kw = {"endpoint_url": server.endpoint, "region_name": "us-east-1"}
        keys = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        self.iam = boto3.client("iam", **kw, **keys)  # type: ignore[call-overload]
        user = self.iam.create_user(UserName="admin")["User"]["UserName"]
        self.iam.put_user_policy(UserName=user, PolicyName="all", PolicyDocument=ALLOW_S3)
        key = self.iam.create_access_key(UserName=user)["AccessKey"]
        admin = {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": ""}
        admin["aws_secret_access_key"] = key["SecretAccessKey"]
        self.iam = boto3.client("iam", **kw, **admin)  # type: ignore[call-overload]
        self.sts = boto3.client("sts", **kw, **admin)  # type: ignore[call-overload]
        self.s3 = boto3.client("s3", **kw, **admin)  # type: ignore[call-overload]
        self.s3.create_bucket(Bucket="p2p-creds")
        # from here on every request must be signed by known keys (and a token for STS keys)
        url = f"{server.endpoint}/moto-api/reset-auth"
        text = {"Content-Type": "text/plain"}  # (a form body would be parsed away)
        urllib.request.urlopen(urllib.request.Request(url, b"0", text)).close()

    def role_credentials(self, name: str) -> dict[str, str]:
        """Temporary credentials (key, secret, session token) of a new role allowed all."""
        self.iam.create_role(RoleName=name, AssumeRolePolicyDocument=TRUST)
        self.iam.put_role_policy(RoleName=name, PolicyName="all", PolicyDocument=ALLOW_S3)
        arn = f"arn:aws:iam::123456789012:role/{name}"
        got = self.sts.assume_role(RoleArn=arn, RoleSessionName="p2p")["Credentials"]
        return {k: got[k] for k in ("AccessKeyId", "SecretAccessKey", "SessionToken")}

    def revoke(self, name: str) -> None:
        """Take every right away from a role (its credentials are then refused)."""
        self.iam.delete_role_policy(RoleName=name, PolicyName="all")


@pytest.fixture
def iam(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Iam]:
    with run_server(tmp_path / "moto.log") as server:
        for key in [k for k in os.environ if k.startswith("AWS_")]:
            monkeypatch.delenv(key)
        for key, value in server.env.items():
            if key not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                monkeypatch.setenv(key, value)
        yield Iam(server)


def _use(monkeypatch: pytest.MonkeyPatch, creds: dict[str, str], token: bool = True) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", creds["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", creds["SecretAccessKey"])
    if token:
        monkeypatch.setenv("AWS_SESSION_TOKEN", creds["SessionToken"])
    else:
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)


def _upload_pair(iam: Iam, tmp_path: Path, prefix: str = "in") -> tuple[str, str]:
    local = make_pair(tmp_path, h=32, w=32)
    iam.s3.upload_file(local.source[0], "p2p-creds", f"{prefix}/src.tif")
    iam.s3.upload_file(local.target[0], "p2p-creds", f"{prefix}/tgt.tif")  # type: ignore[index]
    return f"s3://p2p-creds/{prefix}/src.tif", f"s3://p2p-creds/{prefix}/tgt.tif"


def test_temporary_credentials_with_a_session_token_run_a_stage_and_leave_no_trace(
    iam: Iam, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    creds = iam.role_credentials("p2p")
    dask = DaskConfig(n_workers=1, threads_per_worker=1)
    # the control: the same keys without their token are refused (other objects: GDAL
    # remembers what it could not open)
    src, tgt = _upload_pair(iam, tmp_path, "control")
    scene = bucket_worker.SceneConfig(source=[src], target=[tgt], nodata=0)
    _use(monkeypatch, creds, token=False)
    with pytest.raises(P2PError, match="s3://p2p-creds/"):
        tile.run("s3://p2p-creds/control-ws", scene, bucket_worker.TILING, dask)
    src, tgt = _upload_pair(iam, tmp_path)
    scene = bucket_worker.SceneConfig(source=[src], target=[tgt], nodata=0)
    _use(monkeypatch, creds)
    with caplog.at_level(logging.DEBUG, logger="p2p"), caplog.at_level(logging.DEBUG, "rasterio"):
        # GDAL reads the scenes, obstore writes the chips, boto3 the manifest and the lock
        record = tile.run("s3://p2p-creds/ws", scene, bucket_worker.TILING, dask)
    assert record.summary and not record.cached
    written = [
        iam.s3.get_object(Bucket="p2p-creds", Key=o["Key"])["Body"].read()
        for o in iam.s3.list_objects_v2(Bucket="p2p-creds", Prefix="ws/")["Contents"]
    ]
    assert any(b'"manifest"' in b or b'"stage"' in b for b in written)
    # the config echo: `p2p plan --json` (a fresh process, its whole output) on this workspace
    config = yaml_config(
        tmp_path / "p2p.yaml",
        {
            "workspace": "s3://p2p-creds/ws",
            "scenes": [{"source": [src], "target": [tgt], "nodata": 0}],
            "tiling": bucket_worker.TILING.model_dump(),
            "model": {"num_downs": 2, "ngf": 4, "ndf": 4},
        },
    )
    plan = cli(["plan", config, "--until", "tile", "--json"])
    assert plan.returncode == 0 and '"status":"cached"' in plan.stdout.replace(" ", ""), plan.stderr
    for secret in (creds["SecretAccessKey"], creds["SessionToken"], creds["AccessKeyId"]):
        assert not any(secret.encode() in blob for blob in written)
        assert secret not in caplog.text
        assert secret not in json.dumps(record.model_dump())
        assert secret not in plan.stdout + plan.stderr


def _credential_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An AWS config whose credentials come from a process printing `current` (rewritten by
    the test to rotate them); botocore asks again whenever they are near expiry."""
    current = tmp_path / "current.json"
    config = tmp_path / "aws-config"
    config.write_text(f"[default]\ncredential_process = cat {current}\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    return current


def _hand_out(current: Path, creds: dict[str, str], seconds: float = 3600) -> None:
    expires = (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()
    current.write_text(json.dumps({"Version": 1, **creds, "Expiration": expires}))


def test_credentials_rotated_during_a_run_are_picked_up_by_gdal_and_obstore(
    iam: Iam, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, _ = _upload_pair(iam, tmp_path)
    current = _credential_process(tmp_path, monkeypatch)
    first = iam.role_credentials("first")
    # due for renewal in 4 s (botocore renews what has less than 10 minutes left)
    _hand_out(current, first, seconds=600 + 4)
    began = time.monotonic()
    # made once per stage and per scene reader, and used for the whole run
    group = zarr.open_group(files.zarr_store("s3://p2p-creds/ws/chips.zarr"), mode="w")
    group.create_array("a", shape=(4,), dtype="uint8")[:] = 1
    access = ObjectAccess(src)
    with access.env():
        open_raster(src, access).close()
    _hand_out(current, iam.role_credentials("second"))
    time.sleep(max(0.0, began + 4.5 - time.monotonic()))
    iam.revoke("first")  # the first credentials are no good any more
    stale = boto3.client(
        "s3",
        endpoint_url=iam.server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=first["AccessKeyId"],
        aws_secret_access_key=first["SecretAccessKey"],
        aws_session_token=first["SessionToken"],
    )
    with pytest.raises(Exception, match=r"AccessDenied|Forbidden|403"):
        stale.head_object(Bucket="p2p-creds", Key="in/src.tif")  # the control: refused now
    group["a"][:] = 2  # the store made with the first credentials signs with the second
    again = zarr.open_array(files.zarr_store("s3://p2p-creds/ws/chips.zarr/a"))
    np.testing.assert_array_equal(again[:], 2)
    with access.env():
        open_raster(src, access).close()
