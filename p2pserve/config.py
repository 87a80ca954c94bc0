"""Node configuration: typed frozen dataclasses; YAML is only how they load.

The layout keeps the original WWW.Serve names (``server_params``, ``ledger_params``,
``models`` with ``model_path``, ``base_url``, ``api_key``, ``gen_params``,
``dispatch_params``) and adds what a libp2p node needs. Every field has its default here and
a docstring; ``configs/node.example.yaml`` documents them for operators. Unknown keys and
bad values raise :class:`ConfigError` naming the file, the key and the reason.

``models`` absent means "serve the embedded default model"; ``models: []`` means "serve
nothing, offload everything" (a user gateway).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from p2pserve.errors import ConfigError, MalformedMessage
from p2pserve.ledger.blocks import NetworkParams
from p2pserve.policies import DispatchParams, PolicyParams
from p2pserve.units import MICRO

__all__ = [
    "DispatchParams",
    "EMBEDDED_MODEL",
    "GenParams",
    "LedgerParams",
    "ModelConfig",
    "NodeConfig",
    "PolicyParams",
    "ServerParams",
    "load_config",
    "parse_config",
]

T = TypeVar("T")

EMBEDDED_MODEL = "smollm2-135m-instruct"
DEVNET = "devnet"
"""The default network_id: a local or test network, where accounts open with free credit."""
DEVNET_INITIAL_CREDIT = 1000.0
"""Credits an account opens with on ``devnet`` when ``initial_credit`` is unset (the paper's value)."""


@dataclass(frozen=True, slots=True)
class ServerParams:
    """Networking, API and routing policy of one node."""

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
    offload_frequency: float = 0.8
    """Probability of offloading when no local model is idle."""
    queue_frequency: float = 0.2
    """Probability of queueing locally when busy and not offloading."""
    accept_frequency: float = 0.8
    """Probability of considering an offer from a peer (only while idle)."""
    newcomer_share: float = 0.05
    """Share of offloads that go to capable peers with no stake, so newcomers can earn."""
    offer_fanout: int = 3
    """Candidates offered a request, in PoS order, before falling back to local."""
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
    max_wait_s: float = 30.0
    """Seconds a request may wait for an executor before the user gets 503 (no capacity)."""
    retry_interval_s: float = 0.5
    """Seconds a waiting request sleeps before the policy decides again."""

    def policy_params(self) -> PolicyParams:
        """The routing policy's knobs, taken from these server params."""
        return PolicyParams(
            offload_frequency=self.offload_frequency,
            queue_frequency=self.queue_frequency,
            accept_frequency=self.accept_frequency,
            newcomer_share=self.newcomer_share,
            offer_fanout=self.offer_fanout,
            retry_interval_s=self.retry_interval_s,
            max_wait_s=self.max_wait_s,
        )


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
    """Credits a duel verdict moves from the loser's stake to the winner. Must match network-wide."""

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
        )


@dataclass(frozen=True, slots=True)
class GenParams:
    """Generation defaults applied when a request does not set them."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """One local model behind one backend."""

    model_path: str
    """The model's name in the network (and in requests to the backend)."""
    backend: str = "openai"
    """``openai`` (vLLM, SGLang, llama.cpp server, Ollama, any /v1 server), ``embedded`` or ``fake``."""
    base_url: str | None = None
    """Backend root URL; requests go to ``{base_url}/v1``, load is read from ``{base_url}/metrics``."""
    api_key: str | None = None
    """Bearer key for the backend, if it needs one."""
    gen_params: GenParams = field(default_factory=GenParams)
    dispatch_params: DispatchParams = field(default_factory=DispatchParams)
    price_per_1k: float = 1.0
    """Credits charged per 1000 output tokens when serving peers."""
    context_length: int = 8192
    """Advertised context length."""
    timeout: float = 120.0
    """Seconds to wait for the backend (connect + first token + idle between tokens)."""
    metrics: str = "auto"
    """``auto``: read ``/metrics`` if the backend has it, else count in-flight requests; ``off``."""
    backend_model: str | None = None
    """Model name sent to the backend, if different from ``model_path``."""


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """A whole node config file."""

    server_params: ServerParams = field(default_factory=ServerParams)
    ledger_params: LedgerParams = field(default_factory=LedgerParams)
    models: tuple[ModelConfig, ...] | None = None
    """None (key absent): the embedded default model. Empty: a gateway that serves nothing."""
    data_dir: str | None = None
    """Where the key and ledger live; default ``$P2PSERVE_HOME`` or ``~/.p2pserve``."""

    def effective_models(self) -> tuple[ModelConfig, ...]:
        if self.models is None:
            return (ModelConfig(model_path=EMBEDDED_MODEL, backend="embedded", context_length=2048),)
        return self.models


