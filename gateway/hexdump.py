"""
Bytes for log lines: hex, truncated, so a bad frame can be identified without
flooding the log.
"""

LIMIT = 128


def hexdump(data: bytes, limit: int = LIMIT) -> str:
    """
    C{data} as hex; at most C{limit} bytes shown, with the full length noted when
    cut.
    """
    if len(data) <= limit:
        return data.hex()
    return f"{data[:limit].hex()}... ({len(data)} bytes)"
