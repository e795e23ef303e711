"""
L{gateway.identity}: who holds a device, what is a conflict and what is a
reconnect, on a fake clock.
"""

from twisted.internet.task import Clock

from gateway.identity import Claims


class FakeSession:
    def __init__(self, peer, transport="tcp"):
        self.peer = peer
        self.transport = transport
        self.open = True
        self.device_id = None


def claims():
    clock = Clock()
    return clock, Claims(clock, window=60)


def test_one_session_holds_and_nothing_waits():
    clock, c = claims()
    a = FakeSession("10.0.0.1:1000")
    c.claim(a, "dev")
    route = c.route("dev")
    assert route.session is a and route.reason("engine_stop") is None


def test_both_speaking_after_each_other_is_a_conflict_that_holds_everything():
    clock, c = claims()
    victim, impostor = FakeSession("10.0.0.1:1000"), FakeSession("10.0.0.9:2000", "udp")
    c.claim(victim, "dev")
    clock.advance(5)
    c.claim(impostor, "dev")
    clock.advance(5)
    c.claim(victim, "dev")
    assert c.conflict("dev") == (victim, impostor)
    route = c.route("dev")
    for kind in ("engine_stop", "engine_resume", "custom", "position_request"):
        reason = route.reason(kind)
        assert "identity conflict" in reason and "10.0.0.9:2000" in reason and "10.0.0.1:1000" in reason
    # The impostor falls silent: once its claim is older than the window, over.
    clock.advance(56)
    c.claim(victim, "dev")
    assert c.conflict("dev") is None and c.route("dev").session is victim


def test_a_takeover_settles_before_engine_commands_go():
    clock, c = claims()
    old, new = FakeSession("10.0.0.1:1000"), FakeSession("10.0.0.1:1001")
    c.claim(old, "dev")
    clock.advance(10)
    c.claim(new, "dev")
    route = c.route("dev")
    assert route.session is new
    assert route.reason("position_request") is None
    assert "identity settling" in route.reason("engine_stop")
    assert "identity settling" in route.reason("custom")
    clock.advance(51)
    assert c.route("dev").reason("engine_stop") is None
    assert c.conflict("dev") is None


def test_a_closed_old_connection_is_a_plain_reconnect():
    clock, c = claims()
    old, new = FakeSession("10.0.0.1:1000"), FakeSession("10.0.0.1:1001")
    c.claim(old, "dev")
    old.open = False
    c.release(old)
    clock.advance(1)
    c.claim(new, "dev")
    route = c.route("dev")
    assert route.session is new and route.reason("engine_stop") is None


def test_the_holder_closing_hands_over_to_the_other_claimant():
    clock, c = claims()
    a, b = FakeSession("10.0.0.1:1000"), FakeSession("10.0.0.2:1000")
    c.claim(a, "dev")
    clock.advance(1)
    c.claim(b, "dev")
    assert c.holder("dev") is b
    b.open = False
    c.release(b)
    assert c.holder("dev") is a
    a.open = False
    c.release(a)
    assert c.holder("dev") is None and c.route("dev").session is None


def test_claimants_per_device_are_bounded():
    clock, c = claims()
    victim = FakeSession("10.0.0.1:1000")
    c.claim(victim, "dev")
    for i in range(100):
        clock.advance(0.01)
        c.claim(FakeSession(f"10.9.0.{i}:1"), "dev")
        clock.advance(0.01)
        c.claim(victim, "dev")
    assert len(c._claims["dev"]) == 16
    assert victim in c._claims["dev"] and c.conflict("dev") is not None


from hypothesis import event, example, given, settings, strategies as st  # noqa: E402


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 30)), max_size=40),
       st.lists(st.sampled_from(["p1", "p2", "p1"]), min_size=6, max_size=6))
def test_conflict_is_the_first_overlapping_pair(steps, peers):
    """
    L{Claims.conflict} stops looking once later sessions started after the
    earlier one last spoke; what it finds is what comparing every pair finds.
    """
    clock, c = claims()
    sessions = [FakeSession(peers[i]) for i in range(6)]
    for index, delay in steps:
        clock.advance(delay)
        c.claim(sessions[index], "dev")
    now = clock.seconds()
    active = sorted(((cl.first, cl.last, s) for s, cl in c._claimants("dev").items()
                     if now - cl.last <= c.window), key=lambda t: t[0])
    expected = None
    for i, (_, last_a, a) in enumerate(active):
        for first_b, _, b in active[i + 1:]:
            if a.peer != b.peer and last_a >= first_b and expected is None:
                expected = (a, b)
    assert c.conflict("dev") == expected


