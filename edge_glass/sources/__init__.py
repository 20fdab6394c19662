"""Download sources. Importing this package registers every source in ``registry.SOURCES`` / ``FORMATS``."""

from edge_glass.sources import asterisk, local, online, openmoji  # noqa: F401
from edge_glass.sources.registry import FORMATS, SOURCES, build_sources  # noqa: F401
