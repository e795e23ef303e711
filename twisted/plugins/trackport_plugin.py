"""
Makes C{twistd -n trackport} run the gateway (see L{gateway.tap}).
"""

from twisted.application.service import ServiceMaker

trackport = ServiceMaker(
    "trackport",
    "gateway.tap",
    "GPS tracker gateway: every device on one port, TCP and UDP",
    "trackport",
)
