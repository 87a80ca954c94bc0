"""Message base class, registry and msgpack codec.

Every message is a frozen slotted dataclass registered under an integer tag with
:func:`message`. On the wire it is the msgpack array ``[tag, field, ...]`` in declaration
order; nested messages are nested arrays of the same shape. Maps are never used (they have
no canonical order). Decoding checks the tag, the field count and every field's type, so a
decoded message is valid by construction; classes may add a ``_check()`` method for value
rules (it raises MalformedMessage).

Tag ranges: 1-9 gossip, 10-29 inference, 30-49 ledger, 50-69 duel/judge.

Signed messages end with a ``signature: bytes`` field and name the field holding the
signer's peer ID in ``SIGNER``. ``signing_bytes()`` is the canonical encoding of every
field but the signature; ``digest()`` is its SHA-256.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import msgpack

from p2pserve.crypto import Signer, sha256, verify_by_peer_id
from p2pserve.errors import LocalProtocolError, MalformedMessage

__all__ = [
    "MAX_ITEMS",
    "Message",
    "SignedMessage",
    "check_length",
    "check_non_negative",
    "decode",
    "encode",
    "message",
    "registry",
]

M = TypeVar("M", bound="Message")

MAX_ITEMS = 4096
"""Most items any tuple field may hold; message-specific ``_check`` methods bound them further."""

_REGISTRY: dict[int, type[Message]] = {}


class Message:
    """Base of all wire messages. Subclasses are created with :func:`message`."""

    __slots__ = ()
    TAG: ClassVar[int]
    _decoders: ClassVar[tuple[Callable[[Any], Any], ...]]
    _names: ClassVar[tuple[str, ...]]

    def to_list(self) -> list[Any]:
        return [self.TAG, *(_to_wire(getattr(self, n)) for n in self._names)]

    def encode(self) -> bytes:
        return encode(self)

    def _check(self) -> None:  # overridden for value rules
        return None


class SignedMessage(Message):
    """A message whose last field is ``signature`` over the other fields."""

    __slots__ = ()
    SIGNER: ClassVar[str]

    def signing_bytes(self) -> bytes:
        return _pack(self.to_list()[:-1], self)

    def digest(self) -> bytes:
        """SHA-256 of the signing bytes: the identity of this object (e.g. a block hash)."""
        return sha256(self.signing_bytes())

    @property
    def signer(self) -> str:
        return str(getattr(self, self.SIGNER))

    def signed(self: M, signer: Signer) -> M:
        """A copy signed by ``signer``; raises LocalProtocolError if it is not the named signer."""
        assert isinstance(self, SignedMessage)
        if signer.peer_id != self.signer:
            raise LocalProtocolError(f"{type(self).__name__} must be signed by {self.signer}, not {signer.peer_id}")
        sig = signer.sign(self.signing_bytes())
        return dataclasses.replace(self, signature=sig)  # type: ignore[type-var]

    def verify(self) -> None:
        """Raise BadSignature unless the signature verifies for ``self.signer``'s key."""
        verify_by_peer_id(self.signer, self.signing_bytes(), getattr(self, "signature"))  # noqa: B009 (declared by subclasses)


def check_length(name: str, value: str, limit: int = 256) -> None:
    """A ``_check`` helper: MalformedMessage when ``value`` is longer than ``limit`` characters."""
    if len(value) > limit:
        raise MalformedMessage(f"{name} longer than {limit} characters")


def check_non_negative(name: str, value: int) -> None:
    """A ``_check`` helper: MalformedMessage when ``value`` is negative."""
    if value < 0:
        raise MalformedMessage(f"{name} must be >= 0")


def registry() -> dict[int, type[Message]]:
    """A copy of the tag → class map."""
    return dict(_REGISTRY)


def _to_wire(v: Any) -> Any:
    if isinstance(v, Message):
        return v.to_list()
    if isinstance(v, tuple):
        return [_to_wire(x) for x in v]
    return v


