"""Node configuration: typed frozen dataclasses; YAML is only how they load.

The layout keeps the original WWW.Serve names (``server_params``, ``ledger_params``,
``models`` with ``model_path``, ``base_url``, ``api_key``, ``gen_params``, ``dispatch_params``)
and adds what a libp2p node needs; ``configs/node.example.yaml`` documents every key. One type
per concept, with its defaults and a docstring per field, validating itself in ``__post_init__``:

* :class:`ServerParams` (networking, API) embeds :class:`~p2pserve.policies.PolicyParams`
  (the routing knobs), whose keys sit flat in YAML ``server_params``;
* :class:`LedgerParams` (the network's genesis and this node's stake);
* a ``models[]`` entry is a :class:`~p2pserve.backends.registry.BackendSpec`; the YAML names
  that differ from its field names are mapped in one table, :data:`_MODEL_KEYS`. ``models``
  absent: serve the embedded default model; ``models: []``: serve nothing (a user gateway);
* ``limits`` is :class:`~p2pserve.wire.limits.Limits`;
* :class:`NodeConfig` holds them and checks what spans sections.

Contract between the dataclasses and the loader: a dataclass raises :class:`ConfigError`
``"<field>: <reason>"``; the loader prefixes the file and the section's path and writes the
field as its YAML key. The loader rejects unknown keys and wrongly typed values the same way.
Command-line options go through the same loader (:func:`override`).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import yaml

from p2pserve.backends.registry import EMBEDDED_MODEL, BackendKind, BackendSpec
from p2pserve.config_addrs import suggest
from p2pserve.errors import ConfigError, MalformedMessage
from p2pserve.hostnames import normalize_origin, split_host
from p2pserve.ledger.blocks import MAX_BODY, NetworkParams
from p2pserve.policies import DispatchParams, PolicyParams
from p2pserve.units import MICRO
from p2pserve.wire.limits import DEFAULT_LIMITS, READ_SLACK, Limits

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "DEFAULT_MODEL", "EMBEDDED_MODEL", "BackendSpec", "DispatchParams", "GenParams",
    "LedgerParams", "Limits", "NodeConfig", "PolicyParams", "ServerParams", "YamlKey", "flat_section",
    "load_config", "override", "parse_config", "yaml_key_table", "yaml_keys",
]

T = TypeVar("T", bound="DataclassInstance")

DEVNET = "devnet"
"""The default network_id: a local or test network, where accounts open with free credit."""
DEVNET_INITIAL_CREDIT = 1000.0
"""Credits an account opens with on ``devnet`` when ``initial_credit`` is unset (the paper's value)."""


def _invalid(key: str, reason: str, value: object) -> NoReturn:
    raise ConfigError(f"{key}: {reason} (got {value!r})")


@dataclass(frozen=True, slots=True)
class ServerParams:
    """Networking, API and routing policy of one node (YAML ``server_params``)."""

    listen: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/4001",)
    """libp2p listen multiaddrs (TCP). Port 0 picks a free port."""
    announce: tuple[str, ...] = ()
    """Addresses to advertise instead of the listen addresses (e.g. behind NAT)."""
    bootstrap: tuple[str, ...] = ()
    """Multiaddrs (with /p2p/<id>) of nodes to join through."""
    api: str = "127.0.0.1:5778"
    """HOST:PORT of the HTTP API (OpenAI-compatible /v1, status, metrics)."""
    api_key: str | None = None
    """If set, API clients must send ``Authorization: Bearer <api_key>``."""
    admin_key: str | None = None
    """If set, stake and unstake (the API's ledger writes) need ``Authorization: Bearer
    <admin_key>`` and the inference key no longer moves stake: give users of a shared gateway
    the ``api_key`` only. Unset: the ``api_key`` (if any) covers them too."""
    allowed_hosts: tuple[str, ...] = ()
    """Extra names the API answers to in the ``Host`` header: ``name`` (any port), ``name:port``,
    ``[v6]:port``; ``"*"`` allows any Host. Always allowed: the bound address of ``api`` and
    localhost, 127.0.0.1 and [::1] at its port; any other Host gets 403 (DNS-rebinding
    protection). When ``api`` binds 0.0.0.0 or :: the node cannot know its public names, so
    any Host is accepted unless this list is set: set it on a node reachable by name."""
    allowed_origins: tuple[str, ...] = ()
    """Web origins (``scheme://host[:port]``) whose pages may call the API from a browser;
    ``"*"`` allows any. A request whose ``Origin`` is neither the node's own nor listed gets
    403 (cross-site request protection); requests without ``Origin`` (curl, SDKs, the CLI)
    are unaffected."""
    policy: str = "default"
    """Dispatch policy by name (``default``, ``local-only``, ``always-offload``) or ``module:Class``."""
    policy_params: PolicyParams = field(default_factory=PolicyParams)
    """The policy's knobs (``offload_frequency``, ``offer_fanout``, ...); flat in YAML ``server_params``."""
    status_interval: float = 2.0
    """Seconds between signed status gossips."""
    peer_ttl: float = 6.0
    """Seconds of silence after which a peer is dropped (default 3 intervals). In networks big
    enough to stretch the interval (see max_status_rate) the same number of intervals applies."""
    max_status_rate: float = 5.0
    """Statuses per second a node should receive from the whole network at most: the status
    interval grows to (network size / this) when that is longer than status_interval."""
    target_connections: int = 6
    """Dial learned peers until this many are connected."""
    request_timeout: float = 300.0
    """Overall bound on one user request (seconds)."""
    duel_rate: float = 0.1
    """Share of this node's offloaded requests that become duels (a second executor answers
    too and a third node judges; docs/duel.md). 0 disables duels."""
    duel_judges: int = 1
    """Judges drawn per duel (1-5); each verdict moves its share of the network's duel_penalty."""
    judge: bool = False
    """Advertise judging: drawn judges get the prompt and both answers of a duel and earn the
    network's judge_fee per verdict."""
    judge_method: str = "reference-similarity"
    """How this node judges: ``reference-similarity`` (answers itself, compares embeddings),
    ``llm-pairwise`` (asks its model in both orders), ``fake`` (tests), or ``module:Class``."""
    judge_model: str | None = None
    """The local model a judge uses to answer or compare (default: its first model)."""
    judge_timeout: float = 120.0
    """Seconds a requester waits for a judge's verdict."""

    def __post_init__(self) -> None:
        for name in ("status_interval", "peer_ttl", "max_status_rate", "request_timeout", "judge_timeout"):
            if not getattr(self, name) > 0:
                _invalid(name, "must be > 0", getattr(self, name))
        if not 0.0 <= self.duel_rate <= 1.0:
            _invalid("duel_rate", "must be within [0, 1]", self.duel_rate)
        if not 1 <= self.duel_judges <= 5:
            _invalid("duel_judges", "must be 1-5", self.duel_judges)
        if not self.judge_method:
            _invalid("judge_method", "must name a method", self.judge_method)
        if self.target_connections < 1:
            _invalid("target_connections", "must be at least 1", self.target_connections)
        if not _is_host_port(self.api):
            _invalid("api", "must be HOST:PORT", self.api)
        for name, check in (("allowed_hosts", split_host), ("allowed_origins", normalize_origin)):
            problem = _bad_entries(getattr(self, name), check)
            if problem:
                _invalid(name, problem, getattr(self, name))
        if not self.listen:
            _invalid("listen", "must be multiaddrs like /ip4/0.0.0.0/tcp/4001", self.listen)
        for a in self.listen:
            if not a.startswith("/"):
                raise ConfigError(f"listen: must be multiaddrs like /ip4/0.0.0.0/tcp/4001: {a!r} ({suggest(a, peer=False)})")
        for a in self.bootstrap:
            if "/p2p/" not in a:
                raise ConfigError(f"bootstrap: each address must end in /p2p/<peer id>: {a!r} ({suggest(a, peer=True)})")
        if self.peer_ttl < self.status_interval:
            _invalid("peer_ttl", f"must be at least status_interval ({self.status_interval!r})", self.peer_ttl)


@dataclass(frozen=True, slots=True)
class LedgerParams:
    """The network's genesis (shared by every node of one network) and this node's stake."""

    network_id: str = DEVNET
    """Nodes of different networks ignore each other's gossip and blocks."""
    initial_credit: float | None = None
    """Credits every account receives at open. Must match network-wide. Unset (None): 1000 on
    ``network_id: devnet``, 0 on any other network: free credit at open invites sybils, so
    public networks earn credit by serving. See :meth:`effective_initial_credit`."""
    initial_staked: float = 0.0
    """Credits this node stakes at open."""
    unbonding_delay_s: float = 600.0
    """Seconds an unstake waits before the credit is free again (counted from the unstake's
    timestamp, plus ``max_clock_skew_s``). At least 10 x ``max_clock_skew_s``, so that no
    timestamp a receiver accepts can shorten it noticeably. Must match network-wide."""
    max_clock_skew_s: float = 30.0
    """How far ahead of a node's clock a block may be dated; a block dated further ahead waits
    until the clock catches up. Must match network-wide."""
    max_initial_staked: float = 1000.0
    """Most credits an account may stake in its open block. Must match network-wide."""
    duel_penalty: float = 1.0
    """Stake weight (credits) a duel moves from its loser to its winner, split among its
    judges. Must match network-wide."""
    judge_fee: float = 0.05
    """Credits a requester pays a judge per verdict. Must match network-wide."""

    def __post_init__(self) -> None:
        # The genesis as a whole (check_genesis) is checked by NodeConfig: tests build unsound
        # LedgerParams on purpose to show that the store refuses them.
        if not self.network_id or len(self.network_id) > 64 or "/" in self.network_id:
            _invalid("network_id", "must be 1-64 characters without '/'", self.network_id)
        for name in ("initial_credit", "initial_staked", "unbonding_delay_s", "max_clock_skew_s",
                     "max_initial_staked", "duel_penalty", "judge_fee"):
            value = getattr(self, name)
            if value is not None and value < 0:
                _invalid(name, "must be >= 0", value)

    def effective_initial_credit(self) -> float:
        """``initial_credit``, or its network's default when unset (1000 on devnet, else 0)."""
        if self.initial_credit is not None:
            return self.initial_credit
        return DEVNET_INITIAL_CREDIT if self.network_id == DEVNET else 0.0

    def network_params(self) -> NetworkParams:
        """The genesis every node of this network shares, in micro-credits."""
        return NetworkParams(
            network_id=self.network_id,
            initial_credit=round(self.effective_initial_credit() * MICRO),
            max_initial_staked=round(self.max_initial_staked * MICRO),
            unbonding_delay_ms=round(self.unbonding_delay_s * 1000),
            duel_penalty=round(self.duel_penalty * MICRO),
            max_clock_skew_ms=round(self.max_clock_skew_s * 1000),
            judge_fee=round(self.judge_fee * MICRO),
        )


@dataclass(frozen=True, slots=True)
class GenParams:
    """The YAML shape of ``models[].gen_params``: generation defaults applied when a request
    does not set them. Loaded into :attr:`BackendSpec.gen_params` by :meth:`as_mapping`."""

    max_tokens: int | None = None
    """Most tokens an answer may generate when the request sets no ``max_tokens`` (None: the
    backend's default)."""
    temperature: float | None = None
    """Sampling temperature when the request sets none (None: the backend's default)."""
    top_p: float | None = None
    """Nucleus sampling (top-p) threshold when the request sets none (None: the backend's default)."""

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens <= 0:
            _invalid("max_tokens", "must be > 0", self.max_tokens)
        if self.temperature is not None and self.temperature < 0:
            _invalid("temperature", "must be >= 0", self.temperature)
        if self.top_p is not None and not 0 < self.top_p <= 1:
            _invalid("top_p", "must be within (0, 1]", self.top_p)

    def as_mapping(self) -> dict[str, Any]:
        """The set values (None means "the backend's default", so it is left out)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


DEFAULT_MODEL = BackendSpec(EMBEDDED_MODEL, kind="embedded", context_length=2048)
"""What a config without a ``models`` key serves: the bundled SmolLM2-135M, in-process."""


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """A whole node config file."""

    server_params: ServerParams = field(default_factory=ServerParams)
    ledger_params: LedgerParams = field(default_factory=LedgerParams)
    models: tuple[BackendSpec, ...] | None = None
    """None (key absent): the embedded default model. Empty: a gateway that serves nothing."""
    data_dir: str | None = None
    """Where the key and ledger live; default ``$P2PSERVE_HOME`` or ``~/.p2pserve``."""
    limits: Limits = field(default_factory=Limits)
    """Bounds on what a peer or a client can make this node buffer or count."""

    def __post_init__(self) -> None:
        names = [m.model_path for m in self.models or ()]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ConfigError(f"models: model_path listed twice: {', '.join(sorted(dupes))}")
        sp = self.server_params
        served = [m.model_path for m in self.effective_models()]
        if sp.judge and sp.judge_model is not None and sp.judge_model not in served:
            raise ConfigError(f"server_params.judge_model: {sp.judge_model!r} is not one of this node's models "
                              f"(models[].model_path: {', '.join(served) or 'none'})")
        try:
            self.ledger_params.network_params().check_genesis()
        except MalformedMessage as exc:
            raise ConfigError(f"ledger_params: not a sound network genesis: {exc}") from exc
        _check_limits(self.limits)

    def effective_models(self) -> tuple[BackendSpec, ...]:
        """The local models: ``models``, or :data:`DEFAULT_MODEL` when the key is absent."""
        if self.models is None:
            return (DEFAULT_MODEL,)
        return self.models


_STREAM_CAPS = ("max_streams_per_peer", "max_streams", "max_buffered_per_peer", "max_buffered")
"""The limits that are this node's budgets for open streams (:class:`~p2pserve.net.caps.StreamCaps`),
not caps of the protocol's messages."""


def _check_limits(limits: Limits) -> None:
    """Each limit is a positive count no larger than its default (a node may only tighten
    them), what travels inside something fits in it, and each node-wide stream cap holds at
    least its per-peer cap."""
    for f in dataclasses.fields(limits):
        value, cap = getattr(limits, f.name), getattr(DEFAULT_LIMITS, f.name)
        if value < 1:
            _invalid(f"limits.{f.name}", "must be at least 1", value)
        if value > cap:  # peers' messages are only bounded by the protocol's caps; a node may only tighten
            what = "its default" if f.name in _STREAM_CAPS else "the protocol's cap"
            _invalid(f"limits.{f.name}", f"may not exceed {what} of {cap}", value)
    if 2 * limits.max_prompt >= limits.max_frame:
        _invalid("limits.max_prompt", "must be below max_frame / 2 (an infer request carries a body and "
                 "a continuation of up to max_prompt each in one frame)", limits.max_prompt)
    if limits.max_text_chunk >= limits.max_frame:
        _invalid("limits.max_text_chunk", "must be below max_frame (a chunk travels in one frame)", limits.max_text_chunk)
    if limits.max_pubsub_message <= MAX_BODY:
        _invalid("limits.max_pubsub_message", f"must be above {MAX_BODY} (a whole ledger block is one gossip message)",
                 limits.max_pubsub_message)
    floor = limits.max_frame + READ_SLACK
    if limits.max_buffered_per_peer < floor:
        _invalid("limits.max_buffered_per_peer", f"must be at least max_frame + {READ_SLACK} = {floor} (a stream "
                 "receiving one largest frame holds it, its length prefix and the rest of one read)",
                 limits.max_buffered_per_peer)
    for total, per_peer in (("max_streams", "max_streams_per_peer"), ("max_buffered", "max_buffered_per_peer")):
        if getattr(limits, total) < getattr(limits, per_peer):
            _invalid(f"limits.{total}", f"must be at least {per_peer} ({getattr(limits, per_peer)}): "
                     "it bounds all peers together", getattr(limits, total))


def _bad_entries(values: tuple[str, ...], check: Callable[[str], object]) -> str | None:
    for v in values:
        if v == "*":
            continue
        try:
            check(v)
        except ValueError as exc:
            return f"{v!r}: {exc}"
    return None


def _is_host_port(v: str) -> bool:
    host, sep, port = v.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 <= int(port) < 65536)


