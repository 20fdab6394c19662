"""The source registries: one obvious place to add a data source (like ``FUSIONS`` for fusion).

``SOURCES`` holds the named sources of ``download.sources`` (packaged demo data, hub data sets);
``FORMATS`` the local on-disk formats of ``download.local[].format``. A new source is one class
with ``candidates()`` and ``process()`` (see ``sources/base.py``) and one decorator line.
"""

from __future__ import annotations

from typing import Callable

SOURCES: dict[str, Callable] = {}
FORMATS: dict[str, Callable] = {}


def register_source(name: str, registry: dict[str, Callable] = SOURCES):
    def add(cls):
        if name in registry:
            raise ValueError(f"source {name!r} registered twice")
        registry[name] = cls
        return cls

    return add


def register_format(name: str):
    return register_source(name, FORMATS)


def build_sources(params) -> list:
    """One Source per ``download.sources`` name, then one per ``download.local`` entry, in that order."""
    import edge_glass.sources  # noqa: F401  (imports every source module, filling the registries)

    d = params.download
    return [SOURCES[name](name, d) for name in d.sources] + [FORMATS[e.format](e, d) for e in d.local]