class Reference:
    """
    Claims kept the plain way, one dict of every claim per device, every
    answer from comparing them all: what L{Claims} must answer, shortcuts or
    not.
    """

    def __init__(self, clock, window, most):
        self.clock, self.window, self.most, self.claims = clock, window, most, {}

    def claim(self, session, device_id):
        now = self.clock.seconds()
        claims = self.claims.setdefault(device_id, {})
        if session in claims:
            claims[session][1] = now
        else:
            if len(claims) >= self.most:
                del claims[min(claims, key=lambda s: claims[s][1])]
            claims[session] = [now, now]
        return len(claims)

    def release(self, session, device_id=None):
        for d, claims in self.claims.items():
            if device_id in (None, d):
                claims.pop(session, None)

    def holder(self, device_id):
        live = [(last, first, s) for s, (first, last) in self.claims.get(device_id, {}).items() if s.open]
        return max(live, key=lambda t: (t[0], t[1]))[2] if live else None

    def conflict(self, device_id):
        now = self.clock.seconds()
        active = sorted(((first, last, s) for s, (first, last) in self.claims.get(device_id, {}).items()
                         if s.open and now - last <= self.window), key=lambda t: t[0])
        for i, (_, last_a, a) in enumerate(active):
            for first_b, _, b in active[i + 1:]:
                if a.peer != b.peer and first_b <= last_a:
                    return a, b
        return None


@settings(max_examples=400, deadline=None)
@example(steps=[("claim", 0, 0), ("claim", 6, 0), ("claim", 6, -3), ("claim", 4, 0.5), ("claim", 4, 7),
                ("close", 0, 0)], peers=["p1"] * 6 + ["p2", "p1"])
@example(steps=[("claim", 0, 0), ("claim", 2, 0), ("claim", 2, -3), ("claim", 0, 0), ("claim", 1, 0),
                ("close", 1, 0)], peers=["p1"] * 8)
@example(steps=[("claim", 0, 0), ("claim", 0, -3), ("claim", 1, 1), ("claim", 0, 0)], peers=["p1", "p2"] + ["p1"] * 6)
@given(st.lists(st.tuples(st.sampled_from(["claim", "claim", "claim", "claim", "close", "other"]),
                          st.integers(0, 7), st.sampled_from([0, 0, 0.5, 1, 1, 1, 7, 61, -3])),
                max_size=60),
       st.lists(st.sampled_from(["p1", "p2", "p3"]), min_size=8, max_size=8))
def test_claims_answer_as_comparing_every_claim(steps, peers):
    """
    Whatever the order of claims, closes and clock steps (back too), the
    holder, the conflict, the route and which claim is forgotten beyond the
    bound are those of comparing every claim (L{Reference}): claims apart in
    time are only a shortcut.
    """
    from unittest import mock

    from gateway import identity

    clock, c = claims()
    clock.advance(1000)
    reference = Reference(clock, c.window, 4)
    sessions = [FakeSession(peers[i]) for i in range(8)]
    with mock.patch.object(identity, "MAX_CLAIMANTS", 4):
        for what, index, delay in steps:
            if delay >= 0:
                clock.advance(delay)
            else:
                clock.rightNow += delay  # the system clock stepped back
            session = sessions[index]
            if what == "claim":
                if not session.open:
                    session = sessions[index] = FakeSession(session.peer)
                assert c.claim(session, "dev") == reference.claim(session, "dev")
            elif what == "close":
                session.open = False
                c.release(session)
                reference.release(session)
            else:
                c.release_device(session, "dev")
                reference.release(session, "dev")
            assert c.holder("dev") is reference.holder("dev")
            assert c.conflict("dev") == reference.conflict("dev")
            assert list(c._claimants("dev")) == list(reference.claims.get("dev", {}))
            assert c.route("dev").session is reference.holder("dev")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["claim", "claim", "claim", "claim", "close", "other"]),
                          st.integers(0, 7), st.sampled_from([0, 0.5, 1, 1, 7, 30, 61, -3])),
                max_size=40),
       st.lists(st.sampled_from(["p1", "p2", "p3"]), min_size=8, max_size=8))
