"""HTTP requests to the three-tier page from inside a network namespace (a new connection
each: as a browser's new visit), used by check.py on a host and by the e2e's guest code."""

from __future__ import annotations

import http.client
from dataclasses import asdict, dataclass
from typing import Any

from tests.dataplane.topology import in_netns


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: str

    def asdict(self) -> dict[str, Any]:
        return asdict(self)


def get(
    ns: str,
    address: str,
    port: int,
    path: str = "/",
    host: str = "",
    cookie: str = "",
    timeout: float = 10,
    source: str = "",
) -> Answer:
    """One GET from inside ``ns`` (from address ``source`` if given) on a new connection."""
    conn = http.client.HTTPConnection(
        address, port, timeout=timeout, source_address=(source, 0) if source else None
    )
    with in_netns(ns):
        conn.connect()  # the socket stays in ``ns``
    try:
        headers = {"Host": host or address, **({"Cookie": cookie} if cookie else {})}
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        return Answer(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode())
    finally:
        conn.close()


def session_cookie(answer: Answer, cookie: str) -> str:
    """The PHPSESSID cookie the answer set (or the one sent)."""
    set_cookie = answer.headers.get("set-cookie", "")
    return set_cookie.split(";", 1)[0] if set_cookie else cookie
