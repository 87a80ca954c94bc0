"""The shapes of the libp2p addresses in a node config, checked before a node starts (pure).

:class:`~p2pserve.config.ServerParams` checks only what every transport shares (a listen
address is a multiaddr, a bootstrap address names a peer with ``/p2p/``): the memory
transport of the tests and the simulator uses ``/memory/<n>`` addresses. What the libp2p
transport of ``p2pserve join`` takes is narrower, and a mistake there would otherwise leave a
node running alone (a bootstrap address it cannot dial is only logged) or fail deep inside
the host. The rules:

* listen: exactly ``/ip4/<ip>/tcp/<port>`` or ``/ip6/<ip>/tcp/<port>`` (the transport's rule);
* bootstrap: ``/ip4|ip6|dns|dns4|dns6/<host>/tcp/<port>/p2p/<peer id>``, the peer ID an
  Ed25519 one (``12D3KooW...``: every p2pserve node's identity is an Ed25519 key);
* announce: ``/ip4|ip6|dns|dns4|dns6/<host>/tcp/<port>``, optionally ending in ``/p2p/<peer id>``.

Each check raises ``ValueError`` whose message names the address, what is wrong and what to
write instead (``p2pserve join`` prefixes where the address came from). :func:`suggest` (also
used by ``ServerParams``) says what to write instead, turning the ``HOST:PORT`` people type
into the multiaddr they meant (:func:`as_multiaddr`).
"""

from __future__ import annotations

import ipaddress

from p2pserve.crypto import public_key_from_peer_id
from p2pserve.errors import MalformedMessage

__all__ = ["as_multiaddr", "check_announce", "check_bootstrap", "check_listen", "suggest"]

_HOST_PROTOCOLS = ("ip4", "ip6", "dns", "dns4", "dns6")
_LISTEN_EXAMPLE = "/ip4/0.0.0.0/tcp/4001"
_FROM_BANNER = "the `listening:` line the node you join printed"


def as_multiaddr(text: str) -> str | None:
    """``HOST:PORT`` (``1.2.3.4:5``, ``[::1]:5``, ``name:5``) as ``/ip4|ip6|dns/HOST/tcp/PORT``;
    None when ``text`` is not of that shape."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535 or "/" in host:
        return None
    host = host.removeprefix("[").removesuffix("]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if ":" in host or not host.replace("-", "").replace(".", "").isalnum():
            return None
        return f"/dns/{host}/tcp/{port}"
    return f"/ip{ip.version}/{ip}/tcp/{port}"


def suggest(text: str, *, peer: bool) -> str:
    """What to write instead of a bad address ``text``, as a phrase for an error message: its
    multiaddr when ``text`` is HOST:PORT (plus ``/p2p/<peer id>`` for a ``peer`` address)."""
    maddr = as_multiaddr(text)
    for proto in _HOST_PROTOCOLS:  # "/ip4/1.2.3.4:5": a HOST:PORT behind the protocol
        rest = text.removeprefix(f"/{proto}/")
        if maddr is None and rest != text and "/" not in rest:
            maddr = as_multiaddr(rest)
    if peer:
        if maddr:
            return f"write {maddr}/p2p/<peer id>: {_FROM_BANNER}"
        if text.startswith("/") and "/p2p/" not in text:
            return f"add /p2p/<peer id>: {_FROM_BANNER}"
        return f"copy {_FROM_BANNER}"
    return f"write {maddr}" if maddr else f"e.g. {_LISTEN_EXAMPLE}"


def _port(value: str) -> bool:
    return value.isdigit() and int(value) <= 65535


def _host_tcp(parts: list[str], text: str, what: str, *, peer: bool) -> None:
    """``parts`` (the multiaddr split on ``/``, without the empty head) start with a host and
    ``tcp/<port>``; else ValueError naming ``what``."""
    if len(parts) >= 4 and parts[0] in _HOST_PROTOCOLS and parts[2] == "tcp" and not _port(parts[3]):
        raise ValueError(f"{what} {text!r}: {parts[3]!r} is not a TCP port (0-65535)")
    if len(parts) < 4 or parts[0] not in _HOST_PROTOCOLS or parts[2] != "tcp":
        raise ValueError(f"{what} {text!r} is not /ip4/<ip>/tcp/<port> (or ip6, dns): {suggest(text, peer=peer)}")
    proto, host = parts[0], parts[1]
    if proto in ("ip4", "ip6"):
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{what} {text!r}: {host!r} is not an IP{proto[-1]} address") from None
        if f"ip{ip.version}" != proto:
            raise ValueError(f"{what} {text!r}: {host!r} is not an IP{proto[-1]} address (use /ip{ip.version}/)")
    elif not host:
        raise ValueError(f"{what} {text!r} has no host name")


def _peer_id(text: str, peer: str, what: str) -> None:
    try:
        public_key_from_peer_id(peer)
    except MalformedMessage:
        raise ValueError(
            f"{what} {text!r}: {peer[:60]!r} is not a p2pserve peer ID (those start with 12D3KooW; copy {_FROM_BANNER})"
        ) from None


def check_listen(text: str) -> None:
    """A listen address the libp2p transport binds: ``/ip4|ip6/<ip>/tcp/<port>``."""
    parts = text.split("/")[1:] if text.startswith("/") else []
    if len(parts) != 4 or parts[0] not in ("ip4", "ip6"):
        raise ValueError(f"listen address {text!r} is not /ip4/<ip>/tcp/<port> (or /ip6/...): {suggest(text, peer=False)}")
    _host_tcp(parts, text, "listen address", peer=False)


def check_bootstrap(text: str) -> None:
    """A bootstrap address: a host, a TCP port and ``/p2p/<Ed25519 peer id>``."""
    if not text.startswith("/"):
        raise ValueError(f"bootstrap address {text!r} is not a multiaddr: {suggest(text, peer=True)}")
    parts = text.split("/")[1:]
    _host_tcp(parts, text, "bootstrap address", peer=True)
    if len(parts) != 6 or parts[4] != "p2p" or not parts[5]:
        raise ValueError(f"bootstrap address {text!r} does not end in /p2p/<peer id>: {suggest(text, peer=True)}")
    _peer_id(text, parts[5], "bootstrap address")


def check_announce(text: str) -> None:
    """An address to advertise: a host and a TCP port, optionally ``/p2p/<peer id>``."""
    parts = text.split("/")[1:] if text.startswith("/") else []
    _host_tcp(parts, text, "announce address", peer=False)
    if len(parts) == 4:
        return
    if len(parts) != 6 or parts[4] != "p2p":
        raise ValueError(f"announce address {text!r} is not /ip4/<ip>/tcp/<port>[/p2p/<peer id>]")
    _peer_id(text, parts[5], "announce address")
