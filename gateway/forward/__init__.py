"""
Forwarding: every committed record (and command status change) pushed to
webhooks, MQTT and AMQP brokers, at least once and in commit order.

The backlog is the database itself: each sink keeps a cursor in
C{forward_sinks}, moved only once its target confirmed a batch (see
L{gateway.forward.outbox}). Sink kinds live in L{gateway.forward.webhook},
L{gateway.forward.mqtt} and L{gateway.forward.amqp}; L{gateway.forward.sinks}
picks one from a URL.
"""
