"""The source registries: one obvious place to add a data source (like ``FUSIONS`` for fusion).

``SOURCES`` holds the named sources of ``download.sources`` (packaged demo data, hub data sets);
``FORMATS`` the local on-disk formats of ``download.local[].format``. A new source is one class
with ``candidates()`` and ``process()`` (see ``data/sources/base.py``) and one decorator line.
"""

from __future__ import annotations

from typing import Callable

from edge_glass.core.registry import registrar

SOURCES: dict[str, Callable] = {}
FORMATS: dict[str, Callable] = {}


register_source = registrar(SOURCES, "source")
register_format = registrar(FORMATS, "format")


def build_sources(params) -> list:
    """One Source per ``download.sources`` name, then one per ``download.local`` entry, in that order."""
    import edge_glass.data.sources  # noqa: F401  (imports every source module, filling the registries)

    d = params.download
    return [SOURCES[name](name, d) for name in d.sources] + [FORMATS[e.format](e, d) for e in d.local]
