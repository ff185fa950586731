"""HTTP transports for the benchmark: one streaming POST, chunks stamped as they arrive.

Three implementations exist because the choice was measured, not assumed (docs/PERFORMANCE.md,
"Transport"): `raw` (asyncio protocols, `rawhttp.py`; the default: least client work per request
and per chunk, and stamps taken in `data_received`), aiohttp (what `vllm bench serve` uses) and
httpx (what the rest of the toolkit uses). All map their failures onto the same error kinds, so a
record's fate does not depend on the transport. A response's `chunks()` yields
`(perf_counter_ns stamp, bytes)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator

from modal_llm_serving.bench.http_types import (
    CONNECT_TIMEOUT_S,
    Response,
    Transport,
    TransportError,
)
from modal_llm_serving.bench.rawhttp import RawTransport
from modal_llm_serving.endpoint.client import tls_failure
from modal_llm_serving.errors import UsageError

__all__ = ["TRANSPORTS", "AiohttpTransport", "HttpxTransport", "Response", "Transport",
           "TransportError", "make_transport"]


class _AiohttpResponse:
    def __init__(self, response: object) -> None:
        self._response = response
        self.status: int = response.status  # type: ignore[attr-defined]
        self.headers = {name.lower(): value for name, value in response.headers.items()}  # type: ignore[attr-defined]

    async def chunks(self) -> AsyncIterator[tuple[int, bytes]]:
        async for data in self._response.content.iter_any():  # type: ignore[attr-defined]
            yield time.perf_counter_ns(), data

    async def read_body(self, limit: int) -> bytes:
        data: bytes = await self._response.content.read(limit)  # type: ignore[attr-defined]
        return data


class AiohttpTransport:
    """aiohttp with one connection pool sized to the load (`pool` connections, kept alive)."""

    def __init__(self, *, pool: int, timeout_s: float, stall_timeout_s: float) -> None:
        self._pool = pool
        self._timeouts = (timeout_s, stall_timeout_s, CONNECT_TIMEOUT_S)
        self._session: object | None = None

    async def __aenter__(self) -> AiohttpTransport:
        import aiohttp

        total, stall, connect = self._timeouts
        connector = aiohttp.TCPConnector(limit=self._pool, limit_per_host=self._pool,
                                         ttl_dns_cache=300, ssl=ssl.create_default_context())
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=total, sock_read=stall, sock_connect=connect))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()  # type: ignore[attr-defined]

    @contextlib.asynccontextmanager
    async def post(self, url: str, body: bytes,
                   headers: dict[str, str]) -> AsyncIterator[Response]:
        import aiohttp

        assert self._session is not None, "use the transport as an async context manager"
        try:
            async with self._session.post(url, data=body, headers=headers) as response:  # type: ignore[attr-defined]
                yield _AiohttpResponse(response)
        except TransportError:
            raise
        except TimeoutError as exc:
            raise TransportError("timeout", _timeout_detail(exc, self._timeouts)) from exc
        except aiohttp.ClientConnectorError as exc:
            if (tls := tls_failure(exc)) is not None:
                raise TransportError("tls", tls) from exc
            raise TransportError("connect", str(exc)) from exc
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError,
                aiohttp.ClientOSError, ConnectionError) as exc:
            raise TransportError("reset", f"{type(exc).__name__}: {exc}") from exc
        except aiohttp.InvalidURL as exc:
            raise TransportError("bad_url", str(exc)) from exc
        except aiohttp.ClientError as exc:
            raise TransportError("http_protocol", f"{type(exc).__name__}: {exc}") from exc


def _timeout_detail(exc: BaseException, timeouts: tuple[float, float, float]) -> str:
    total, stall, _connect = timeouts
    text = str(exc) or type(exc).__name__
    return f"{text} (limits: {total:g} s per request, {stall:g} s without bytes)"


class _HttpxResponse:
    def __init__(self, response: object) -> None:
        self._response = response
        self.status: int = response.status_code  # type: ignore[attr-defined]
        self.headers = {name.lower(): value for name, value in response.headers.items()}  # type: ignore[attr-defined]

    async def chunks(self) -> AsyncIterator[tuple[int, bytes]]:
        async for data in self._response.aiter_raw():  # type: ignore[attr-defined]
            yield time.perf_counter_ns(), data

    async def read_body(self, limit: int) -> bytes:
        data: bytes = await self._response.aread()  # type: ignore[attr-defined]
        return data[:limit]


class HttpxTransport:
    """httpx.AsyncClient with the same pool size and timeouts (kept for the measured comparison)."""

    def __init__(self, *, pool: int, timeout_s: float, stall_timeout_s: float) -> None:
        self._pool = pool
        self._timeouts = (timeout_s, stall_timeout_s, CONNECT_TIMEOUT_S)
        self._client: object | None = None

    async def __aenter__(self) -> HttpxTransport:
        import httpx

        total, stall, connect = self._timeouts
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=self._pool, max_keepalive_connections=self._pool),
            timeout=httpx.Timeout(total, read=stall, connect=connect, pool=total))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()  # type: ignore[attr-defined]

    @contextlib.asynccontextmanager
    async def post(self, url: str, body: bytes,
                   headers: dict[str, str]) -> AsyncIterator[Response]:
        import httpx

        assert self._client is not None, "use the transport as an async context manager"
        request = self._client.build_request("POST", url, content=body, headers=headers)  # type: ignore[attr-defined]
        total = self._timeouts[0]
        try:
            async with asyncio.timeout(total):  # httpx's timeouts are per read: this one is all
                response = await self._client.send(request, stream=True)  # type: ignore[attr-defined]
                try:
                    yield _HttpxResponse(response)
                finally:
                    await response.aclose()
        except TransportError:
            raise
        except TimeoutError:
            raise TransportError("timeout", f"no complete answer within {total:g} s (the "
                                            "request timeout)") from None
        except httpx.TimeoutException as exc:
            raise TransportError("timeout", _timeout_detail(exc, self._timeouts)) from exc
        except httpx.ConnectError as exc:
            if (tls := tls_failure(exc)) is not None:
                raise TransportError("tls", tls) from exc
            raise TransportError("connect", str(exc)) from exc
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise TransportError("reset", f"{type(exc).__name__}: {exc}") from exc
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise TransportError("bad_url", str(exc)) from exc
        except httpx.HTTPError as exc:
            raise TransportError("http_protocol", f"{type(exc).__name__}: {exc}") from exc


TRANSPORTS = ("raw", "aiohttp", "httpx")


def make_transport(name: str, *, pool: int, timeout_s: float,
                   stall_timeout_s: float) -> Transport:
    if name == "raw":
        return RawTransport(pool=pool, timeout_s=timeout_s, stall_timeout_s=stall_timeout_s)
    if name == "aiohttp":
        return AiohttpTransport(pool=pool, timeout_s=timeout_s, stall_timeout_s=stall_timeout_s)
    if name == "httpx":
        return HttpxTransport(pool=pool, timeout_s=timeout_s, stall_timeout_s=stall_timeout_s)
    raise UsageError(f"unknown transport {name!r}; choose one of {', '.join(TRANSPORTS)}")
