"""GDAL access to object storage: the settings of `p2p.core.storage` as a ``rasterio.Env``.

rasterio takes AWS credentials only through a session: an `AWSSession` over botocore's
standard chain (the same session boto3 uses), which hands GDAL the chain's current
credentials each time an `Env` is entered, so temporary ones renew themselves and none is
frozen into the options. One `ObjectAccess` is made per scene reader and re-entered around
every read: the options are thread-local in worker threads, so each thread that reads needs
them set.
"""

from __future__ import annotations

from rasterio.env import Env
from rasterio.session import AWSSession

from p2p.core import storage


class ObjectAccess:
    """GDAL settings and credentials for reading ``s3://`` rasters in place.

    Args:
        where: The URL to name when no credentials are found.

    Raises:
        InputError: no AWS credentials can be found.
    """

    def __init__(self, where: str) -> None:
        self.options = storage.gdal_options(where)
        unsigned = self.options.get("AWS_NO_SIGN_REQUEST") == "YES"
        self.session = AWSSession(
            session=None if unsigned else storage.boto3_session(),
            aws_unsigned=unsigned,
            region_name=self.options["AWS_REGION"],
        )

    def env(self) -> Env:
        """A ``rasterio.Env`` to open or read objects in."""
        return Env(session=self.session, **self.options)
