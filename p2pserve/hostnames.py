"""Host and web-origin syntax, shared by the config checks and the API's Host/Origin guard
(:mod:`p2pserve.api.app`). Pure."""

from __future__ import annotations

__all__ = ["DEFAULT_PORTS", "normalize_origin", "split_host"]


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