_RULES: dict[tuple[str, str], typing.Callable[[Any], str | None]] = {
    ("ServerParams", "offload_frequency"): lambda v: None if 0 <= v <= 1 else "must be between 0 and 1",
    ("ServerParams", "queue_frequency"): lambda v: None if 0 <= v <= 1 else "must be between 0 and 1",
    ("ServerParams", "accept_frequency"): lambda v: None if 0 <= v <= 1 else "must be between 0 and 1",
    ("ServerParams", "newcomer_share"): lambda v: None if 0 <= v <= 1 else "must be between 0 and 1",
    ("ServerParams", "offer_fanout"): lambda v: None if v >= 1 else "must be at least 1",
    ("ServerParams", "status_interval"): lambda v: None if v > 0 else "must be > 0",
    ("ServerParams", "peer_ttl"): lambda v: None if v > 0 else "must be > 0",
    ("ServerParams", "max_status_rate"): lambda v: None if v > 0 else "must be > 0",
    ("ServerParams", "request_timeout"): lambda v: None if v > 0 else "must be > 0",
    ("ServerParams", "target_connections"): lambda v: None if v >= 1 else "must be at least 1",
    ("ServerParams", "api"): lambda v: None if _is_host_port(v) else "must be HOST:PORT",
    ("ServerParams", "allowed_hosts"): lambda v: _bad_entries(v, split_host),
    ("ServerParams", "allowed_origins"): lambda v: _bad_entries(v, normalize_origin),
    ("ServerParams", "listen"): lambda v: None if v and all(a.startswith("/") for a in v) else "must be multiaddrs like /ip4/0.0.0.0/tcp/4001",
    ("ServerParams", "bootstrap"): lambda v: None if all("/p2p/" in a for a in v) else "each address must end in /p2p/<peer id>",
    ("LedgerParams", "network_id"): lambda v: None if v and len(v) <= 64 and "/" not in v else "must be 1-64 characters without '/'",
    ("LedgerParams", "initial_credit"): lambda v: None if v >= 0 else "must be >= 0",
    ("LedgerParams", "initial_staked"): lambda v: None if v >= 0 else "must be >= 0",
    ("LedgerParams", "unbonding_delay_s"): lambda v: None if v >= 0 else "must be >= 0",
    ("LedgerParams", "max_clock_skew_s"): lambda v: None if v >= 0 else "must be >= 0",
    ("LedgerParams", "max_initial_staked"): lambda v: None if v >= 0 else "must be >= 0",
    ("LedgerParams", "duel_penalty"): lambda v: None if v >= 0 else "must be >= 0",
    ("GenParams", "max_tokens"): lambda v: None if v is None or v > 0 else "must be > 0",
    ("DispatchParams", "target_token_usage"): lambda v: None if v == -1 or 0 <= v <= 1 else "must be between 0 and 1, or -1",
    ("DispatchParams", "max_concurrency"): lambda v: None if v >= 1 else "must be at least 1 (or null: the backend's own)",
    ("ServerParams", "max_wait_s"): lambda v: None if v >= 0 else "must be >= 0",
    ("ServerParams", "retry_interval_s"): lambda v: None if v > 0 else "must be > 0",
    ("ModelConfig", "backend"): lambda v: None if v in ("openai", "embedded", "fake") else "must be openai, embedded or fake",
    ("ModelConfig", "price_per_1k"): lambda v: None if v >= 0 else "must be >= 0",
    ("ModelConfig", "timeout"): lambda v: None if v > 0 else "must be > 0",
    ("ModelConfig", "metrics"): lambda v: None if v in ("auto", "off") else "must be auto or off",
    ("ModelConfig", "model_path"): lambda v: None if v else "must not be empty",
}


