"""``p2pserve keys new|show``: the node's Ed25519 identity."""

from __future__ import annotations

from pathlib import Path

import typer

from p2pserve.cli.common import fail, resolve_data_dir, usage_error
from p2pserve.errors import IdentityError
from p2pserve.identity import KEY_FILE_NAME, load_identity, new_identity

__all__ = ["app", "new", "show"]

app = typer.Typer(help="Create or show the node key (its peer ID is the node's identity and ledger account).", no_args_is_help=True,
                  rich_markup_mode=None)

DataDir = typer.Option(None, "--data-dir", envvar="P2PSERVE_HOME", metavar="DIR", help="Node data directory [default: ~/.p2pserve].")


@app.command("new")
def new(
    data_dir: Path | None = DataDir,
    force: bool = typer.Option(False, "--force", help="Replace an existing key (its peer ID and credits are lost)."),
) -> None:
    """Create a new key and print its peer ID."""
    path = resolve_data_dir(data_dir) / KEY_FILE_NAME
    if path.exists() and not force:
        raise usage_error(f"{path}: a key file already exists (`p2pserve keys show` prints its peer ID; --force "
                          "replaces it, and its peer ID and credits are lost)")
    try:
        signer = new_identity(path, overwrite=force)
    except IdentityError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot write {path}: {exc.strerror or exc} (pass --data-dir DIR)") from None
    typer.echo(f"peer_id: {signer.peer_id}")
    typer.echo(f"key_file: {path}")


@app.command("show")
def show(data_dir: Path | None = DataDir) -> None:
    """Print the peer ID of the existing key."""
    path = resolve_data_dir(data_dir) / KEY_FILE_NAME
    try:
        signer = load_identity(path)
    except IdentityError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"peer_id: {signer.peer_id}")
    typer.echo(f"key_file: {path}")
