# -*- test-case-name: tests.test_ordering,tests.test_forward_ordering -*-
"""
Ids that commit in the order they were drawn, so a reader that keeps a cursor
(C{id > last}) never skips a row that commits late.

On PostgreSQL two transactions may draw ids 10 and 11 and commit 11 first; a
reader that saw 11 and moved its cursor past 10 would never see 10. Every
transaction that inserts into a table read by cursor (positions,
command_events) first takes one transaction-scoped advisory lock, so such
inserts, and their commits, happen one after another. SQLite has one writer at
a time already.
"""

#: The advisory lock key ("trkp").
ID_ORDER_LOCK = 0x74726B70
#: The statement that takes it (PostgreSQL), for callers on the driver's own
#: connection as well as L{serialize_ids}.
ID_ORDER_STATEMENT = f"SELECT pg_advisory_xact_lock({ID_ORDER_LOCK})"


def serialize_ids(connection) -> None:
    """
    Call inside a transaction, before it inserts rows read by cursor; the
    lock is released when the transaction ends.
    """
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(ID_ORDER_STATEMENT)
