"""Ledger blocks and their bodies: the signed records of the block-lattice (tags 30-49).

Every account (a peer ID) has its own hash chain of :class:`Block` s; only that account's key
signs them. A block's identity is its hash, ``digest()``: SHA-256 of the canonical msgpack of
every field but the signature, which is also what the signature covers. ``prev`` is the
hash of the block one height below (32 zero bytes at height 0).

``body`` is the canonical encoding of one body message whose class matches ``kind``
(:data:`BODY_TYPES`); bodies are bytes inside the block so the block layout never changes
when a body gains a field, and so a verifier can hash a block without understanding its
body. Amounts are integer micro-credits (1 credit = 1_000_000).

This module is pure: no I/O, no clock. Values are checked for shape here (``_check``:
sizes, ranges); ledger rules that need state live in :mod:`p2pserve.ledger.rules`.

Tags: 30 Block, 31-36 bodies, 37 EquivocationProof, 38 NetworkParams, 40-44 sync.
"""

from __future__ import annotations

import enum
from typing import Any

import msgpack

from p2pserve.crypto import SIGNATURE_SIZE, Signer, sha256
from p2pserve.errors import LocalProtocolError, MalformedMessage
from p2pserve.units import format_credits
from p2pserve.wire.codec import Message, SignedMessage, decode, encode, message
from p2pserve.wire.duel import DuelOrder, check_outcome
from p2pserve.wire.infer import Receipt

__all__ = [
    "BODY_TYPES",
    "DEFAULT_MAX_CLOCK_SKEW_MS",
    "HASH_SIZE",
    "MAX_BODY",
    "MAX_RECEIPTS_PER_PAY",
    "MIN_UNBONDING_SKEWS",
    "ZERO_HASH",
    "Block",
    "Body",
    "ClaimBody",
    "EquivocationProof",
    "Kind",
    "NetworkParams",
    "OpenBody",
    "PayBody",
    "StakeBody",
    "UnstakeBody",
    "VerdictBody",
    "decode_block",
    "decode_body",
    "make_block",
    "signing_bytes_of",
]

HASH_SIZE = 32
ZERO_HASH = bytes(HASH_SIZE)
MAX_BODY = 60 * 1024
"""Largest encoded body. A whole block must fit one gossip message (``Limits.max_pubsub_message``,
64 KiB): 60 KiB of body leaves room for the block's other fields."""
MAX_RECEIPTS_PER_PAY = 128
"""Most receipts one ``pay`` block carries. A receipt is ~290 bytes with libp2p peer IDs, so
128 of them (~37 KB) fit :data:`MAX_BODY`; a payer also stops filling a block at
``MAX_BODY`` (model names are free-form). (256 would not fit one gossip message.)"""
_MAX_ID = 128
_MAX_NETWORK_ID = 64
DEFAULT_MAX_CLOCK_SKEW_MS = 30_000
"""How far ahead of a receiver's clock a block may be dated before it waits (the genesis default)."""
MIN_UNBONDING_SKEWS = 10
"""A genesis whose ``unbonding_delay_ms`` is below this many ``max_clock_skew_ms`` is refused:
the delay must dwarf what a dishonest timestamp could shave off it."""


class Kind(enum.IntEnum):
    """Block kinds (the ``kind`` field)."""

    OPEN = 0
    STAKE = 1
    UNSTAKE = 2
    PAY = 3
    CLAIM = 4
    VERDICT = 5


def _non_negative(name: str, value: int) -> None:
    if value < 0:
        raise MalformedMessage(f"{name} must be >= 0")


def _peer_id_shape(name: str, value: str) -> None:
    if not 1 <= len(value) <= _MAX_ID:
        raise MalformedMessage(f"{name} must be 1-{_MAX_ID} characters")


_CREDIT_FIELDS = frozenset({"initial_credit", "max_initial_staked", "duel_penalty", "judge_fee"})


