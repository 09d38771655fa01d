"""A lock across machines for a stage folder in a bucket: a lease object made by conditional put.

Machines that share nothing but a bucket cannot share a file lock. The lock is one object,
``{stage}/.{key}.lock``, created with ``If-None-Match: *``: the store accepts exactly one of
any number of concurrent creators and answers the others 412 Precondition Failed (S3 since
2024, MinIO, Ceph and moto do the same). The holder renews its lease with ``If-Match: <its
ETag>`` a few times per lease, and releases it with a delete under the same condition, so it
never removes a lock someone else took.

A holder that dies (killed, machine lost) stops renewing. Its lock is stale once the lease
has run out: the object's ``Last-Modified`` plus the lease it recorded, compared with the
store's own clock (the ``Date`` of the answer), so the machines' clocks never matter. A
waiter replaces a stale lock with ``If-Match: <the stale ETag>``: of several waiters exactly
one wins, and a holder that comes back finds its ETag gone and knows it lost the lock.

A flag the renewer sets is no proof at the moment of a commit: a holder paused past its lease
(swapped out, stopped, cut off) may resume right before it writes. So a commit is fenced
(`BucketLock.fence`): the holder refuses when its lease is older than ``lease_s`` by its own
monotonic clock (renewals that failed count as not made), then renews with ``If-Match`` once
more, which the store answers 412 when anyone else took the lock over. The new ETag is the
fencing token the stage records in its manifest, and the manifest itself is created with
``If-None-Match: *``, so not even a holder that stalls between the fence and the write can
replace another run's commit.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from email.utils import parsedate_to_datetime
from types import TracebackType

from p2p.core import storage
from p2p.core.errors import OutputError, StageError

log = logging.getLogger(__name__)

#: Seconds a lease lasts without renewal (the holder renews every third of it): how long a
#: crashed run blocks its stage. ``P2P_LOCK_LEASE_S`` sets another; the lock records its own.
LEASE_S = 60.0
LEASE_VAR = "P2P_LOCK_LEASE_S"
#: Seconds between two tries of a waiter.
POLL_S = 0.5


class LeaseLost(StageError):
    """The lease ran out while the holder still worked (another run may have taken over)."""


class BucketLock:
    """A context manager holding the lease object at `url` (see the module docstring).

    Args:
        url: ``s3://bucket/key`` of the lock object.
        lease_s: Seconds the lease lasts without renewal (default: ``P2P_LOCK_LEASE_S``, else
            `LEASE_S`).
    """

    def __init__(self, url: str, lease_s: float | None = None) -> None:
        self.url = url
        self.lease_s = float(os.environ.get(LEASE_VAR, LEASE_S)) if lease_s is None else lease_s
        self.bucket, self.key = storage.split_url(url)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._etag: str | None = None
        # monotonic time at which the last accepted PUT of the lease was sent: the lease is
        # ours until then + lease_s at the latest, whatever happened since
        self._confirmed = 0.0
        self._failure = ""  # why the last renewal failed ("" after a good one)
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._mutex = threading.Lock()  # one conditional PUT at a time (renewer, fence)
        self._renewer: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "lease_s": self.lease_s}).encode()

    def _put(self, **condition: str) -> str | None:
        """PUT the lease under `condition`; its ETag, or None when the condition failed."""
        from botocore.exceptions import ClientError

        sent = time.monotonic()
        try:
            answer = storage.client().put_object(
                Bucket=self.bucket, Key=self.key, Body=self._body(), **condition
            )
        except ClientError as exc:
            if storage.http_status(exc) in (409, 412):  # 409: a concurrent conditional write
                return None
            raise OutputError(self.url, storage.problem(self.url, exc)) from None
        except Exception as exc:  # the store cannot be reached
            raise OutputError(self.url, storage.problem(self.url, exc)) from None
        self._confirmed = sent
        return str(answer["ETag"])

    def _stale_etag(self) -> str | None:
        """The ETag of the current lock when its lease has run out; None while it is live
        (or when it vanished: the next create will tell)."""
        from botocore.exceptions import ClientError

        try:
            answer = storage.client().get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as exc:
            if storage.http_status(exc) == 404:
                return None
            raise OutputError(self.url, storage.problem(self.url, exc)) from None
        lease = float(json.loads(answer["Body"].read()).get("lease_s", LEASE_S))
        now = parsedate_to_datetime(answer["ResponseMetadata"]["HTTPHeaders"]["date"])
        age = (now - answer["LastModified"]).total_seconds()
        # Last-Modified and Date have whole seconds: one second of margin
        return str(answer["ETag"]) if age > lease + 1 else None

    def acquire(self) -> None:
        """Wait until this process holds the lease."""
        waited = False
        while not self.try_acquire():
            if not waited:
                log.info("%s: another run holds this stage; waiting", self.url)
                waited = True
            time.sleep(POLL_S)

    def try_acquire(self) -> bool:
        """Take the lease if it is free (or its holder's ran out) and say whether it was;
        never waits (`p2p workspace prune` skips a folder a live run holds)."""
        self._etag = self._put(IfNoneMatch="*")
        if self._etag is None:
            stale = self._stale_etag()
            if stale is not None:
                log.warning("%s: taking over a lock whose lease ran out", self.url)
                self._etag = self._put(IfMatch=stale)
        if self._etag is None:
            return False
        self._start_renewing()
        return True

    def _start_renewing(self) -> None:
        self._lost.clear()
        self._failure = ""
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew, daemon=True, name="lease")
        self._renewer.start()

    def age(self) -> float:
        """Seconds since the last renewal the store accepted, by this process's clock."""
        return time.monotonic() - self._confirmed

    def _renew_once(self) -> None:
        """One conditional renewal: sets `lost` when the ETag is no longer ours, or when the
        renewal failed and the lease has run out by this holder's clock (never swallowed)."""
        try:
            etag = self._put(IfMatch=str(self._etag))
        except OutputError as exc:
            self._failure = exc.problem
            log.warning("%s: renewing the lease failed (%s)", self.url, exc.problem)
            if self.age() > self.lease_s:
                self._lost.set()
            return
        if etag is None:
            self._failure = "another run took the lock over"
            self._lost.set()
            return
        self._etag, self._failure = etag, ""

    def _renew(self) -> None:
        # a failed renewal is retried at a shorter period while the lease may still hold
        while not self._stop.wait(self.lease_s / (6 if self._failure else 3)):
            with self._mutex:
                if self._stop.is_set() or self.lost:
                    return
                self._renew_once()

    @property
    def lost(self) -> bool:
        """Whether the lease ran out under this holder (its work must not be committed)."""
        return self._lost.is_set()

    def release(self) -> None:
        """Stop renewing and delete the lock object if it is still this holder's."""
        from botocore.exceptions import ClientError

        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if self._etag is None or self.lost:
            return
        try:
            storage.client().delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self._etag)
        except ClientError as exc:
            log.warning("%s: releasing the lock failed (%s)", self.url, exc)
        self._etag = None

    def fence(self) -> str:
        """Prove that this holder still holds the lease, right before it commits work.

        Refuses when the lease is older than ``lease_s`` by this process's monotonic clock
        (the holder was paused or cut off: another run may have taken over), else renews it
        with ``If-Match`` on its ETag, which the store refuses when anyone else took over.

        Returns:
            The fencing token: the lease's new ETag (without quotes), to record in a manifest.

        Raises:
            LeaseLost: the lease ran out, was taken over or cannot be confirmed.
        """
        with self._mutex:
            if not self.lost and self.age() > self.lease_s:
                self._failure = self._failure or f"not renewed for {self.age():.0f} s"
                self._lost.set()
            if not self.lost:
                self._renew_once()
            if self.lost or self._failure or self.age() > self.lease_s:
                self._lost.set()
                raise LeaseLost(
                    self.url,
                    f"the stage lock's lease ({self.lease_s:g} s) ran out before this run "
                    f"committed ({self._failure or 'paused'}); another run may have taken "
                    "the stage over. Run again",
                )
            return str(self._etag).strip('"')

    def __enter__(self) -> BucketLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
