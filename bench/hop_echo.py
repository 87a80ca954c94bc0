"""The bare libp2p hop, for ``bench/serve_overhead.py --floor``: what one offer and its answer
cost on py-libp2p with nothing of p2pserve's serving path around them.

Two processes on 127.0.0.1 with the product's transport (``transports.libp2p``: TCP, Noise,
yamux) and its framing (:class:`~p2pserve.net.framed.FramedStream`, wire messages decoded
and checked). The client sends an offer of a routed request's real size (an
:class:`~p2pserve.wire.InferRequest` for the benchmark's body, signature bytes included but
not checked); the server answers with ``Accept``, one ``Chunk`` of 16 tokens and ``Done``
with a receipt, in one write: the fewest frames an answer can take. No signing, verifying,
HTTP, JSON, ledger or policy: those are timed apart (:func:`crypto_us`). So one exchange is
a lower bound on what the gateway path adds to the local path: it has to cross this hop.

``python bench/hop_echo.py`` runs the server and prints its multiaddr; the client side is
:func:`open_hop`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from p2pserve.clock import SYSTEM_CLOCK  # noqa: E402
from p2pserve.crypto import _VERIFIED, Signer, sha256  # noqa: E402
from p2pserve.net.framed import FramedStream  # noqa: E402
from p2pserve.transport import Stream  # noqa: E402
from p2pserve.wire.infer import Accept, Chunk, Done, InferRequest, Receipt  # noqa: E402
from transports.libp2p import open_libp2p_transport  # noqa: E402

PROTOCOL = "/p2pserve-bench/hop/1.0.0"
BODY = (b'{"model":"fake-model","messages":[{"role":"user","content":"Tell me about the sea."}],'
        b'"max_tokens":16,"stream":true}')
TEXT = "tok " * 16
T = TypeVar("T")


def _offer(signer: Signer, executor: str) -> InferRequest:
    return InferRequest(request_id=os.urandom(16), network_id="p2pserve-bench", requester=signer.peer_id,
                        executor=executor, model="fake-model", kind="chat", body=BODY,
                        created_ms=SYSTEM_CLOCK.wall_ms(), continuation="", max_price_per_1k=1000,
                        signature=b"").signed(signer)


def _receipt(signer: Signer, offer: InferRequest) -> Receipt:
    return Receipt(request_id=offer.request_id, network_id=offer.network_id, requester=offer.requester,
                   executor=signer.peer_id, model=offer.model, request_hash=offer.request_hash(),
                   response_hash=sha256(TEXT.encode()), prompt_tokens=12, completion_tokens=16, price=16,
                   partial=False, timestamp_ms=SYSTEM_CLOCK.wall_ms(), signature=b"").signed(signer)


def crypto_us(n: int = 1000) -> dict[str, float]:
    """Microseconds per Ed25519 signing and verifying of a real offer and receipt (pynacl,
    with the codec's encoding; each verified signature is a new one, as a node's are: the
    product remembers signatures it verified, which would time a set lookup)."""
    a, b = Signer(sha256(b"bench-a")), Signer(sha256(b"bench-b"))

    def timed(fn: Callable[[int], T]) -> tuple[float, list[T]]:
        t0 = time.perf_counter()
        out = [fn(i) for i in range(n)]
        return (time.perf_counter() - t0) * 1e6 / n, out

    sign_offer, offers = timed(lambda i: _offer(a, b.peer_id))
    sign_receipt, receipts = timed(lambda i: _receipt(b, offers[i]))
    _VERIFIED.clear()  # a node remembers its own signatures as verified: these come from a peer
    verify_offer, _ = timed(lambda i: offers[i].verify())
    verify_receipt, _ = timed(lambda i: receipts[i].verify())
    return {"sign offer": sign_offer, "verify offer": verify_offer, "sign receipt": sign_receipt,
            "verify receipt": verify_receipt}


async def _serve() -> None:
    signer = Signer(os.urandom(32))
    async with open_libp2p_transport(signer, ["/ip4/127.0.0.1/tcp/0"]) as transport:

        async def handler(stream: Stream) -> None:
            fs = FramedStream(stream)
            try:
                while True:
                    offer = await fs.recv_or_eof(InferRequest)
                    if offer is None:
                        return
                    # a fixed receipt: signing is timed apart
                    await fs.send_many([Accept(offer.request_id), Chunk(0, TEXT), Done("length", receipt)])
            finally:
                await fs.aclose()

        receipt = _receipt(signer, _offer(signer, signer.peer_id))
        transport.set_handler(PROTOCOL, handler)
        print(transport.listen_addrs()[0], flush=True)  # /ip4/127.0.0.1/tcp/PORT/p2p/ID
        await trio.sleep_forever()


@asynccontextmanager
async def open_hop(addr: str, streams: int) -> AsyncIterator[Callable[[], Awaitable[float]]]:
    """A client of the server at ``addr`` with ``streams`` open session streams; yields an
    ``exchange()`` that sends one offer and reads its answer (seconds it took)."""
    signer = Signer(os.urandom(32))
    async with open_libp2p_transport(signer, ["/ip4/127.0.0.1/tcp/0"]) as transport:
        peer = await transport.connect(addr)
        free = [FramedStream(await transport.open_stream(peer, PROTOCOL)) for _ in range(streams)]
        offer = _offer(signer, peer)  # one signed offer, sent again and again: signing is timed apart

        async def exchange() -> float:
            fs = free.pop()
            try:
                t0 = time.perf_counter()
                await fs.send(offer)
                await fs.recv(Accept)
                await fs.recv(Chunk)
                await fs.recv(Done)
                return time.perf_counter() - t0
            finally:
                free.append(fs)

        try:
            yield exchange
        finally:
            for fs in free:
                await fs.aclose()


if __name__ == "__main__":
    trio.run(_serve)
