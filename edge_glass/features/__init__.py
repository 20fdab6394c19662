"""Cached encoder features: the shard store, the training dataset view, keyed randomness."""
