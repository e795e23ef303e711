# -*- test-case-name: tests.test_hostile_e2e -*-
"""
The log file of C{twistd trackport}, bounded.

twistd's own log file rotates every megabyte and keeps every rotated file: a
flood that gets logged fills the disk. When twistd logs to a file (daemon, or
C{--logfile}) and no other logger was chosen, trackport's options hand twistd
this one instead: the same text format, rotated at C{--log-size} bytes, at most
C{--log-files} old files kept. C{twistd -n} without C{--logfile} and
C{trackport serve} log to standard output, which whatever supervises the
process rotates.
"""

from __future__ import annotations

import signal

from twisted.logger import textFileLogObserver
from twisted.python.logfile import LogFile

#: Bytes after which the log file is rotated.
ROTATE_BYTES = 10_000_000
#: Rotated files kept (C{twistd.log.1} ... C{twistd.log.10}).
MAX_FILES = 10


#: The file L{observer} writes: (path, rotate bytes, files kept), set by
#: L{install}; twistd's C{--logger} takes a name, not an object.
_chosen = ("twistd.log", ROTATE_BYTES, MAX_FILES)


def observer():
    """
    The log observer factory twistd calls (named by C{--logger}).
    """
    path, size, files = _chosen
    log_file = LogFile.fromFullPath(path, rotateLength=size, maxRotatedFiles=files,
                                    defaultMode=0o640)
    if not signal.getsignal(signal.SIGUSR1):
        # As twistd does for its own log file: SIGUSR1 rotates it.
        def rotate(signum, frame):
            from twisted.internet import reactor

            reactor.callFromThread(log_file.rotate)

        signal.signal(signal.SIGUSR1, rotate)
    return textFileLogObserver(log_file)


def install(server_options, size: int = ROTATE_BYTES, files: int = MAX_FILES) -> None:
    """
    Make twistd (its parsed C{server_options}) log through L{observer} when
    it would log to a file of its own.
    """
    global _chosen
    if server_options is None or server_options.get("logger") or server_options.get("syslog"):
        return
    path = server_options.get("logfile") or ""
    if path == "-" or (not path and server_options.get("nodaemon")):
        return
    _chosen = (path or "twistd.log", size, files)
    server_options["logger"] = f"{__name__}.observer"
