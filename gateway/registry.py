# -*- test-case-name: tests.test_registry -*-
"""
Finding decoder plugins.
"""

from __future__ import annotations

from typing import Dict, Iterable

from twisted.logger import Logger
from twisted.plugin import getPlugins

from gateway.interfaces import ICommandEncoder, IDecoder

log = Logger()


class DuplicateProtocol(Exception):
    """
    Two plugins claim the same protocol name.
    """


def index(found: Iterable) -> Dict[str, object]:
    """
    Map protocol names to decoders, refusing two decoders with one name.
    """
    by_name: Dict[str, object] = {}
    for decoder in found:
        name = decoder.name
        if name in by_name and by_name[name] is not decoder:
            raise DuplicateProtocol(f"two decoder plugins are named {name!r}")
        by_name[name] = decoder
    return dict(sorted(by_name.items()))


def discover() -> Dict[str, object]:
    """
    Every L{IDecoder} plugin in the L{decoders} package and in packages that
    extend it from elsewhere on C{sys.path}.
    """
    import decoders

    return index(getPlugins(IDecoder, decoders))


def encoder_for(decoder) -> object:
    """
    The command encoder of a protocol: the decoder itself when it provides
    L{ICommandEncoder}, else L{None}.
    """
    return decoder if ICommandEncoder.providedBy(decoder) else None
