"""Retrieval ranks and recalls, bootstrap intervals, caption metrics, the ridge baseline."""
