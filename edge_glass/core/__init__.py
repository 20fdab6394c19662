"""Plumbing every part may use: errors and exit codes, io, hub, registry, prefetch, device.

``core`` imports nothing else of edge_glass; stage start-up (params, the hub switch, exit codes) is
``edge_glass/cli.py``, since it needs ``config``."""
