"""``python -m p2pserve`` is the ``p2pserve`` command."""

from p2pserve.cli import main

main()
