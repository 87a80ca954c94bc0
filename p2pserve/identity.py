"""Node identity: one Ed25519 key per node, persisted as a 32-byte seed with mode 0600.

The same seed gives the pynacl signing key, the libp2p host key and the peer ID, which is
also the node's ledger account. A key file that other users can read is refused: such a key
must be considered leaked.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from p2pserve.crypto import SEED_SIZE, Signer
from p2pserve.errors import IdentityError

__all__ = ["KEY_FILE_NAME", "default_data_dir", "load_identity", "load_or_create_identity", "new_identity"]

KEY_FILE_NAME = "identity.key"


def default_data_dir() -> Path:
    """``$P2PSERVE_HOME`` if set, else ``~/.p2pserve``."""
    env = os.environ.get("P2PSERVE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".p2pserve"


def load_identity(path: Path) -> Signer:
    """Load the key at ``path``. Raises IdentityError if missing, malformed or not private."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise IdentityError(f"{path}: no key file (create one with `p2pserve keys new`)") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(
            f"{path}: key file is accessible by other users (mode {stat.S_IMODE(st.st_mode):o}); "
            f"treat the key as leaked, or if you are sure it is not, run `chmod 600 {path}`"
        )
    seed = path.read_bytes()
    if len(seed) != SEED_SIZE:
        raise IdentityError(f"{path}: a key file holds a {SEED_SIZE}-byte seed, this one has {len(seed)} bytes")
    return Signer(seed)


def new_identity(path: Path, *, overwrite: bool = False) -> Signer:
    """Create a fresh key at ``path`` (mode 0600, created atomically). Refuses to overwrite unless told."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise IdentityError(f"{path}: a key file already exists (refusing to overwrite it)")
    seed = os.urandom(SEED_SIZE)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, seed)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return Signer(seed)


def load_or_create_identity(data_dir: Path) -> Signer:
    """The node key in ``data_dir``, created on first use."""
    path = data_dir / KEY_FILE_NAME
    if not path.exists():
        return new_identity(path)
    return load_identity(path)
