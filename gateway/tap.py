"""
C{twistd trackport}: options and the service maker.
"""

from twisted.python import usage

from gateway.config import ConfigError
from gateway.store import BadDatabaseURL, check_url, database_url


class Options(usage.Options):
    optFlags = [
        ["reuse-port", None, "Open the port with SO_REUSEPORT so several gateway processes share it."],
        ["proxy-protocol", None, "TCP connections come from a balancer that opens each with a PROXY "
                                 "header (v1 or v2): the device's address is taken from it."],
    ]
    optParameters = [
        ["port", "p", 8888, "TCP and UDP port the trackers report to.", int],
        ["interface", "i", "", "Address to listen on (default: all)."],
        ["db", "d", None, "Database URL (default: $TRACKPORT_DB, else db in the configuration file,"
                          " else sqlite:///trackport.db)."],
        ["config", None, None, "Configuration file (default: $TRACKPORT_CONFIG, else /etc/trackport.conf)."],
        ["workers", None, 1, "Gateway processes sharing the port (SO_REUSEPORT) under one parent that "
                             "restarts any that dies.", int],
        ["idle-timeout", None, 3600.0,
         "Seconds of silence after which a TCP connection is dropped (0: never).", float],
        ["log-size", None, 10_000_000, "Bytes after which twistd's log file is rotated.", int],
        ["log-files", None, 10, "Rotated log files kept.", int],
        ["devices", None, "any",
         "any: store every device; known: only devices added with `trackport devices add`."],
        ["http", None, None, "[HOST:]PORT to serve the HTTP API, live feed, console and /metrics on "
                             "(host default 127.0.0.1)."],
        ["map-tiles", None, "https://tile.openstreetmap.org/{z}/{x}/{y}.png",
         "Map tile URL template for the console ('' for no tiles)."],
        ["claim-window", None, 120.0,
         "Seconds a frame naming a device counts as a claim on it (identity conflicts).", float],
        ["udp-peers", None, 100_000,
         "UDP peer addresses remembered at most (about 1 KB each); a new one beyond that is not acked "
         "while every remembered one still counts.", int],
    ]

    def __init__(self):
        super().__init__()
        self["forward"] = []

    def opt_forward(self, value):
        """
        NAME=URL: forward every stored record to a webhook (http[s]://...),
        MQTT broker (mqtt://host:port/topic) or AMQP exchange
        (amqp://user:pass@host:port/exchange?routing_key=...); repeatable.
        """
        self["forward"].append(value)

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
        if self["devices"] not in ("any", "known"):
            raise usage.UsageError(f"--devices must be any or known, not {self['devices']!r}")
        if not self["claim-window"] > 0:
            raise usage.UsageError("--claim-window must be a positive number of seconds")
        if self["udp-peers"] < 1:
            raise usage.UsageError(f"--udp-peers must be at least 1, not {self['udp-peers']}")
        try:
            self["db"] = database_url(self["db"], self["config"])
            check_url(self["db"])
        except (BadDatabaseURL, ConfigError) as e:
            raise usage.UsageError(str(e)) from None
        if self["http"] is not None:
            from gateway.http.service import http_address
            try:
                self["http"] = http_address(self["http"])
            except ValueError as e:
                raise usage.UsageError(f"--http: {e}") from None
        if self["log-size"] < 1 or self["log-files"] < 1:
            raise usage.UsageError("--log-size and --log-files must be at least 1")
        from gateway.logfile import install

        install(getattr(self, "parent", None), self["log-size"], self["log-files"])
        from gateway.forward.sinks import parse_forwards

        try:
            self["forwards"] = parse_forwards(self["forward"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None


def gateway_service(options):
    """
    The gateway these (checked) options describe; C{twistd trackport} and
    C{trackport serve} both build it here.
    """
    from gateway.service import GatewayService

    return GatewayService(port=options["port"], interface=options["interface"], db=options["db"],
                          reuse_port=bool(options["reuse-port"]), idle_timeout=options["idle-timeout"],
                          devices=options["devices"], claim_window=options["claim-window"],
                          forwards=options["forwards"], http=options["http"], map_tiles=options["map-tiles"],
                          proxy_protocol=bool(options["proxy-protocol"]), udp_peers=options["udp-peers"])


def makeService(options):
    if options["workers"] > 1:
        return workers_service(options)
    service = gateway_service(options)
    try:
        service.prepare()
    except Exception as e:
        service.discard_new_database()
        orig = getattr(e, "orig", None)
        text = str(orig if orig is not None else e).strip()
        line = text.splitlines()[0] if text else repr(e)
        raise SystemExit(f"twistd trackport: cannot start: {line}") from None
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
    engine.dispose()
    summary = f"{options['interface'] or '*'}:{options['port']} (tcp+udp)"
    return Workers(reactor, options["workers"], options.argv, summary)
