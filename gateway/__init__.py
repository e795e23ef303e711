"""
trackport's core: sessions, detection, storage and commands for GPS trackers.

The core names no vendor. Decoders live in the L{decoders} package and are found
as L{twisted.plugin} plugins providing L{gateway.interfaces.IDecoder}.
"""

__version__ = "0.1.0"
