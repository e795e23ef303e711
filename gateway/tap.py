"""
C{twistd trackport}: options and the service maker.
"""

from twisted.python import usage

from gateway.store import database_url


class Options(usage.Options):
    optFlags = [
        ["reuse-port", None, "Open the port with SO_REUSEPORT so several gateway processes share it."],
        ["proxy-protocol", None, "TCP connections come from a balancer that opens each with a PROXY "
                                 "header (v1 or v2): the device's address is taken from it."],
    ]
    optParameters = [
        ["port", "p", 8888, "TCP and UDP port the trackers report to.", int],
        ["interface", "i", "", "Address to listen on (default: all)."],
        ["db", "d", None, "Database URL (default: $TRACKPORT_DB, else sqlite:///trackport.db)."],
        ["workers", None, 1, "Gateway processes sharing the port (SO_REUSEPORT) under one parent that "
                             "restarts any that dies.", int],
        ["idle-timeout", None, 3600.0,
         "Seconds of silence after which a TCP connection is dropped (0: never).", float],
    ]

    def parseOptions(self, options=None):
        # The workers of --workers get the same options as their parent.
        self.argv = list(options if options is not None else [])
        super().parseOptions(options)

    def postOptions(self):
        if not 0 < self["port"] < 65536:
            raise usage.UsageError(f"--port must be 1-65535, not {self['port']}")
        if not 1 <= self["workers"] <= 256:
            raise usage.UsageError(f"--workers must be 1-256, not {self['workers']}")
        if self["idle-timeout"] < 0:
            raise usage.UsageError("--idle-timeout must be 0 (never) or a number of seconds")
        self["db"] = database_url(self["db"])


def makeService(options):
    from gateway.service import GatewayService

    if options["workers"] > 1:
        return workers_service(options)

    service = GatewayService(port=options["port"], interface=options["interface"], db=options["db"],
                             reuse_port=bool(options["reuse-port"]), idle_timeout=options["idle-timeout"],
                             proxy_protocol=bool(options["proxy-protocol"]))
    service.prepare()
    return service


def workers_service(options):
    """
    The parent of C{--workers}: the schema is brought up to date here, once,
    before any worker starts.
    """
    from twisted.internet import reactor

    from gateway.store import engine_for, migrate
    from gateway.workers import Workers

    engine = engine_for(options["db"])
    migrate(engine)
    summary = f"{options['interface'] or '*'}:{options['port']} (tcp+udp)"
    engine.dispose()
    return Workers(reactor, options["workers"], options.argv, summary)
