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


def printable(text, limit: int = 200) -> str:
    """
    C{text} from a device made safe for a log line or a terminal: anything but
    printable ASCII is written as a Python-style escape, and it is cut at
    C{limit} characters.
    """
    if not isinstance(text, str):
        text = str(text)
    out = text.encode("ascii", "backslashreplace").decode("ascii")
    out = "".join(c if " " <= c <= "~" else f"\\x{ord(c):02x}" for c in out)
    return out if len(out) <= limit else out[:limit] + "..."
