"""Object storage: ``s3://`` URLs wherever a local path is accepted, in one place.

Rasters on S3 are read in place by GDAL (``/vsis3/``, range requests; never downloaded whole)
with the settings below; everything else (existence checks, fingerprints, glob listings, model
bundles, uploads) goes through boto3. Credentials, region and endpoint come only from the
standard AWS environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``,
``AWS_PROFILE`` and ``~/.aws``, SSO, instance roles, ``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3``,
``AWS_REGION``), resolved by botocore's credential chain for boto3, GDAL and obstore alike, so
all three agree. Credentials are never copied into settings: each reader asks the chain when it
signs (GDAL at each ``rasterio.Env``, obstore through `CredentialProvider`), so temporary
credentials renew themselves in a long run and no key can reach a log, config or manifest.

Outputs reach a bucket as complete objects only: they are built locally (a workspace, a
staging folder) and uploaded whole (a multipart upload becomes visible when it completes), a
manifest-like object last (a bundle's ``model.json``).
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from p2p.core.errors import InputError

SCHEME = "s3://"

#: GDAL settings for reading COGs on object storage; a variable the user sets wins.
GDAL_DEFAULTS = {
    # a scene is one object: never list its "folder" for sidecar files (one request saved per
    # open, thousands on a large prefix)
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    # only probe raster objects, never .aux.xml/.ovr/.msk siblings that do not exist
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF,.vrt,.jp2",
    # adjacent tiles of a window in one ranged GET, several ranges in flight on HTTP/2
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    # headers and recently read tiles stay in memory between windows of one scene
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": str(64 << 20),
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
}


def is_remote(path: str | Path) -> bool:
    """Whether `path` is an object-storage URL (``s3://bucket/key``)."""
    return isinstance(path, str) and path.startswith(SCHEME)


def split_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` → ``("bucket", "some/key")``."""
    bucket, _, key = url[len(SCHEME) :].partition("/")
    return bucket, key


def join(base: str | Path, *parts: str) -> str:
    """Join path parts onto a local folder or a URL prefix."""
    if is_remote(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return str(Path(base, *parts))


def name(path: str | Path) -> str:
    """Last path component of a local path or URL."""
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def gdal_path(path: str | Path) -> str:
    """The name GDAL opens: ``/vsis3/bucket/key`` for ``s3://bucket/key``, else the path."""
    if is_remote(path):
        return "/vsis3/" + str(path)[len(SCHEME) :]
    return str(path)


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def unsigned() -> bool:
    """Whether requests go unsigned (``AWS_NO_SIGN_REQUEST``: a public bucket)."""
    return os.environ.get("AWS_NO_SIGN_REQUEST", "").upper() in ("YES", "TRUE", "1")


def gdal_options(where: str = "s3") -> dict[str, str]:
    """GDAL config options for reading ``/vsis3/`` objects (use with ``rasterio.Env``).

    No credential is among them: they are resolved by botocore's standard chain each time a
    ``rasterio.Env`` is entered (`p2p.raster.vsi`), so temporary ones (STS, instance roles,
    SSO) are renewed in a long run and never copied into settings that could be echoed.

    Args:
        where: The URL to name in an error.

    Raises:
        InputError: no AWS credentials can be found.
    """
    options = {k: v for k, v in GDAL_DEFAULTS.items() if k not in os.environ}
    endpoint = _endpoint()
    if endpoint:
        parts = urlsplit(endpoint)
        options["AWS_S3_ENDPOINT"] = parts.netloc + parts.path.rstrip("/")
        options["AWS_HTTPS"] = "YES" if parts.scheme == "https" else "NO"
        # custom endpoints (MinIO, Ceph, moto, ...) serve buckets as paths, not host names
        options["AWS_VIRTUAL_HOSTING"] = "FALSE"
    session = boto3_session()
    options["AWS_REGION"] = session.region_name or "us-east-1"
    if unsigned():
        options["AWS_NO_SIGN_REQUEST"] = "YES"
    elif session.get_credentials() is None:
        raise InputError(where, NO_CREDENTIALS)
    return options


class CredentialProvider:
    """obstore's credential provider over botocore's standard chain. obstore asks it again
    when the lease it returned runs out: `TTL` at the most, and for temporary credentials
    (STS, SSO, instance roles) no later than botocore itself would renew them, so they are
    renewed in a long run. It holds no credential (it pickles to Dask workers as its class).
    """

    TTL = timedelta(minutes=5)
    #: botocore renews temporary credentials when they have less than this left
    RENEW_BEFORE = timedelta(minutes=10)

    def __call__(self) -> dict[str, Any]:
        """The current credentials, as obstore's ``S3Credential``."""
        credentials = _credentials()
        frozen = credentials.get_frozen_credentials()
        now = datetime.now(UTC)
        expires = now + self.TTL
        expiry = getattr(credentials, "_expiry_time", None)  # only temporary ones have one
        if isinstance(expiry, datetime):
            expires = max(min(expires, expiry - self.RENEW_BEFORE), now + timedelta(seconds=1))
        return {
            "access_key_id": frozen.access_key,
            "secret_access_key": frozen.secret_key,
            "token": frozen.token,
            "expires_at": expires.astimezone(UTC),  # obstore takes UTC only
        }


def _credentials() -> Any:
    """botocore's (refreshing) credentials of the standard chain."""
    credentials = boto3_session().get_credentials()
    if credentials is None:
        raise InputError("s3", NO_CREDENTIALS)
    return credentials


def obstore_options(where: str = "s3") -> dict[str, Any]:
    """Keyword arguments for an ``obstore.store.S3Store`` (zarr's `ObjectStore`): the same
    region and endpoint as boto3 and GDAL get, credentials from `CredentialProvider`.

    Raises:
        InputError: no AWS credentials can be found.
    """
    options = gdal_options(where)
    config: dict[str, Any] = {"region": options["AWS_REGION"]}
    endpoint = _endpoint()
    if endpoint:
        config["endpoint"] = endpoint.rstrip("/")
        config["virtual_hosted_style_request"] = False
    result: dict[str, Any] = {"config": config}
    if options.get("AWS_NO_SIGN_REQUEST") == "YES":
        config["skip_signature"] = True
    else:
        result["credential_provider"] = CredentialProvider()
    result["client_options"] = {"allow_http": bool(endpoint and endpoint.startswith("http://"))}
    return result


NO_CREDENTIALS = (
    "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE "
    "(or AWS_NO_SIGN_REQUEST=YES for a public bucket)"
)


def boto3_session() -> Any:
    """A boto3 session of the standard AWS environment (its credential chain, region)."""
    import boto3

    return boto3.session.Session()


def client() -> Any:
    """A boto3 S3 client configured from the standard AWS environment only (one per distinct
    environment: making a client costs ~50 ms, and clients are thread-safe)."""
    return _client(tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_"))))


@functools.lru_cache(maxsize=4)
def _client(aws_environment: tuple[tuple[str, str], ...]) -> Any:
    from botocore import UNSIGNED
    from botocore.config import Config

    config = Config(
        signature_version=UNSIGNED if unsigned() else None,
        s3={"addressing_style": "path" if _endpoint() else "auto"},
        retries={"max_attempts": 3, "mode": "standard"},
    )
    session = boto3_session()
    return session.client("s3", region_name=session.region_name or "us-east-1", config=config)


def problem(url: str, exc: BaseException) -> str:
    """One line saying what is wrong with `url` after a failed S3 call.

    A bare 404 (a HEAD has no error body) is told apart by asking for the bucket.
    """
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return NO_CREDENTIALS
    if isinstance(exc, EndpointConnectionError):
        return f"cannot reach the object store ({exc})"
    if not isinstance(exc, ClientError):
        return f"object store request failed ({exc})"
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = http_status(exc)
    bucket, key = split_url(url)
    if code in ("NoSuchBucket",):
        return f"no such bucket {bucket!r}"
    if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return f"access denied ({code}); check the credentials and the bucket policy"
    if code in ("404", "NoSuchKey") or status == 404:
        if not _bucket_exists(bucket):
            return f"no such bucket {bucket!r}"
        return f"no such key {key!r} in bucket {bucket!r}"
    return f"object store error {code}: {exc.response.get('Error', {}).get('Message', '')}"


def _bucket_exists(bucket: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        client().head_bucket(Bucket=bucket)
    except ClientError as exc:
        return http_status(exc) != 404
    return True


def http_status(exc: Any) -> int | None:
    """The HTTP status of a botocore ClientError."""
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


def head(url: str) -> dict[str, Any] | None:
    """An object's metadata (size, ETag, ...), or None when the key does not exist.

    Raises:
        InputError: no credentials, no such bucket, access denied, or an unreachable store.
    """
    from botocore.exceptions import ClientError

    bucket, key = split_url(url)
    try:
        return dict(client().head_object(Bucket=bucket, Key=key))
    except ClientError as exc:
        if http_status(exc) == 404:
            if not _bucket_exists(bucket):
                raise InputError(url, f"no such bucket {bucket!r}") from None
            return None
        raise InputError(url, problem(url, exc)) from None
    except Exception as exc:
        raise InputError(url, problem(url, exc)) from None


def require_file(path: str | Path) -> None:
    """Raise a one-line `InputError` unless `path` is an existing file or object."""
    if is_remote(path):
        if head(str(path)) is None:
            bucket, key = split_url(str(path))
            raise InputError(path, f"no such key {key!r} in bucket {bucket!r}")
    elif not Path(path).is_file():
        raise InputError(path, "file not found")


def fingerprint(url: str, strict: bool = False) -> str:
    """An object's fingerprint: URL + size + ETag, or a sha256 of its bytes when `strict`."""
    if strict:
        return f"sha256:{hashlib.sha256(read_bytes(url)).hexdigest()}"
    meta = head(url)
    if meta is None:
        raise InputError(url, "no such key")
    return f"{url}:{meta['ContentLength']}:{str(meta['ETag']).strip(chr(34))}"


def read_bytes(url: str) -> bytes:
    """A whole (small) object, e.g. a bundle's model.json or weights.

    Raises:
        InputError: the object cannot be read (one line naming `url` and why).
    """
    bucket, key = split_url(url)
    try:
        return bytes(client().get_object(Bucket=bucket, Key=key)["Body"].read())
    except Exception as exc:
        raise InputError(url, problem(url, exc)) from None


def glob(pattern: str) -> list[str]:
    """Sorted object URLs matching a glob pattern (``*``, ``?``, ``[...]`` within one level).

    Lists only the prefix before the first wildcard.
    """
    bucket, key = split_url(pattern)
    magic = min((i for i, ch in enumerate(key) if ch in "*?["), default=len(key))
    prefix = key[:magic]
    levels = key.split("/")
    found: list[str] = []
    try:
        pages = client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for item in page.get("Contents", []):
                parts = str(item["Key"]).split("/")
                if len(parts) == len(levels) and all(
                    fnmatch.fnmatchcase(p, q) for p, q in zip(parts, levels, strict=True)
                ):
                    found.append(f"{SCHEME}{bucket}/{item['Key']}")
    except Exception as exc:
        raise InputError(pattern, problem(pattern, exc)) from None
    return sorted(found)
