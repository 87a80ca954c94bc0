"""Listen and dial addresses for the libp2p transport: parsing, checks, interface enumeration.

Invariants: a listen address is exactly ``/ip4|ip6/<ip>/tcp/<port>``; anything else, QUIC
included, is a ConfigError (py-libp2p 0.8.1 QUIC: see ``docs/libp2p-notes.md``). A fixed
port already taken is a TransportError before the host starts (libp2p's SO_REUSEPORT would
otherwise share it silently). A malformed peer id is a DialError. No multiaddr or libp2p
exception leaves this module.
"""

from __future__ import annotations

import ipaddress
import socket

import multiaddr
from libp2p.peer.id import ID

from p2pserve.errors import ConfigError, DialError, TransportError
from transports.libp2p._setup import log


def _interface_ipv4s() -> list[str]:
    """127.0.0.1 followed by this machine's non-loopback IPv4 addresses."""
    found: list[str] = []
    try:
        from multiaddr.utils import get_network_addrs

        found = list(get_network_addrs(4) or [])
    except Exception:  # interface enumeration is best effort
        log.debug("could not enumerate network interfaces", exc_info=True)
    out = ["127.0.0.1"]
    for ip in found:
        try:
            parsed = ipaddress.IPv4Address(ip)
        except ValueError:
            continue
        if not parsed.is_loopback and not parsed.is_unspecified and ip not in out:
            out.append(ip)
    return out


def _is_quic(addr: multiaddr.Multiaddr) -> bool:
    return any(p.name in ("quic", "quic-v1") for p in addr.protocols())


def _parse_listen_addr(text: str) -> multiaddr.Multiaddr:
    try:
        addr = multiaddr.Multiaddr(text)
    except Exception as exc:
        raise ConfigError(f"listen address {text!r} is not a multiaddr: {exc}") from exc
    if _is_quic(addr):
        raise ConfigError(
            f"listen address {text!r}: QUIC is not supported by this transport "
            "(py-libp2p 0.8.1; see docs/libp2p-notes.md); use /ip4/<ip>/tcp/<port>"
        )
    names = [p.name for p in addr.protocols()]
    if len(names) != 2 or names[0] not in ("ip4", "ip6") or names[1] != "tcp":
        raise ConfigError(f"listen address {text!r}: expected /ip4/<ip>/tcp/<port>")
    return addr


def _probe_port(addr: multiaddr.Multiaddr) -> None:
    """Fail early when a fixed TCP port is taken.

    libp2p's listener sets SO_REUSEPORT, so a second node binding the same port succeeds
    silently and the kernel splits inbound connections between the two. A plain bind
    with only SO_REUSEADDR (which tolerates TIME_WAIT leftovers of our own previous run)
    fails while anyone listens there.
    """
    family_name, ip, _, port_text = str(addr).split("/")[1:5]
    port = int(port_text)
    if port == 0:
        return
    family = socket.AF_INET6 if family_name == "ip6" else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((ip, port))
        except OSError as exc:
            raise TransportError(f"cannot listen on {addr}: {exc.strerror or exc}") from exc


def _parse_peer_id(peer_id: str) -> ID:
    try:
        return ID.from_base58(peer_id)
    except Exception as exc:
        raise DialError(f"invalid peer id {peer_id!r:.80}: {exc}") from exc



def _strip_p2p(text: str) -> str:
    index = text.find("/p2p/")
    return text if index < 0 else text[:index]
