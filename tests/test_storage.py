"""Inputs on object storage: rasters read in place from a real (local) S3 server, one-line
errors naming the URL, globs, fingerprints, and complete-object uploads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rasterio.windows import Window

from p2p.core import storage, transfer
from p2p.core.cache import fingerprint_file
from p2p.core.errors import InputError, OutputError
from p2p.raster import SceneReader
from tests.rasters import ramp, write_geotiff


def _scene(tmp_path: Path, name: str = "scene.tif", size: int = 512) -> Path:
    return write_geotiff(
        tmp_path / name, ramp(2, size, size), blocksize=128, compress="deflate", nodata=0
    )


def test_scene_on_s3_reads_the_same_pixels_by_range_requests(s3: Any, tmp_path: Path) -> None:
    local = _scene(tmp_path)
    url = s3.put(local, s3.url("scenes/scene.tif"))
    window = Window(100, 200, 150, 130)
    with SceneReader(local) as a, SceneReader(url) as b:
        assert b.grid == a.grid and b.dtype == a.dtype and b.band_names == a.band_names
        before = len(s3.log_lines())
        data_b, valid_b = b.read(window)
        lines = s3.log_lines()[before:]
        data_a, valid_a = a.read(window)
    np.testing.assert_array_equal(data_b, data_a)
    np.testing.assert_array_equal(valid_b, valid_a)
    gets = [line for line in lines if '"GET /' in line and "/scenes/scene.tif" in line]
    assert gets, "the window's tiles came from the bucket"
    # every GET of the object was a range request (206), never the whole file (200)
    assert all('" 206' in line for line in gets), gets


def test_missing_key_bucket_and_credentials_are_one_line_errors(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3.put(_scene(tmp_path), s3.url("a.tif"))
    missing_key = s3.url("nope.tif")
    with pytest.raises(InputError, match=r"no such key 'nope.tif' in bucket") as err:
        SceneReader(missing_key)
    assert err.value.where == missing_key
    with pytest.raises(InputError, match=r"no such bucket 'no-such-bucket-p2p'"):
        SceneReader("s3://no-such-bucket-p2p/a.tif")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(InputError, match="no AWS credentials found") as err:
        SceneReader(s3.url("a.tif"))
    assert "\n" not in str(err.value)


def test_glob_lists_one_level_and_fingerprint_follows_the_object(s3: Any, tmp_path: Path) -> None:
    local = _scene(tmp_path, size=64)
    for key in ("in/a.tif", "in/b.tif", "in/sub/c.tif", "in/notes.txt"):
        s3.put(local, s3.url(key))
    assert storage.glob(s3.url("in/*.tif")) == [s3.url("in/a.tif"), s3.url("in/b.tif")]
    assert storage.glob(s3.url("in/*/*.tif")) == [s3.url("in/sub/c.tif")]
    before = fingerprint_file(s3.url("in/a.tif"))
    assert before == fingerprint_file(s3.url("in/a.tif"))
    write_geotiff(tmp_path / "other.tif", ramp(2, 64, 64) + 1)
    s3.put(tmp_path / "other.tif", s3.url("in/a.tif"))
    assert fingerprint_file(s3.url("in/a.tif")) != before
    strict = fingerprint_file(s3.url("in/a.tif"), strict=True)
    assert strict == fingerprint_file(tmp_path / "other.tif", strict=True)


def test_upload_if_changed_skips_the_same_bytes(s3: Any, tmp_path: Path) -> None:
    url = s3.url("out/result.tif")
    local = tmp_path / "result.tif"
    local.write_bytes(b"first")
    assert transfer.upload_if_changed(local, url) and s3.get(url) == b"first"
    puts = len([line for line in s3.log_lines() if '"PUT /' in line])
    assert not transfer.upload_if_changed(local, url)
    assert len([line for line in s3.log_lines() if '"PUT /' in line]) == puts
    local.write_bytes(b"second")
    assert transfer.upload_if_changed(local, url) and s3.get(url) == b"second"
    with pytest.raises(OutputError, match="no such bucket 'no-such-bucket-p2p'"):
        transfer.check_writable("s3://no-such-bucket-p2p/x.tif")


def test_access_denied_is_one_line(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import urllib.request

    import boto3

    url = s3.put(_scene(tmp_path, size=64), s3.url("private/a.tif"))
    iam = boto3.client(
        "iam",
        endpoint_url=s3.endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    iam.create_user(UserName=f"nobody-{s3.bucket}")
    key = iam.create_access_key(UserName=f"nobody-{s3.bucket}")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])

    def enforce(count: str) -> None:  # the server checks IAM after `count` more requests
        request = urllib.request.Request(
            f"{s3.endpoint}/moto-api/reset-auth", count.encode(), {"Content-Type": "text/plain"}
        )
        urllib.request.urlopen(request, timeout=10).close()

    enforce("0")
    try:
        with pytest.raises(InputError, match=r"access denied \(403\)") as err:
            SceneReader(url)  # a user without any policy
        assert err.value.where == url and "\n" not in str(err.value)
    finally:
        enforce("inf")
