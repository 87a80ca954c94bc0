"""Why a node stopped, in one line: exception groups unwrapped, known errors explained.

A node runs in nurseries, and trio raises what a nursery's tasks raised wrapped in an
``ExceptionGroup`` (one level per nursery), so ``except P2PServeError`` around ``trio.run``
never matches, and the real message sits at the bottom of a 60-100 line traceback. Here:

* :func:`leaf_exceptions` flattens a group;
* :func:`root_cause` picks the one exception to report: the first :class:`P2PServeError`
  among the leaves, else the first ``OSError``, provided that every leaf is of those kinds
  (or a ``trio.Cancelled``, the echo of a sibling's failure). Any other leaf is a bug: the
  caller lets the whole group propagate, traceback and all;
* :func:`explain` turns it into the message and the exit code: 2 for a ConfigError (the
  command or config must change), 1 for the rest; an ``EADDRINUSE`` raised by the HTTP
  server's bind names the API address.
"""

from __future__ import annotations

import errno
import traceback

import trio

from p2pserve.cli.common import EXIT_RUNTIME, EXIT_USAGE
from p2pserve.cli.preflight import api_in_use_message
from p2pserve.errors import ConfigError, P2PServeError

__all__ = ["explain", "leaf_exceptions", "root_cause"]


def leaf_exceptions(exc: BaseException) -> list[BaseException]:
    """``exc`` itself, or every non-group exception inside it, depth first, in order."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in leaf_exceptions(sub)]
    return [exc]


def root_cause(exc: BaseException) -> P2PServeError | OSError | None:
    """The one exception to report for ``exc`` (see the module doc); None when it holds
    anything but p2pserve errors, OS errors and cancellations."""
    leaves = [e for e in leaf_exceptions(exc) if not isinstance(e, trio.Cancelled)]
    if not leaves or not all(isinstance(e, (P2PServeError, OSError)) for e in leaves):
        return None
    for e in leaves:
        if isinstance(e, P2PServeError):
            return e
    first = leaves[0]
    assert isinstance(first, OSError)
    return first


def _from_http_server(exc: BaseException) -> bool:
    return any(frame.filename.replace("\\", "/").endswith("/p2pserve/api/server.py")
               for frame in traceback.extract_tb(exc.__traceback__))


def explain(exc: P2PServeError | OSError, *, api: str) -> tuple[str, int]:
    """The one-line message and exit code for a root cause (``api``: the node's HOST:PORT)."""
    if isinstance(exc, ConfigError):
        return str(exc), EXIT_USAGE
    if isinstance(exc, P2PServeError):
        return str(exc), EXIT_RUNTIME
    if exc.errno == errno.EADDRINUSE and _from_http_server(exc):
        return api_in_use_message(api), EXIT_RUNTIME
    where = f" {exc.filename}" if exc.filename else ""
    return f"cannot start the node:{where} {exc.strerror or exc}", EXIT_RUNTIME
