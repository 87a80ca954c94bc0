"""HTTP routes for the node's ledger: summary, raw blocks for ``p2pserve audit --api``, stake.

* ``GET /p2pserve/ledger``: this node's account summary (JSON);
* ``GET /p2pserve/ledger/blocks``: every stored block as length-prefixed frames
  (``application/octet-stream``): the network params first, then blocks in acceptance
  order, then frozen accounts' off-choice blocks, then equivocation proofs (see :func:`p2pserve.ledger.audit.encode_stream`);
* ``GET /p2pserve/ledger/heads``: ``{"network_id", "fingerprint" (hex), "blocks", "heads":
  {account: [height, hash hex]}, "frozen": [accounts]}``, what ``p2pserve audit --compare``
  compares across nodes to make forks visible (see :class:`p2pserve.ledger.compare.Heads`);
* ``POST /p2pserve/ledger/stake`` and ``/unstake`` with ``{"amount": <credits>}``: write a
  stake/unstake block on this node's chain; 400 with the rule's reason if it is refused.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from p2pserve.api.app import check_bearer
from p2pserve.backends.openai_format import error_object
from p2pserve.errors import InvalidBlock, P2PServeError
from p2pserve.ledger.audit import encode_stream
from p2pserve.ledger.compare import Heads
from p2pserve.ledger.service import LedgerService
from p2pserve.units import MICRO, format_credits

__all__ = ["ledger_routes", "ledger_summary"]

_MAX_BODY = 4096


def _error(message: str, status: int, code: str) -> JSONResponse:
    return JSONResponse(error_object(message, "invalid_request_error", code), status_code=status)


def ledger_routes(ledger: LedgerService, *, api_key: str | None = None, admin_key: str | None = None) -> list[Route]:
    """The ledger's routes: reads need ``api_key`` (if set); stake and unstake need
    ``admin_key`` when it is set, else ``api_key``."""
    write_key = admin_key or api_key

    async def summary(request: Request) -> Response:
        return check_bearer(request, api_key) or JSONResponse(ledger_summary(ledger))

    async def blocks(request: Request) -> Response:
        denied = check_bearer(request, api_key)
        if denied:
            return denied
        store = ledger.store
        raws = [r.raw for r in store.rows()] + store.side_rows() + store.proof_rows()
        return Response(b"".join(encode_stream(store.params, raws)), media_type="application/octet-stream")

    async def heads(request: Request) -> Response:
        return check_bearer(request, api_key) or JSONResponse(Heads.of_state(ledger.store.state).to_json())

    def stake_route(unstake: bool) -> Any:
        async def endpoint(request: Request) -> Response:
            denied = check_bearer(request, write_key)
            if denied:
                return denied
            raw = b""
            async for chunk in request.stream():
                raw += chunk
                if len(raw) > _MAX_BODY:
                    return _error(f"body larger than {_MAX_BODY} bytes", 413, "request_too_large")
            try:
                body = json.loads(raw)
                amount = body["amount"]
                if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount <= 0:
                    raise ValueError
            except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: absurdly nested JSON
                return _error("body must be {\"amount\": <credits, > 0>}", 400, "invalid_amount")
            micro = round(amount * MICRO)
            try:
                h = await (ledger.unstake(micro) if unstake else ledger.stake(micro))
            except InvalidBlock as exc:
                return _error(_refusal(ledger, unstake, micro, exc), 400, exc.reason)
            except P2PServeError as exc:
                return _error(str(exc), 503, "ledger_unavailable")
            return JSONResponse({"block": h.hex(), **ledger_summary(ledger)})

        return endpoint

    return [
        Route("/p2pserve/ledger", summary, methods=["GET"]),
        Route("/p2pserve/ledger/blocks", blocks, methods=["GET"]),
        Route("/p2pserve/ledger/heads", heads, methods=["GET"]),
        Route("/p2pserve/ledger/stake", stake_route(False), methods=["POST"]),
        Route("/p2pserve/ledger/unstake", stake_route(True), methods=["POST"]),
    ]


def _refusal(ledger: LedgerService, unstake: bool, micro: int, exc: InvalidBlock) -> str:
    """The rules' refusal of a stake or unstake, in credits (the rules count micro-credits)."""
    verb, amount = ("unstake" if unstake else "stake"), format_credits(micro)
    free, staked = format_credits(ledger.free()), format_credits(ledger.staked())
    if exc.reason == "insufficient-stake":
        return f"cannot unstake {amount} credits: {staked} credits are staked"
    if exc.reason == "insufficient-funds":
        return f"cannot stake {amount} credits: {free} credits are free"
    if exc.reason == "unbonding":
        return f"cannot stake {amount} credits yet: {free} credits are free, the rest is still unbonding"
    return f"the ledger rules refuse to {verb} {amount} credits: {exc}"


def ledger_summary(ledger: LedgerService) -> dict[str, Any]:
    """The node's own account and ledger counters, as ``/p2pserve/ledger`` and the status show them."""
    acct = ledger.store.state.account(ledger.account)
    return {
        "account": ledger.account,
        "opened": acct is not None,
        "writable": ledger.writable,
        "height": acct.height if acct else None,
        "free": ledger.free() / MICRO,
        "staked": ledger.staked() / MICRO,
        "stake_weight": ledger.stake_of(ledger.account) / MICRO,
        "unbonding": (acct.unbonding_total if acct else 0) / MICRO,
        "frozen": bool(acct and acct.frozen),
        "paid": ledger.paid,
        "queued": ledger.queued(),
        "reserved": ledger.reserved / MICRO,
        "held": ledger.queue.held / MICRO,
        "claimed": ledger.claimed,
        "unpaid": ledger.unpaid,
        "repairs": ledger.repairs,
        "blocks": ledger.store.count(),
        "pending": ledger.store.pending_count(),
        "fingerprint": ledger.fingerprint(),
    }
