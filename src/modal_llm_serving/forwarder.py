"""A minimal forwarder that exposes only the routes clients need in front of an engine.

`@modal.web_server` makes every path of its port public. vLLM's `--api-key` guards only the /v1
routes: the rest answer anyone. Measured on vLLM 0.32 (tests/test_recipes.py): `POST /invocations`
runs a chat completion without the key, `POST /scale_elastic_ep` reaches the engine without it,
and with `VLLM_SERVER_DEV_MODE=1` (sleep mode) /sleep, /wake_up and /collective_rpc are open too.
So the vLLM recipes run the engine on loopback and put this forwarder on the public port: it
answers only the (method, path) pairs it is given and 404s everything else without contacting
the engine. Responses stream through chunk by chunk, so server-sent events are not buffered.

The recipes must import with only `modal` installed, so the ones that need it carry a verbatim
copy of the block between the `BEGIN/END forwarder` markers (standard library at import; aiohttp,
which ships with vLLM and with `modal`, is imported when the forwarder starts). A test fails when
a copy drifts; `mls dev sync-recipes` rewrites them.
"""

from __future__ import annotations

__all__ = ["forwarder_app", "start_forwarder"]

# BEGIN forwarder (generated copy in recipes that need it; edit here, then `mls dev sync-recipes`)
import asyncio
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

# Headers about one connection, not the message; never passed through.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer",
                         "upgrade", "proxy-authorization", "proxy-authenticate", "host",
                         "content-length"})


def forwarder_app(upstream: str, *, routes: Iterable[tuple[str, str]]) -> "web.Application":  # noqa: UP037, RUF100
    """An aiohttp app passing `routes` ((method, path) pairs) to `upstream`; 404 for the rest."""
    from aiohttp import ClientError, ClientSession, ClientTimeout, web

    allowed = frozenset(routes)
    session_key = web.AppKey("session", ClientSession)

    async def open_session(app: web.Application) -> None:
        # No total timeout: a long generation streams for as long as it takes.
        app[session_key] = ClientSession(upstream, auto_decompress=False,
                                         timeout=ClientTimeout(total=None, sock_connect=10))

    async def close_session(app: web.Application) -> None:
        await app[session_key].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        # Exact match on the decoded, unnormalized path: "/v1/../sleep" or "//sleep" match nothing.
        if (request.method, request.path) not in allowed:
            return web.json_response({"error": {"message": "not found", "code": 404}}, status=404)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        target = request.path + (f"?{request.query_string}" if request.query_string else "")
        body = await request.read()
        response: web.StreamResponse | None = None
        try:
            async with request.app[session_key].request(request.method, target, headers=headers,
                                                        data=body) as answer:
                response = web.StreamResponse(status=answer.status, headers={
                    k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP})
                await response.prepare(request)
                async for chunk in answer.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except ClientError as exc:
            if response is not None:  # mid-stream: cutting the connection is all that is left
                raise
            return web.json_response(  # the engine is down or restarting
                {"error": {"message": f"engine unavailable: {type(exc).__name__}", "code": 502}},
                status=502)

    app = web.Application(client_max_size=64 * 2**20)
    app.on_startup.append(open_session)
    app.on_cleanup.append(close_session)
    app.router.add_route("*", "/{path:.*}", forward)
    return app


def start_forwarder(*, upstream: str, routes: Iterable[tuple[str, str]], port: int,
                    host: str = "0.0.0.0") -> threading.Thread:
    """Serve the forwarder from a daemon thread with its own event loop; return once it listens."""
    from aiohttp import web

    app = forwarder_app(upstream, routes=routes)
    listening = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        loop = asyncio.new_event_loop()
        runner = web.AppRunner(app, access_log=None)
        try:
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, host, port).start())
        except Exception as exc:  # reported by the caller, which is waiting for this thread
            failure.append(exc)
            loop.run_until_complete(runner.cleanup())
            loop.close()
            listening.set()
            return
        listening.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="forwarder", daemon=True)
    thread.start()
    if not listening.wait(30) or failure:
        raise RuntimeError(f"the forwarder could not listen on {host}:{port}") from (
            failure[0] if failure else None)
    return thread
# END forwarder