# -- YAML keys ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class YamlKey:
    """One YAML key of a section (an entry of :func:`yaml_key_table`): ``tp``, the type its
    value is checked against; ``fields``, the dataclass fields it sets (one, named like the
    key, unless a table below maps it);
    ``convert``, checked value -> one value per field (default: the value, for every field);
    ``default``, its value when absent, where that differs from the fields' own (None: none)."""

    tp: Any
    fields: tuple[str, ...]
    convert: Callable[[Any], tuple[Any, ...]] | None = None
    default: Any = None


_MODEL_KEYS: Mapping[str, YamlKey] = {
    "backend": YamlKey(BackendKind, ("kind",)),
    "backend_model": YamlKey(str | None, ("served_model",)),
    "timeout": YamlKey(float, ("first_byte_timeout", "read_timeout")),
    "gen_params": YamlKey(GenParams, ("gen_params",), lambda g: (g.as_mapping(),)),
    "dispatch_params": YamlKey(DispatchParams, ("dispatch_params", "max_concurrency"), lambda d: (d, d.max_concurrency or 1)),
    # WWW.Serve advertised 8192 unless told; the embedded kind's own default (2048) applies
    # only to the model served when `models` is absent.
    "context_length": YamlKey(int, ("context_length",), default=8192),
}
"""The YAML names of a ``models[]`` entry that are not simply :class:`BackendSpec` field names."""

