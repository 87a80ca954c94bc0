"""``python -m p2pserve.backends.fake``: serve a fake backend until killed (see :func:`.adapters.main`)."""

from p2pserve.backends.fake.adapters import main

main()
