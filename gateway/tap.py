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

    def postOptions(self):
        if not 0 < self["port"] < 65536:
            raise usage.UsageError(f"--port must be 1-65535, not {self['port']}")
        if self["idle-timeout"] < 0:
            raise usage.UsageError("--idle-timeout must be 0 (never) or a number of seconds")
        self["db"] = database_url(self["db"])
        from gateway.forward.sinks import parse_forwards

        try:
            self["forwards"] = parse_forwards(self["forward"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None


def makeService(options):
    from gateway.service import GatewayService

    service = GatewayService(port=options["port"], interface=options["interface"], db=options["db"],
                             reuse_port=bool(options["reuse-port"]), idle_timeout=options["idle-timeout"],
                             forwards=options["forwards"])
    service.prepare()
    return service
