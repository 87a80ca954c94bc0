"""A deterministic fake OpenAI-compatible LLM backend, with a time model and fault injection.

It ships with the product: most tests, the simulator and the benchmarks run against it.
Three modules, from pure to I/O:

* :mod:`.plan`: what a request is answered with (:func:`plan_request` → :class:`Plan`,
  byte-identical for the same request) and the ``/metrics`` text (:func:`render_metrics`);
* :mod:`.server`: :class:`FakeBackend`, one server's slots, gauges, time model and fault
  schedule; ``handle()`` answers one HTTP request on trio's clock;
* :mod:`.adapters`: ``httpx.MockTransport`` (:meth:`FakeBackend.mock_transport`), a
  Starlette app (:func:`create_app`), hypercorn on a socket (:func:`serve_fake_backend`) and
  ``python -m p2pserve.backends.fake`` (:func:`main`).
"""

from p2pserve.backends.fake.adapters import FakeServer, create_app, main, serve_fake_backend
from p2pserve.backends.fake.plan import (
    DIALECTS,
    WORDS,
    Dialect,
    FakeRequestError,
    Plan,
    Snapshot,
    plan_request,
    render_metrics,
    response_body,
    stream_chunks,
)
from p2pserve.backends.fake.server import FAULTS, FakeBackend, FakeConfig, Fault, FullReply, StreamReply

__all__ = [
    "DIALECTS",
    "FAULTS",
    "WORDS",
    "Dialect",
    "FakeBackend",
    "FakeConfig",
    "FakeRequestError",
    "FakeServer",
    "Fault",
    "FullReply",
    "Plan",
    "Snapshot",
    "StreamReply",
    "create_app",
    "main",
    "plan_request",
    "render_metrics",
    "response_body",
    "serve_fake_backend",
    "stream_chunks",
]
