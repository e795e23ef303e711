"""
C{twistd trackport}: options and the service maker.
"""

from twisted.python import usage

from gateway.store import database_url


class Options(usage.Options):
    optFlags = [
        ["reuse-port", None, "Open the port with SO_REUSEPORT so several gateway processes share it."],
    ]
    optParameters = [
        ["port", "p", 8888, "TCP and UDP port the trackers report to.", int],
        ["interface", "i", "", "Address to listen on (default: all)."],
        ["db", "d", None, "Database URL (default: $TRACKPORT_DB, else sqlite:///trackport.db)."],
        ["idle-timeout", None, 3600.0,
         "Seconds of silence after which a TCP connection is dropped (0: never).", float],
        ["http", None, None, "[HOST:]PORT to serve the HTTP API, live feed, console and /metrics on "
                             "(host default 127.0.0.1)."],
        ["map-tiles", None, "https://tile.openstreetmap.org/{z}/{x}/{y}.png",
         "Map tile URL template for the console ('' for no tiles)."],
    ]

    def postOptions(self):
        if not 0 < self["port"] < 65536:
            raise usage.UsageError(f"--port must be 1-65535, not {self['port']}")
        if self["idle-timeout"] < 0:
            raise usage.UsageError("--idle-timeout must be 0 (never) or a number of seconds")
        self["db"] = database_url(self["db"])
        if self["http"] is not None:
            from gateway.http.service import http_address
            try:
                self["http"] = http_address(self["http"])
            except ValueError as e:
                raise usage.UsageError(f"--http: {e}") from None


def makeService(options):
    from gateway.service import GatewayService

    service = GatewayService(port=options["port"], interface=options["interface"], db=options["db"],
                             reuse_port=bool(options["reuse-port"]), idle_timeout=options["idle-timeout"],
                             http=options["http"], map_tiles=options["map-tiles"])
    service.prepare()
    return service
