"""Who is in the network: the pure peer table (:mod:`.table`) and the status gossip service
that keeps it (:mod:`.gossip`)."""
