"""One way to make a registry decorator, for every extension point (sources, formats, encoders, decoders)."""

from __future__ import annotations

from typing import Callable, Hashable


def registrar(registry: dict, kind: str) -> Callable[[Hashable], Callable]:
    """``register = registrar(REGISTRY, "decoder")``; then ``@register(key)`` adds the decorated class or
    function under ``key`` and refuses a second entry for the same key."""

    def register(key: Hashable) -> Callable:
        def add(obj):
            if key in registry:
                raise ValueError(f"{kind} {key!r} registered twice")
            registry[key] = obj
            return obj

        return add

    return register