def split_host(value: str) -> tuple[str, int | None]:
    """``name``, ``name:port`` or ``[v6]:port`` as ``(lower-case name, port or None)``; an IPv6
    name keeps its brackets. Raises ValueError (with the reason) for anything else: a
    scheme, a path, an unbracketed IPv6 address, a bad port."""
    v = value.strip().lower()
    if v.startswith("["):
        end = v.find("]")
        if end < 0:
            raise ValueError("'[' without ']'")
        name, rest = v[: end + 1], v[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError("only ':port' may follow ']'")
        port_s = rest[1:] if rest else None
    else:
        name, sep, port_s = v.rpartition(":")
        if not sep:
            name, port_s = v, None
        elif ":" in name:
            raise ValueError("write an IPv6 address in brackets, e.g. [::1]:5778")
    if name in ("", "[]") or any(c in name for c in "/@?#\\ \t"):
        raise ValueError("not a host name or address")
    if port_s is None:
        return name, None
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError(f"bad port {port_s!r}")
    return name, int(port_s)


DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
"""The port an authority without one means, per URL scheme."""


def normalize_origin(value: str) -> str:
    """A web origin as ``scheme://name:port`` (lower case, default port spelt out for http(s)
    and ws(s)). Raises ValueError unless ``value`` is ``scheme://host[:port]`` (no path)."""
    scheme, sep, authority = value.strip().lower().rstrip("/").partition("://")
    if not sep or not scheme or not scheme.replace("-", "").replace("+", "").replace(".", "").isalnum():
        raise ValueError("expected scheme://host[:port]")
    name, port = split_host(authority)
    if port is None:
        port = DEFAULT_PORTS.get(scheme)
    return f"{scheme}://{name}" if port is None else f"{scheme}://{name}:{port}"


def _bad_entries(values: tuple[str, ...], check: typing.Callable[[str], object]) -> str | None:
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


class _Loader:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, reason: str) -> typing.NoReturn:
        raise ConfigError(f"{self.source}: {key or '<top level>'}: {reason}")

    def value(self, tp: Any, raw: Any, key: str) -> Any:
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if raw is None:
                return None
            return self.value(args[0], raw, key)
        if origin is tuple:
            if raw is None:
                raw = []
            item = typing.get_args(tp)[0]
            if isinstance(raw, str) and item is str:
                raw = [raw]
            if not isinstance(raw, list):
                self.fail(key, f"expected a list, got {type(raw).__name__}")
            return tuple(self.value(item, x, f"{key}[{i}]") for i, x in enumerate(raw))
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            return self.dataclass(tp, raw, key)
        if tp is bool:
            if not isinstance(raw, bool):
                self.fail(key, f"expected true or false, got {raw!r}")
            return raw
        if tp is int:
            if type(raw) is not int:
                self.fail(key, f"expected an integer, got {raw!r}")
            return raw
        if tp is float:
            if type(raw) not in (int, float):
                self.fail(key, f"expected a number, got {raw!r}")
            return float(raw)
        if tp is str:
            if not isinstance(raw, str):
                self.fail(key, f"expected a string, got {raw!r}")
            return raw
        raise TypeError(f"unsupported config type {tp!r}")  # pragma: no cover

    def dataclass(self, cls: type[T], raw: Any, key: str) -> T:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            self.fail(key, f"expected a mapping, got {type(raw).__name__}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        for k in raw:
            if k not in names:
                self.fail(f"{key}.{k}" if key else str(k), f"unknown key (known: {', '.join(sorted(names))})")
        kwargs = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name not in raw:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    self.fail(f"{key}.{f.name}" if key else f.name, "required key missing")
                continue
            sub = f"{key}.{f.name}" if key else f.name
            v = self.value(hints[f.name], raw[f.name], sub)
            rule = _RULES.get((cls.__name__, f.name))
            if rule is not None and v is not None:
                problem = rule(v)
                if problem:
                    self.fail(sub, f"{problem} (got {v!r})")
            kwargs[f.name] = v
        return cls(**kwargs)


def parse_config(raw: Any, source: str = "<config>") -> NodeConfig:
    """Build a NodeConfig from parsed YAML (a mapping, or None for all defaults)."""
    loader = _Loader(source)
    cfg = loader.dataclass(NodeConfig, raw, "")
    names = [m.model_path for m in cfg.models or ()]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        loader.fail("models", f"model_path listed twice: {', '.join(sorted(dupes))}")
    for i, m in enumerate(cfg.models or ()):
        if m.backend == "openai" and not m.base_url:
            loader.fail(f"models[{i}].base_url", "required for backend: openai")
    if cfg.server_params.peer_ttl < cfg.server_params.status_interval:
        loader.fail("server_params.peer_ttl", "must be at least status_interval")
    try:
        cfg.ledger_params.network_params().check_genesis()
    except MalformedMessage as exc:
        loader.fail("ledger_params", f"not a sound network genesis: {exc}")
    return cfg


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
