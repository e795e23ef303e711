"""
The PostgreSQL driver under the name C{psycopg2}, whichever interpreter runs.

On CPython that is psycopg2 itself. psycopg2's C extension does not build on
PyPy, where trackport installs psycopg2cffi instead, a reimplementation with
the same API on cffi; so that SQLAlchemy's C{postgresql+psycopg2} dialect,
L{gateway.dbguard} and L{gateway.store} need not know which one they use, it is
registered here as C{psycopg2}. Import this module before anything imports
C{psycopg2}: L{gateway.dbguard} does, first thing.
"""

import sys
from importlib import import_module
from importlib.util import find_spec

#: The submodules trackport and SQLAlchemy import; registered as the same
#: module objects, so none of them runs twice under two names.
_SUBMODULES = ("extensions", "extras", "errorcodes", "tz")


def register() -> str:
    """
    Make C{import psycopg2} work, with psycopg2cffi when psycopg2 is missing.

    @return: the driver's distribution name (C{"psycopg2"}, C{"psycopg2cffi"}),
        or C{""} when neither is installed (SQLite only).
    """
    current = sys.modules.get("psycopg2")
    if current is not None:
        return current.__name__
    if find_spec("psycopg2") is not None:
        return "psycopg2"
    try:
        import psycopg2cffi
    except ImportError:
        return ""
    sys.modules["psycopg2"] = psycopg2cffi
    for name in _SUBMODULES:
        sys.modules["psycopg2." + name] = import_module("psycopg2cffi." + name)
    return "psycopg2cffi"


#: Which driver C{import psycopg2} gives.
driver = register()
