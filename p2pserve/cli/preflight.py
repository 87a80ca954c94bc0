"""What ``p2pserve join`` checks before it starts a node, so that a mistake is one line.

* The libp2p addresses (:mod:`p2pserve.config_addrs`): a bad listen or bootstrap address is a
  usage error naming where it came from (``command line`` or the config file) and what to
  write instead; so is a bootstrap address that names this node itself.
* The sockets: the API's ``HOST:PORT`` and each fixed libp2p listen port are bound once and
  released, the way the node will bind them (``SO_REUSEADDR``, so a previous run's
  TIME_WAIT leftovers do not count). A port someone else holds is a run-time error naming
  the address and the option that changes it; an address this machine does not have or
  cannot resolve is a usage error.

Each check raises the ``typer.Exit`` of its one-line error (:func:`p2pserve.cli.common.fail`).
A port taken between this check and the node's own bind is still reported in one line, by
:mod:`p2pserve.cli.failures`.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence

from p2pserve.cli.common import EXIT_RUNTIME, EXIT_USAGE, fail
from p2pserve.config import NodeConfig
from p2pserve.config_addrs import check_announce, check_bootstrap, check_listen

__all__ = ["api_in_use_message", "check_addresses", "check_bootstrap_not_self", "check_sockets", "probe_bind"]


def api_in_use_message(api: str) -> str:
    return f"API address {api} is in use (another p2pserve node? pass --api HOST:PORT)"


def check_addresses(config: NodeConfig, *, listen_from: str, bootstrap_from: str, announce_from: str) -> None:
    """The libp2p addresses of ``config``; ``*_from`` names where each list came from
    (``command line`` or the config file)."""
    sp = config.server_params
    for source, values, check in ((listen_from, sp.listen, check_listen), (bootstrap_from, sp.bootstrap, check_bootstrap),
                                  (announce_from, sp.announce, check_announce)):
        for value in values:
            try:
                check(value)
            except ValueError as exc:  # "<listen|bootstrap|announce> address '<value>' ..."
                raise fail(f"{source}: {exc}", EXIT_USAGE) from None


def check_bootstrap_not_self(bootstrap: Sequence[str], peer_id: str, *, source: str) -> None:
    for addr in bootstrap:
        if addr.rstrip("/").endswith(f"/p2p/{peer_id}"):
            raise fail(f"{source}: bootstrap address {addr!r} is this node itself (the key in its data dir); "
                       "bootstrap from another node's `listening:` address", EXIT_USAGE)


def probe_bind(host: str, port: int) -> OSError | None:
    """Bind ``host:port`` once as a server would (``SO_REUSEADDR``) and let go; the error, if any."""
    host = host.removeprefix("[").removesuffix("]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as exc:
        return exc
    return None


def _explain_bind(exc: OSError, what: str, option: str, example: str, anywhere: str) -> tuple[str, int]:
    """The message and exit code for a failed bind of ``what`` (``option``: the option that
    sets it; ``example``: its value with another port; ``anywhere``: on every interface)."""
    if exc.errno == errno.EADDRINUSE:
        return f"{what} is in use (another p2pserve node? pass {option} {example})", EXIT_RUNTIME
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{what} is not an address of this machine (pass {option} {anywhere}, or one of its addresses)", EXIT_USAGE
    if exc.errno == errno.EACCES:
        return f"{what}: permission denied (ports below 1024 need root; pass {option} {example})", EXIT_RUNTIME
    if isinstance(exc, socket.gaierror):
        return f"{what}: cannot resolve the host name (pass {option} with an IP address, e.g. {anywhere})", EXIT_USAGE
    return f"{what}: cannot bind: {exc.strerror or exc}", EXIT_RUNTIME


def check_sockets(config: NodeConfig) -> None:
    """The API address and each fixed libp2p TCP port can be bound now."""
    sp = config.server_params
    host, _, port = sp.api.rpartition(":")
    exc = probe_bind(host, int(port))  # port 0 too: the host must be this machine's
    if exc is not None:
        if exc.errno == errno.EADDRINUSE:
            raise fail(api_in_use_message(sp.api), EXIT_RUNTIME)
        raise fail(*_explain_bind(exc, f"API address {sp.api}", "--api", "HOST:PORT", "0.0.0.0:PORT"))
    for addr in sp.listen:
        proto, ip, _, lport = addr.split("/")[1:5]  # checked: /ip4|ip6/<ip>/tcp/<port>
        exc = probe_bind(ip, int(lport))
        if exc is not None:
            anywhere = "/ip6/::/tcp/PORT" if proto == "ip6" else "/ip4/0.0.0.0/tcp/PORT"
            raise fail(*_explain_bind(exc, f"listen address {addr}", "--listen",
                                      f"/{proto}/{ip}/tcp/PORT, or port 0 for any free port", anywhere))