def test_closing_a_superseded_claimant_changes_no_answer(steps, peers):
    """
    A session L{Claims.superseded} names may be closed (the UDP peer table
    forgets it early): whatever came before, the holder, the conflict and the
    route with their reasons are the same without it.
    """
    from unittest import mock

    from gateway import identity

    def replay(ops, clock):
        c = Claims(clock, window=60)
        for what, session, at in ops:
            clock.rightNow = at
            if what == "claim":
                c.claim(session, "dev")
            elif what == "close":
                c.release(session)
            else:
                c.release_device(session, "dev")
        return c

    clock = Clock()
    clock.advance(1000)
    sessions = [FakeSession(peers[i]) for i in range(8)]
    ops, superseded_seen = [], 0
    with mock.patch.object(identity, "MAX_CLAIMANTS", 4):
        for what, index, delay in steps:
            clock.rightNow += delay
            session = sessions[index]
            if what == "close":
                session.open = False
            elif what == "claim" and not session.open:
                session = sessions[index] = FakeSession(session.peer)
            ops.append((what, session, clock.rightNow))
            c = replay(ops, Clock())
            c.clock.rightNow = clock.rightNow
            for other in {s for s in sessions if s.open}:
                if not c.superseded(other, "dev"):
                    continue
                superseded_seen += 1
                without = replay(ops, Clock())
                without.clock.rightNow = clock.rightNow
                without.release(other)
                assert without.holder("dev") is c.holder("dev") is not other
                assert without.conflict("dev") == c.conflict("dev")
                assert without.route("dev") == c.route("dev")
    event(f"superseded claimants seen: {min(superseded_seen, 3)}")


def test_superseded_claims():
    clock, c = claims()
    a, b, tcp = FakeSession("10.0.0.1:1", "udp"), FakeSession("10.0.0.1:2", "udp"), FakeSession("10.0.0.2:1")
    c.claim(a, "dev")
    assert not c.superseded(a, "dev")  # the holder
    clock.advance(1)
    c.claim(b, "dev")
    assert not c.superseded(a, "dev") and not c.superseded(b, "dev")  # a still counts: settling
    assert c.route("dev").reason("engine_stop") is not None
    clock.advance(59)
    assert not c.superseded(a, "dev")  # silent 60 s, the window's length: not past it
    clock.advance(0.5)
    assert c.superseded(a, "dev") and not c.superseded(b, "dev")
    assert c.route("dev").reason("engine_stop") is None
    c.claim(tcp, "other")
    assert not c.superseded(tcp, "other")  # its own device
    assert c.superseded(tcp, "dev")  # no claim on a device another holds: it counts nowhere
    assert not c.superseded(tcp, "nobody's")
    b.open = False
    assert not c.superseded(a, "dev")  # the holder again, b being closed


def test_claims_that_touch_overlap():
    """
    A claim that begins at the very time another last claimed overlaps it,
    also when whether claims overlap is looked at again after one went.
    """
    clock, c = claims()
    a, b, d = FakeSession("10.0.0.1:1000"), FakeSession("10.0.0.2:1000"), FakeSession("10.0.0.3:1000")
    c.claim(a, "dev")
    clock.advance(1)
    c.claim(b, "dev")
    c.claim(a, "dev")
    assert c.conflict("dev") == (a, b)
    clock.advance(1)
    c.claim(d, "dev")
    d.open = False
    c.release(d)
    assert c.conflict("dev") == (a, b) and c.holder("dev") is b


def test_a_device_on_a_new_udp_port_every_report_is_settling_unless_the_window_is_shorter():
    """
    What docs/commands.md says of NATs that change a device's port every
    report: reporting more often than the window, its engine commands wait;
    with a window shorter than the report interval they go.
    """
    for window, waits in ((60, True), (20, False)):
        clock = Clock()
        c = Claims(clock, window=window)
        for port in range(5):
            clock.advance(30)
            c.claim(FakeSession(f"10.0.0.1:{5000 + port}", "udp"), "dev")
        route = c.route("dev")  # right after the report, when a UDP command goes
        assert route.session.peer == "10.0.0.1:5004" and route.reason("set_interval") is None
        assert (route.reason("engine_stop") is not None) is waits