_FLAT: Mapping[type, tuple[str, type]] = {ServerParams: ("policy_params", PolicyParams)}
"""Section -> (field, its dataclass) whose keys sit flat in the section's YAML mapping."""


def yaml_key_table(cls: type) -> dict[str, YamlKey]:
    """The YAML keys of section ``cls`` as the loader reads them, in its order: its fields,
    renamed or split per :data:`_MODEL_KEYS`. Keys that sit flat in the section (another
    dataclass's, see :func:`flat_section`) are not included."""
    return _keys(cls)


def _keys(cls: type) -> dict[str, YamlKey]:
    """:func:`yaml_key_table` (the loader's name for it)."""
    hints = typing.get_type_hints(cls)
    overrides = _MODEL_KEYS if cls is BackendSpec else {}
    keys: dict[str, YamlKey] = {}
    for f in dataclasses.fields(cls):
        mapped = next((name for name, key in overrides.items() if f.name in key.fields), None)
        if mapped is not None:
            keys.setdefault(mapped, overrides[mapped])
        elif f.name not in _FLAT.get(cls, ()):
            keys[f.name] = YamlKey(hints[f.name], (f.name,))
    return keys


def flat_section(cls: type) -> tuple[str, type] | None:
    """``(field, dataclass)`` whose keys sit flat in section ``cls``'s YAML mapping (None: none);
    e.g. ``server_params`` holds the keys of its ``policy_params`` (:class:`PolicyParams`)."""
    return _FLAT.get(cls)


