"""Plumbing every part may use: errors and exit codes, io, hub, registry, prefetch, device, stage start-up."""
