"""p2pserve: a decentralized LLM serving network.

Nodes front OpenAI-compatible LLM backends, find each other over libp2p, offload requests
to peers chosen by stake, pay for offloaded work on a signed credit ledger, and check
answer quality with duel-and-judge. No component is central.

The names below are the library's entry points; they load on first use (PEP 562), so that
``import p2pserve.wire`` and the other pure layers never pull in trio, libp2p or sqlite3::

    from p2pserve import Node, Signer, load_config, run_libp2p_node
"""

import importlib as _importlib
import typing as _typing

__version__ = "0.1.0"

__all__ = ["Node", "NodeConfig", "P2PServeError", "Signer", "load_config", "run_libp2p_node"]

_HOMES = {
    "Node": "p2pserve.node",
    "run_libp2p_node": "p2pserve.node",
    "NodeConfig": "p2pserve.config",
    "load_config": "p2pserve.config",
    "Signer": "p2pserve.crypto",
    "P2PServeError": "p2pserve.errors",
}

if _typing.TYPE_CHECKING:
    from p2pserve.config import NodeConfig, load_config
    from p2pserve.crypto import Signer
    from p2pserve.errors import P2PServeError
    from p2pserve.node import Node, run_libp2p_node


def __getattr__(name: str) -> _typing.Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'p2pserve' has no attribute {name!r}")
    return getattr(_importlib.import_module(home), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
