# -*- test-case-name: tests.test_fields -*-
"""
What command encoders share: reading the parameters of a C{custom} command.
"""

from __future__ import annotations

from typing import Mapping

from gateway.interfaces import EncodeError


def custom_command_bytes(params: Mapping[str, str]) -> bytes:
    """
    The bytes an operator gave for a C{custom} command: C{params["hex"]} read
    as hexadecimal (whitespace between bytes allowed) when it is there, else
    C{params["text"]} as ASCII. Either may give no bytes at all; an encoder
    that cannot send an empty command refuses it itself.

    @raise EncodeError: C{params} has neither C{hex} nor C{text}, the hex is
        not hexadecimal, or the text is not ASCII.
    """
    if "hex" in params:
        try:
            return bytes.fromhex(params["hex"])
        except ValueError as e:
            raise EncodeError(f"custom hex is not hex: {params['hex']!r}") from e
    if "text" not in params:
        raise EncodeError("custom needs a text or hex parameter")
    try:
        return params["text"].encode("ascii")
    except UnicodeEncodeError as e:
        raise EncodeError("custom text must be ASCII") from e
