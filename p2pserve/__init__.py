"""p2pserve: a decentralized LLM serving network.

Nodes front OpenAI-compatible LLM backends, find each other over libp2p, offload requests
to peers chosen by stake, pay for offloaded work on a signed credit ledger, and check
answer quality with duel-and-judge. No component is central.
"""

__version__ = "0.1.0"