def yaml_keys(cls: type) -> tuple[str, ...]:
    """Every YAML key of section ``cls`` (flat keys included), as an operator writes them."""
    flat = _FLAT.get(cls)
    return (*_keys(cls), *(yaml_keys(flat[1]) if flat else ()))


def _yaml_name(cls: type, field_name: str) -> str | None:
    """The YAML key that sets ``field_name`` of ``cls`` (None: not one of its fields)."""
    if field_name in _FLAT.get(cls, ()):
        return None
    return next((k for k, key in _keys(cls).items() if field_name in key.fields), None)


# -- the loader ------------------------------------------------------------------------------


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Loader:
    """Checks parsed YAML against the dataclasses' type hints and builds them."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, reason: str) -> NoReturn:
        raise ConfigError(f"{self.source}: {key or '<top level>'}: {reason}")

    def value(self, tp: Any, raw: Any, key: str, base: Any = None) -> Any:
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            return None if raw is None else self.value(args[0], raw, key, base)
        if origin is typing.Literal:
            if raw not in typing.get_args(tp):
                self.fail(key, f"must be one of {', '.join(map(str, typing.get_args(tp)))} (got {raw!r})")
            return raw
        if origin is tuple:
            item = typing.get_args(tp)[0]
            raw = [raw] if isinstance(raw, str) and item is str else [] if raw is None else raw
            if not isinstance(raw, list):
                self.fail(key, f"expected a list, got {type(raw).__name__}")
            return tuple(self.value(item, x, f"{key}[{i}]") for i, x in enumerate(raw))
        if origin is Mapping:
            return dict(self.mapping(raw, key))
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            return self.dataclass(tp, raw, key, base)
        return self.scalar(tp, raw, key)

    def scalar(self, tp: Any, raw: Any, key: str) -> Any:
        if tp in (bool, str) and isinstance(raw, tp) or tp is int and type(raw) is int:
            return raw
        if tp is float and type(raw) in (int, float):
            return float(raw)
        expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp)
        if expected is None:  # pragma: no cover - a dataclass field of a type this loader lacks
            raise TypeError(f"unsupported config type {tp!r}")
        self.fail(key, f"expected {expected}, got {raw!r}")

    def mapping(self, raw: Any, key: str) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.fail(key, f"expected a mapping, got {type(raw).__name__}")
        return raw

    def dataclass(self, cls: type[T], raw: Any, path: str, base: T | None = None) -> T:
        """Section ``cls`` from mapping ``raw``; keys ``raw`` lacks keep ``base``'s values
        (or the defaults, without ``base``)."""
        raw = self.mapping(raw, path)
        keys, flat = _keys(cls), _FLAT.get(cls)
        flat_keys = set(yaml_keys(flat[1])) if flat else set()
        for k in raw:
            if k not in keys and k not in flat_keys:
                known = ", ".join(sorted({*keys, *flat_keys}))
                self.fail(_join(path, str(k)), f"unknown key (known: {known})")
        kwargs: dict[str, Any] = {}
        if flat and (base is None or flat_keys & set(raw)):
            name, flat_cls = flat
            sub = {k: v for k, v in raw.items() if k in flat_keys}
            kwargs[name] = self.dataclass(flat_cls, sub, path, getattr(base, name) if base is not None else None)
        for name, key in keys.items():
            if name in raw:
                whole = key.convert is None and len(key.fields) == 1 and base is not None
                v = self.value(key.tp, raw[name], _join(path, name), getattr(base, key.fields[0]) if whole else None)
            elif base is None and key.default is not None:
                v = key.default
            elif base is None and _required(cls, key.fields[0]):
                self.fail(_join(path, name), "required key missing")
            else:
                continue
            kwargs.update(zip(key.fields, key.convert(v) if key.convert else [v] * len(key.fields), strict=True))
        return self.build(cls, kwargs, path, base)

    def build(self, cls: type[T], kwargs: dict[str, Any], path: str, base: T | None) -> T:
        """``cls(**kwargs)`` (or ``base`` with them replaced); its ConfigError, which starts with
        a field name, is re-raised naming the file and the YAML key."""
        try:
            return cls(**kwargs) if base is None else dataclasses.replace(base, **kwargs)
        except ConfigError as exc:
            where, sep, reason = str(exc).partition(": ")
            head = re.match(r"\w+", where) if sep else None
            yaml_name = _yaml_name(cls, head.group()) if head else None
            if head is None or yaml_name is None:
                self.fail(path, str(exc))
            self.fail(_join(path, yaml_name + where[head.end() :]), reason)


def _required(cls: type, name: str) -> bool:
    return any(f.name == name and f.default is f.default_factory is dataclasses.MISSING for f in dataclasses.fields(cls))


def parse_config(raw: Any, source: str = "<config>") -> NodeConfig:
    """Build a NodeConfig from parsed YAML (a mapping, or None for all defaults).

    Raises :class:`ConfigError` naming ``source``, the key and the reason.
    """
    return _Loader(source).dataclass(NodeConfig, raw, "")


def override(config: NodeConfig, changes: Mapping[str, Any], source: str = "command line") -> NodeConfig:
    """``config`` with ``changes`` applied: a mapping shaped like the YAML file (for example
    ``{"server_params": {"bootstrap": [...]}}``), checked exactly like a file named ``source``.
    Sections and keys ``changes`` lacks keep ``config``'s values; lists replace."""
    return _Loader(source).dataclass(NodeConfig, dict(changes), "", config)


def load_config(path: Path | None) -> NodeConfig:
    """Load a YAML config file; None gives all defaults."""
    if path is None:
        return NodeConfig()
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    return parse_config(raw, str(path))
