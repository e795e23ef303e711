"""
Vendor protocol plugins.

Each module here holds an object providing L{gateway.interfaces.IDecoder} and
L{twisted.plugin.IPlugin}. A vendor plugin shipped as its own distribution adds
modules to this package from its own C{decoders/} directory: C{__path__} is
extended with every C{decoders} directory on C{sys.path}, as Twisted does for
C{twisted.plugins}.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__ = []
