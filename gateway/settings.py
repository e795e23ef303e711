# -*- test-case-name: tests.test_settings -*-
"""
Per-device settings checked by the protocol that owns them.

A setting is C{<protocol>.<key>=<value>}; its value reaches the protocol's
decoder and encoder, and through the encoder the bytes sent to a device. A
value that could hold a line end or a separator could smuggle a second command
into one (C{atrack.password=x\\r\\nAT$REST=1,0}). So a decoder declares the
keys it reads in C{settings_spec} (C{{"<protocol>.<key>": validator}}), and
C{trackport configure} and C{trackport decode --set} accept only those keys,
with values the validator accepts (it returns the value normalised, or raises
L{ValueError} with the reason).

The validator makers below are what decoders build their specs from.
"""

from __future__ import annotations

import re
from typing import Callable, Dict, Mapping, Optional

Validator = Callable[[str], str]


def choice(*values: str) -> Validator:
    def check(text: str) -> str:
        if text not in values:
            raise ValueError(f"one of {', '.join(values)}, not {text!r}")
        return text
    return check


def integer(low: int, high: int) -> Validator:
    def check(text: str) -> str:
        if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
            raise ValueError(f"a whole number from {low} to {high}, not {text!r}")
        return str(int(text))
    return check


def pattern(regex: str, what: str) -> Validator:
    compiled = re.compile(regex)

    def check(text: str) -> str:
        if not compiled.fullmatch(text):
            raise ValueError(f"{what}, not {text!r}")
        return text
    return check


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def flag(true: str = "true", false: str = "false") -> Validator:
    """
    A yes/no setting, normalised to the two words its decoder compares with.
    """
    def check(text: str) -> str:
        if text.lower() in _TRUE:
            return true
        if text.lower() in _FALSE:
            return false
        raise ValueError(f"true or false, not {text!r}")
    return check


#: What a setting of a plugin that declares no spec may hold: printable ASCII
#: without the separators protocols use between commands.
_PLAIN = pattern(r"[!-~ ]{1,256}", "printable ASCII of at most 256 characters")


def specs(decoders: Mapping[str, object]) -> Dict[str, Optional[Dict[str, Validator]]]:
    """
    Each protocol's declared settings, or L{None} when its plugin declares none.
    """
    return {name: getattr(decoder, "settings_spec", None) for name, decoder in decoders.items()}


def validate(decoders: Mapping[str, object], settings: Mapping[str, Optional[str]],
             protocol: Optional[str] = None) -> Dict[str, Optional[str]]:
    """
    C{settings} checked and normalised; a value of L{None} or C{""} (remove the
    setting) is kept as L{None}.

    @param protocol: the device's protocol, when known: settings of another
        protocol would never be read, and are refused.
    @raise ValueError: naming the first bad key or value.
    """
    declared = specs(decoders)
    out: Dict[str, Optional[str]] = {}
    for key, value in settings.items():
        owner, dot, name = key.partition(".")
        if not dot or not name or owner not in declared:
            raise ValueError(f"unknown setting {key!r}: settings are <protocol>.<key>, protocols: "
                             f"{', '.join(sorted(declared))}")
        if protocol is not None and owner != protocol:
            raise ValueError(f"setting {key!r} is for {owner}, but the device speaks {protocol}")
        spec = declared[owner]
        if spec is not None and key not in spec:
            raise ValueError(f"unknown setting {key!r}; {owner} settings: {', '.join(sorted(spec)) or 'none'}")
        if value is None or value == "":
            out[key] = None
            continue
        try:
            out[key] = (spec[key] if spec is not None else _PLAIN)(value)
        except ValueError as e:
            raise ValueError(f"bad value for {key}: {e}") from None
    return out