@message(38)
class NetworkParams(Message):
    """A network's genesis: every node of one network must hold exactly these values.

    They come from the shared network config (``ledger_params``); a node refuses blocks of
    another ``network_id``, and its store refuses to open a file made with other values.
    Total supply is ``initial_credit`` times the number of opened accounts; nothing else
    mints. :meth:`check_genesis` refuses values no honest network may use.
    """

    network_id: str
    initial_credit: int
    """Micro-credits every account receives in its ``open`` block."""
    max_initial_staked: int
    """Upper bound on what an ``open`` may stake at once (also bounded by ``initial_credit``)."""
    unbonding_delay_ms: int
    """Unstaked credit becomes free this long (plus ``max_clock_skew_ms``) after the unstake
    block's timestamp."""
    duel_penalty: int
    """Micro-credits of stake weight a duel moves from its loser to its winner, split among
    its judges (each verdict moves ``duel_penalty // judges``)."""
    max_clock_skew_ms: int = DEFAULT_MAX_CLOCK_SKEW_MS
    """How far ahead of a receiver's clock a block may be dated; a block dated further ahead
    waits until the receiver's clock catches up. Unbonding adds it to the delay, so no
    accepted timestamp can shorten the delay."""
    judge_fee: int = 0
    """Micro-credits a requester pays a judge per verdict (through an ordinary pay block)."""

    def _check(self) -> None:
        if not 1 <= len(self.network_id) <= _MAX_NETWORK_ID or "/" in self.network_id:
            raise MalformedMessage("network_id must be 1-64 characters without '/'")
        for n in ("initial_credit", "max_initial_staked", "unbonding_delay_ms", "duel_penalty", "max_clock_skew_ms", "judge_fee"):
            _non_negative(n, getattr(self, n))
        if self.unbonding_delay_ms < MIN_UNBONDING_SKEWS * self.max_clock_skew_ms:
            raise MalformedMessage(
                f"unbonding_delay_ms {self.unbonding_delay_ms} must be at least {MIN_UNBONDING_SKEWS} x "
                f"max_clock_skew_ms ({MIN_UNBONDING_SKEWS * self.max_clock_skew_ms}): otherwise a block dated "
                "ahead by the accepted skew shortens unbonding noticeably"
            )

    def check_genesis(self) -> None:
        """Raise MalformedMessage unless these values make a sound network (what decoding checks)."""
        self._check()

    def digest(self) -> bytes:
        """16 bytes that name this genesis (gossiped in every status: a peer whose differ is
        on another network, whatever its ``network_id`` says)."""
        return sha256(self.encode())[:16]

    def differences(self, other: NetworkParams) -> list[str]:
        """What ``other`` sets differently, as ``"field theirs (ours mine)"`` (empty if equal)."""
        out = []
        for name in type(self).__dataclass_fields__:
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                if name in _CREDIT_FIELDS:  # shown in credits, as a person writes them in ledger_params
                    mine, theirs = format_credits(mine), format_credits(theirs)
                out.append(f"{name} {theirs} (ours {mine})")
        return out


# --- bodies ----------------------------------------------------------------------------------


@message(31)
class OpenBody(Message):
    """Height 0 of every chain: credits ``initial_credit`` and stakes ``initial_staked`` of it."""

    initial_staked: int

    def _check(self) -> None:
        _non_negative("initial_staked", self.initial_staked)


@message(32)
class StakeBody(Message):
    """Move ``amount`` from free to staked credit."""

    amount: int

    def _check(self) -> None:
        _non_negative("amount", self.amount)


@message(33)
class UnstakeBody(Message):
    """Move ``amount`` from staked to unbonding; it is free ``unbonding_delay_ms`` later."""

    amount: int

    def _check(self) -> None:
        _non_negative("amount", self.amount)


@message(34)
class PayBody(Message):
    """Pay one executor for work it signed for: 1..MAX_RECEIPTS_PER_PAY receipts, embedded
    in full so anyone can verify them. Payer = the block's account = every
    ``receipt.requester``; payee = the one ``receipt.executor`` they all share (checked by
    the rules, ``mixed-payees``); amount = the sum of their prices (each > 0)."""

    receipts: tuple[Receipt, ...]

    def _check(self) -> None:
        if not 1 <= len(self.receipts) <= MAX_RECEIPTS_PER_PAY:
            raise MalformedMessage(f"a pay carries 1-{MAX_RECEIPTS_PER_PAY} receipts, not {len(self.receipts)}")

    @property
    def payee(self) -> str:
        """The executor of the first receipt (the rules require all to share it)."""
        return self.receipts[0].executor

    @property
    def amount(self) -> int:
        """The sum of the receipts' prices: what the pay debits and its claim credits."""
        return sum(r.price for r in self.receipts)


