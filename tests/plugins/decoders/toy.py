"""
The toy protocol of L{tests.toy}, exposed as an out-of-tree decoder plugin for
end-to-end tests (put C{tests/plugins} on C{PYTHONPATH}).
"""

from tests.toy import toy

__all__ = ["toy"]
