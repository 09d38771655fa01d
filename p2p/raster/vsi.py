"""GDAL access to object storage: the settings of `p2p.core.storage` as a ``rasterio.Env``.

rasterio refuses AWS credentials as plain config options (they must come through a session),
so the credentials botocore resolved travel in an `AWSSession` and the rest as options. One
`ObjectAccess` is made per scene reader and re-entered around every read: the options are
thread-local in worker threads, so each thread that reads needs them set.
"""

from __future__ import annotations

from rasterio.env import Env
from rasterio.session import AWSSession

from p2p.core import storage

_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


class ObjectAccess:
    """GDAL settings and credentials for reading ``s3://`` rasters in place.

    Args:
        where: The URL to name when no credentials are found.

    Raises:
        InputError: no AWS credentials can be found.
    """

    def __init__(self, where: str) -> None:
        options = storage.gdal_options(where)
        self.options = {k: v for k, v in options.items() if k not in _CREDENTIALS}
        unsigned = options.get("AWS_NO_SIGN_REQUEST") == "YES"
        self.session = AWSSession(
            aws_unsigned=unsigned,
            aws_access_key_id=options.get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=options.get("AWS_SECRET_ACCESS_KEY"),
            aws_session_token=options.get("AWS_SESSION_TOKEN"),
            region_name=options.get("AWS_REGION"),
        )

    def env(self) -> Env:
        """A ``rasterio.Env`` to open or read objects in."""
        return Env(session=self.session, **self.options)