@message(35)
class ClaimBody(Message):
    """Credit the account with a payment (or a verdict award) made to it on another chain.

    Cites the source block by account, height and hash; ``amount`` repeats the credited
    amount so the claim reads alone.
    """

    source_account: str
    source_height: int
    source_hash: bytes
    amount: int

    def _check(self) -> None:
        _peer_id_shape("source_account", self.source_account)
        _non_negative("source_height", self.source_height)
        _non_negative("amount", self.amount)
        if len(self.source_hash) != HASH_SIZE:
            raise MalformedMessage("source_hash must be 32 bytes")


@message(36)
class VerdictBody(Message):
    """A judge's verdict on a duel, written on the judge's chain.

    Carries the requester's signed :class:`~p2pserve.wire.duel.DuelOrder` (which embeds
    both executors' receipts), the ``outcome`` (``"A"``: the order's first executor won,
    ``"B"``, or ``"tie"``), the method and its per-order results, and ``penalty``: the
    stake weight moved from the loser to the winner (``duel_penalty // order.judges``;
    0 for a tie). The rules check that the judge is the one the order draws.
    """

    order: DuelOrder
    outcome: str
    method: str
    verdicts: tuple[str, ...]
    scores: tuple[int, ...]
    penalty: int

    def _check(self) -> None:
        check_outcome(self.outcome, self.method, self.verdicts, self.scores)
        _non_negative("penalty", self.penalty)
        if self.outcome == "tie" and self.penalty:
            raise MalformedMessage("a tie moves nothing (penalty 0)")

    @property
    def winner(self) -> str | None:
        a, b = self.order.executors
        return a if self.outcome == "A" else b if self.outcome == "B" else None

    @property
    def loser(self) -> str | None:
        a, b = self.order.executors
        return b if self.outcome == "A" else a if self.outcome == "B" else None


Body = OpenBody | StakeBody | UnstakeBody | PayBody | ClaimBody | VerdictBody

BODY_TYPES: dict[Kind, type[Message]] = {
    Kind.OPEN: OpenBody,
    Kind.STAKE: StakeBody,
    Kind.UNSTAKE: UnstakeBody,
    Kind.PAY: PayBody,
    Kind.CLAIM: ClaimBody,
    Kind.VERDICT: VerdictBody,
}
_KIND_OF: dict[type[Message], Kind] = {cls: kind for kind, cls in BODY_TYPES.items()}


# --- the block -------------------------------------------------------------------------------


@message(30)
class Block(SignedMessage):
    """One signed entry on one account's chain. ``digest()`` is the block hash."""

    network_id: str
    account: str
    height: int
    prev: bytes
    kind: int
    body: bytes
    timestamp_ms: int
    signature: bytes

    SIGNER = "account"

    def _check(self) -> None:
        if not 1 <= len(self.network_id) <= _MAX_NETWORK_ID:
            raise MalformedMessage("network_id must be 1-64 characters")
        _peer_id_shape("account", self.account)
        _non_negative("height", self.height)
        _non_negative("timestamp_ms", self.timestamp_ms)
        if len(self.prev) != HASH_SIZE:
            raise MalformedMessage("prev must be 32 bytes")
        if self.kind not in _KINDS:
            raise MalformedMessage(f"unknown block kind {self.kind}")
        if len(self.body) > MAX_BODY:
            raise MalformedMessage(f"body longer than {MAX_BODY} bytes")
        if len(self.signature) != SIGNATURE_SIZE:
            raise MalformedMessage(f"signature must be {SIGNATURE_SIZE} bytes")

    def decoded_body(self) -> Body:
        """The body message; raises MalformedMessage unless it decodes canonically to the
        class ``kind`` names."""
        return decode_body(self.kind, self.body)[0]


def _unpack(raw: bytes) -> Any:
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises a zoo of errors on garbage; none may escape
        raise MalformedMessage(f"undecodable msgpack: {type(exc).__name__}") from None


