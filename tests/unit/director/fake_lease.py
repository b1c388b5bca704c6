"""An in-memory Lease API that behaves like the API server where the election depends on it:
every write bumps resourceVersion, and a write carrying a stale one is rejected (409)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import replace

from lvs_operator.director.election import LeaseConflict, LeaseRecord

ANNOTATIONS_LIMIT = 256 * 1024  # the API server's TotalAnnotationSizeLimitB


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

    def monotonic(self) -> float:
        return self.t

    def now(self) -> dt.datetime:
        return self.base + dt.timedelta(seconds=self.t)

    def advance(self, seconds: float) -> None:
        self.t += seconds


class FakeLeaseStore:
    """The server side: one Lease, shared by several FakeLeaseApi clients."""

    def __init__(self) -> None:
        self.record: LeaseRecord | None = None
        self.version = 0
        self.writes: list[LeaseRecord] = []
        self.watchers: list[asyncio.Queue[LeaseRecord | None]] = []

    def _store(self, record: LeaseRecord) -> LeaseRecord:
        size = sum(len(k.encode()) + len(v.encode()) for k, v in record.annotations.items())
        if size > ANNOTATIONS_LIMIT:  # what the API server answers (422)
            raise ValueError(
                f"metadata.annotations: Too long: must have at most {ANNOTATIONS_LIMIT} bytes"
            )
        self.version += 1
        self.record = replace(record, resource_version=str(self.version))
        self.writes.append(self.record)
        for queue in self.watchers:
            queue.put_nowait(self.record)
        return self.record


class FakeLeaseApi:
    """One client (one director) of the store; ``down`` simulates an unreachable API."""

    def __init__(self, store: FakeLeaseStore) -> None:
        self.store = store
        self.down = False
        # a slow API: each update lands this long after it is sent, on ``clock`` (a
        # FakeClock advanced by the test)
        self.write_delay = 0.0
        self.clock: FakeClock | None = None

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("API server unreachable")

    async def get(self) -> LeaseRecord | None:
        self._check()
        return self.store.record

    async def create(self, record: LeaseRecord) -> LeaseRecord:
        self._check()
        if self.store.record is not None:
            raise LeaseConflict("leases.coordination.k8s.io already exists")
        return self.store._store(record)

    async def update(self, record: LeaseRecord) -> LeaseRecord:
        self._check()
        if self.write_delay and self.clock is not None:
            lands = self.clock.monotonic() + self.write_delay
            while self.clock.monotonic() < lands:
                await asyncio.sleep(0)
            self._check()
        current = self.store.record
        if current is None:
            raise LeaseConflict("not found")
        if record.resource_version != current.resource_version:
            raise LeaseConflict(
                f"the object has been modified (rv {record.resource_version} != "
                f"{current.resource_version})"
            )
        return self.store._store(record)

    async def changes(self) -> AsyncIterator[LeaseRecord | None]:
        queue: asyncio.Queue[LeaseRecord | None] = asyncio.Queue()
        self.store.watchers.append(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self.store.watchers.remove(queue)
