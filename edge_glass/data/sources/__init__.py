"""Download sources. Importing this package registers every source in ``registry.SOURCES`` / ``FORMATS``."""

from edge_glass.data.sources import asterisk, local, online, openmoji  # noqa: F401
from edge_glass.data.sources.registry import (  # noqa: F401
    FORMATS,
    SOURCES,
    build_sources,
)