def _canonical(raw: bytes) -> list[Any]:
    """Unpack ``raw`` and insist that re-packing gives the same bytes (done in C: fast)."""
    lst = _unpack(raw)
    if not isinstance(lst, list) or msgpack.packb(lst, use_bin_type=True) != raw:
        raise MalformedMessage("not canonically encoded")
    return lst


def decode_body(kind: int, raw: bytes) -> tuple[Body, tuple[bytes, ...]]:
    """Decode a canonical body of ``kind``; also the signing bytes of each receipt it embeds
    (pay: its receipts, in order; verdict: the order's two receipts, then the order itself),
    taken from the bytes without re-encoding.

    Raises MalformedMessage.
    """
    if kind not in _KINDS:
        raise MalformedMessage(f"unknown block kind {kind}")
    cls = BODY_TYPES[Kind(kind)]
    lst = _canonical(raw)
    body: Body = decode(raw, expect=cls)  # type: ignore[assignment]
    if isinstance(body, PayBody):
        receipts: tuple[bytes, ...] = tuple(msgpack.packb(r[:-1], use_bin_type=True) for r in lst[1])
    elif isinstance(body, VerdictBody):
        order = lst[1]  # [tag, network_id, requester, headers, receipts, candidates, judges, signature]
        receipts = (*(msgpack.packb(r[:-1], use_bin_type=True) for r in order[4]), msgpack.packb(order[:-1], use_bin_type=True))
    else:
        receipts = ()
    return body, receipts


_KINDS = frozenset(int(k) for k in Kind)


def decode_block(raw: bytes) -> Block:
    """Decode one block from its stored/wire bytes, insisting on the canonical encoding.

    A canonical decode means ``block.encode() == raw``: one byte flipped anywhere either
    fails here, or changes a signed field (and so the signature check), or changes the
    signature itself. Raises MalformedMessage.
    """
    block: Block = decode(raw, expect=Block)
    _canonical(raw)
    return block


def signing_bytes_of(raw: bytes) -> bytes:
    """A canonical block's signing bytes, sliced from its encoding (no re-encoding).

    Layout: ``fixarray(9) tag ...fields... bin8(64) signature`` → ``fixarray(8) tag
    ...fields...``. Only valid for bytes :func:`decode_block` accepted.
    """
    if raw[0] != 0x99 or raw[-66:-64] != b"\xc4\x40":
        raise MalformedMessage("not a canonical block encoding")
    return b"\x98" + raw[1:-66]


def make_block(
    signer: Signer,
    *,
    network_id: str,
    height: int,
    prev: bytes,
    body: Body,
    timestamp_ms: int,
) -> Block:
    """A block signed by ``signer`` on its own chain; ``kind`` follows from the body's class."""
    kind = _KIND_OF.get(type(body))
    if kind is None:
        raise LocalProtocolError(f"not a block body: {type(body).__name__}")
    try:
        unsigned = Block(network_id, signer.peer_id, height, prev, int(kind), encode(body), timestamp_ms, b"")
    except MalformedMessage as exc:  # pragma: no cover - dataclass init does not run _check
        raise LocalProtocolError(str(exc)) from exc
    return unsigned.signed(signer)


# --- equivocation ----------------------------------------------------------------------------


@message(37)
class EquivocationProof(Message):
    """Two validly signed, different blocks at one account and height. Verifiable alone."""

    first: Block
    second: Block

    def verify(self) -> None:
        """Raise MalformedMessage or BadSignature unless this proves an equivocation."""
        a, b = self.first, self.second
        if (a.network_id, a.account, a.height) != (b.network_id, b.account, b.height):
            raise MalformedMessage("the two blocks are not at one network, account and height")
        if a.digest() == b.digest():
            raise MalformedMessage("the two blocks are the same block")
        a.verify()
        b.verify()

    @property
    def account(self) -> str:
        return self.first.account

    @property
    def height(self) -> int:
        return self.first.height

    def key(self) -> bytes:
        """Order-independent identity of the proof (the pair of block hashes, sorted)."""
        x, y = sorted((self.first.digest(), self.second.digest()))
        return sha256(x + y)
