"""The one mock server: OpenAI-compatible, with a known truth, for calibration and faults ONLY.

It is never a stand-in for an engine: it exists to measure the benchmark client against timings
that are known exactly (TTFT, per-token delay, chunking) and to inject faults on purpose, from
the tests and from the calibration benchmarks alike. Run it in its own process (`MockProcess`
does) so it does not share the client's event loop or core. `--processes N` serves one port
from N processes (SO_REUSEPORT: the kernel spreads connections over them), so the mock keeps up
with thousands of streams where one event loop could not.

Truth: a request's first token event is written `ttft_ms` after its body is read, then one event
every `itl_ms * chunk` (each carrying `chunk` tokens), on an absolute schedule (no drift).

Capacity, `--knee N`: N slots, as an engine with `--max-num-seqs N` has. A request that finds
them all taken waits its turn (first come, first served) and its schedule starts when it gets
one, so past N streams, or past N / S requests/s (S, the service time, is `ttft_ms + (tokens -
1) * itl_ms` with `--chunk 1`), TTFT grows with the queue. With `--processes P` each process has
its own N. Without it, every stream is served at once.

A busy mock writes late; it says how late, so its lateness is never blamed on the client: the
usage event's `server_timing` carries its stamps (perf_counter_ns, CLOCK_MONOTONIC, the clock the
client stamps with) and `first_late_ns` / `max_late_ns`, how far behind the schedule its first
and its latest event were written.

Faults, `--fault KIND=N` (every Nth request, counted from 1): 503, 429, reset (connection closed
after half the tokens), malformed (a non-JSON event mid-stream), stall (pauses `--stall-s`
mid-stream), hang (reads the request, never answers), nodone (no `data: [DONE]`), split (events
written in 1-7 byte pieces with `: keep-alive` comments between). `--cold-s S`: 503 for S seconds
after start and after POST /mock/scale-to-zero (a scaled-to-zero endpoint). `--proxy-auth
ID:SECRET`: 401 without Modal's proxy-auth headers (`Modal-Key: ID` and `Modal-Secret: SECRET`,
or `Authorization: Bearer ID.SECRET`), as a Modal Endpoint or Server answers. Scripted: answers a
test writes byte for byte (`MockProcess.script`, scripted.py), the hostile server of the tests:
on any route, head included if it likes, trickled a piece at a time or never ending.

GET /metrics answers Prometheus text in vLLM's names: the streams being written
(vllm:num_requests_running) and an exact prefix cache (a prompt's leading 16-token blocks seen
before are hits, reported per request as usage.prompt_tokens_details.cached_tokens and summed in
vllm:prefix_cache_queries/hits), so the engine view of the bench has a truth to meet.

The mock's own failures are recorded and shown by GET /mock/stats (`errors`); tests assert there
are none, so a bug of the mock never passes for a fate of the client. GET /mock/requests shows the
latest completion requests as read (path, headers, body, when, on which connection since when),
so a test checks what the client sent, not what it says it sent.

Modules: state (what one process knows), protocol (one connection: routes, faults), ticker (the
fault-free streams' schedule: the hot path), scripted (scripted answers), serve (command line,
sockets, processes), process (`MockProcess`: the mock in its own process, and its control).
"""

from __future__ import annotations

from .process import MockProcess
from .scripted import Script

__all__ = ["MockProcess", "Script"]
