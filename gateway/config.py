# -*- test-case-name: tests.test_cli -*-
"""
The configuration file both C{twistd trackport} / C{trackport serve} and the
operator commands read, so they agree on the database:

    [trackport]
    db = postgresql://trackport@localhost/trackport

It is C{--config FILE}, else C{$TRACKPORT_CONFIG}, else C{/etc/trackport.conf}
when that exists.
"""

from __future__ import annotations

import configparser
import os
from typing import Optional

DEFAULT_PATH = "/etc/trackport.conf"


class ConfigError(Exception):
    """
    The configuration file named cannot be read.
    """


def config_path(given: Optional[str] = None) -> Optional[str]:
    path = given or os.environ.get("TRACKPORT_CONFIG")
    if path:
        return path
    return DEFAULT_PATH if os.path.exists(DEFAULT_PATH) else None


def read(given: Optional[str] = None) -> dict:
    """
    The C{[trackport]} section of the configuration file, or C{{}} when there is
    none.
    """
    path = config_path(given)
    if path is None:
        return {}
    parser = configparser.ConfigParser()
    try:
        with open(path, encoding="utf-8") as fh:
            parser.read_file(fh)
    except (OSError, configparser.Error, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the configuration file {path}: {e}") from None
    return dict(parser["trackport"]) if parser.has_section("trackport") else {}