def _field_decoder(tp: Any) -> Callable[[Any], Any]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"unsupported union {tp}")
        dec = _field_decoder(inner[0])
        return lambda v: None if v is None else dec(v)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"only tuple[X, ...] fields are supported, not {tp}")
        item = _field_decoder(args[0])

        def dec_tuple(v: Any) -> tuple[Any, ...]:
            if not isinstance(v, (list, tuple)):
                raise MalformedMessage(f"expected array, got {type(v).__name__}")
            if len(v) > MAX_ITEMS:
                raise MalformedMessage(f"array of {len(v)} items exceeds {MAX_ITEMS}")
            return tuple(item(x) for x in v)

        return dec_tuple
    if isinstance(tp, type) and issubclass(tp, Message):
        return lambda v: _from_list(tp, v)
    if tp is bool:
        return _expect(bool)
    if tp is int:

        def dec_int(v: Any) -> int:
            if type(v) is not int:
                raise MalformedMessage(f"expected int, got {type(v).__name__}")
            return v

        return dec_int
    if tp is float:

        def dec_float(v: Any) -> float:
            if type(v) not in (float, int):
                raise MalformedMessage(f"expected float, got {type(v).__name__}")
            f = float(v)
            if f != f or f in (float("inf"), float("-inf")):
                raise MalformedMessage("non-finite float")
            return f

        return dec_float
    if tp in (str, bytes):
        return _expect(tp)
    raise TypeError(f"unsupported field type {tp!r}")


def _expect(tp: type) -> Callable[[Any], Any]:
    def dec(v: Any) -> Any:
        if type(v) is not tp:
            raise MalformedMessage(f"expected {tp.__name__}, got {type(v).__name__}")
        return v

    return dec


@typing.dataclass_transform(frozen_default=True)
def message(tag: int) -> Callable[[type[M]], type[M]]:
    """Class decorator: make a frozen slotted dataclass message registered under ``tag``."""

    def wrap(cls: type[M]) -> type[M]:
        if tag in _REGISTRY:
            raise TypeError(f"tag {tag} already used by {_REGISTRY[tag].__name__}")
        dc = dataclasses.dataclass(frozen=True, slots=True)(cls)
        hints = typing.get_type_hints(dc)
        fields = dataclasses.fields(typing.cast(Any, dc))
        dc.TAG = tag
        dc._names = tuple(f.name for f in fields)
        dc._decoders = tuple(_field_decoder(hints[f.name]) for f in fields)
        if issubclass(dc, SignedMessage):
            if not fields or fields[-1].name != "signature":
                raise TypeError(f"{dc.__name__}: a signed message ends with `signature: bytes`")
        _REGISTRY[tag] = dc
        return dc

    return wrap


def _from_list(cls: type[M], raw: Any) -> M:
    if not isinstance(raw, (list, tuple)) or not raw:
        raise MalformedMessage(f"{cls.__name__}: expected a non-empty array")
    if raw[0] != cls.TAG or type(raw[0]) is not int:
        raise MalformedMessage(f"{cls.__name__}: expected tag {cls.TAG}, got {raw[0]!r:.20}")
    return _build(cls, raw)


def _build(cls: type[M], raw: Any) -> M:
    values = raw[1:]
    if len(values) != len(cls._decoders):
        raise MalformedMessage(f"{cls.__name__}: expected {len(cls._decoders)} fields, got {len(values)}")
    args = []
    for name, dec, v in zip(cls._names, cls._decoders, values, strict=True):
        try:
            args.append(dec(v))
        except MalformedMessage as exc:
            raise MalformedMessage(f"{cls.__name__}.{name}: {exc}") from None
    obj = cls(*args)
    obj._check()
    return obj


def _pack(fields: list[Any], msg: Message) -> bytes:
    try:
        return bytes(msgpack.packb(fields, use_bin_type=True))
    except (OverflowError, TypeError, ValueError) as exc:
        raise LocalProtocolError(f"cannot encode {type(msg).__name__}: {exc}") from exc


def encode(msg: Message) -> bytes:
    """The canonical msgpack encoding of ``msg``; LocalProtocolError if a value cannot be encoded."""
    return _pack(msg.to_list(), msg)


def decode(data: bytes, expect: type[M] | tuple[type[M], ...] | None = None) -> M:
    """Decode one message; raise MalformedMessage for anything invalid (never another error).

    ``expect`` restricts the accepted classes.
    """
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, TypeError, RecursionError) as exc:
        raise MalformedMessage(f"undecodable msgpack: {exc}") from None
    except Exception as exc:  # msgpack raises a zoo of errors on garbage; none may escape
        raise MalformedMessage(f"undecodable msgpack: {type(exc).__name__}") from None
    if not isinstance(raw, list) or not raw or type(raw[0]) is not int:
        raise MalformedMessage("a message is an array starting with an integer tag")
    cls = _REGISTRY.get(raw[0])
    if cls is None:
        raise MalformedMessage(f"unknown message tag {raw[0]}")
    if expect is not None:
        allowed = expect if isinstance(expect, tuple) else (expect,)
        if cls not in allowed:
            names = ", ".join(c.__name__ for c in allowed)
            raise MalformedMessage(f"expected {names}, got {cls.__name__}")
    return _build(cls, raw)  # type: ignore[return-value]
