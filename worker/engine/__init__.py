"""Distributed operators the keyed ops compose: the exchange (partition, credit shuffle, collect), aggregates
as mergeable states, tokenizing, gathering a bounded answer and writing part files. No op imports another op."""
