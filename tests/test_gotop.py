"""
GOTOP text protocol (L{decoders.gotop}): shared vectors, detection, framing
through the session, commands and their confirmations, robustness.
"""

import functools
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from decoders.gotop import MAX_FRAME, gotop
from gateway.context import Context
from gateway.detector import Detector
from gateway.interfaces import DecodeError, EncodeError, Outcome
from gateway.model import Command
from gateway.registry import discover
from gateway.session import MAX_BUFFER, Session
from tests import vectorcheck
from tests.harness import each_vector, frame_of, memory_hub, run_session, vector_replay_test

VECTORS = vectorcheck.load("gotop")
BY_ID = {v["id"]: v for v in VECTORS}

#: Feed chunks to one session of a gotop-only hub: (records, sent, hub).
run = functools.partial(run_session, gotop)


def body_of(vector_id: str) -> str:
    return frame_of(vector_id).decode("ascii").strip("#")


def with_type(vector_id: str, kind: str) -> bytes:
    """
    A real frame with its message type replaced (for types no capture shows).
    """
    imei, _, rest = body_of(vector_id).split(",", 2)
    return f"#{imei},{kind},{rest}#".encode("ascii")


def decode(frame: bytes, settings=None):
    context = Context(lookup=lambda device_id: settings or {})
    return gotop.decode(gotop.frame(frame, "tcp")[0], context)


# -- shared vectors -------------------------------------------------------

test_vector = vector_replay_test(VECTORS)


@each_vector(VECTORS)
def test_no_reply_is_ever_sent(vec):
    for transport in ("tcp", "udp"):
        records, sent, hub = run([bytes.fromhex(h) for h in vec["frames_hex"]], transport)
        assert sent == []
        assert hub.errors == []


# -- detection ------------------------------------------------------------

@each_vector(VECTORS)
def test_detects_every_prefix_without_refusing(vec):
    frame = frame_of(vec["id"])
    for n in range(len(frame)):
        assert gotop.detect(frame[:n], "tcp").outcome is not Outcome.NO, frame[:n]
    assert gotop.detect(frame, "tcp").score >= 90
    assert gotop.detect(frame, "udp").score >= 90
    assert gotop.detect(frame[1:], "udp").score >= 90  # a body without the leading '#'


@pytest.mark.parametrize("head", [
    b"#L#353327020115804;NA\r\n",                                 # Wialon IPS login
    b"#D#290319;223252;2245.8042;N;11423.7886;E;0;0;0;5\r\n",     # Wialon IPS data
    b"#353327020115804#MP90_4G#0000#AUTOLOW#1\r\n",               # TLT-2H / V680
    b"##,imei:359586015829802,A;",                                # GPS103 variant
    b"#M2C,2020,P1.B1.H1.F1.R1,101,353327020115804,1,L,0#",       # M2C
    b"#L#2.0;353327020115804;NA;BB2B\r\n",                       # Wialon IPS 2.0 login
    b"#SD#290319;223252;2245.8042;N;11423.7886;E;0;0;0;5\r\n",    # Wialon IPS short data
    b"#B#290319;223252;2245.8042;N;11423.7886;E;0;0;0;5|\r\n",    # Wialon IPS black box
    b"#P#\r\n",                                                  # Wialon IPS ping
    b"##S,353327020115804,",                                      # eSeal
    b"#MTX,353327020115804,20190329,223252,22.76341,114.39648#",  # MTX
    b"#GTXRP=353327020115804,1,190329223252,22.76341,114.39648#", # SmartSole
    b"353327020115804,+8613800138000,GPRMC,223252.000,A,2245.80", # digits first, not CMD-/ALM-
    b"#353327020115804,CMD,T,A#",
    b"#3533,CMD-T,A,DATE:090329#",                                # IMEI too short
])
def test_look_alikes_are_not_claimed(head):
    for transport in ("tcp", "udp"):
        assert not gotop.detect(head, transport).matched


def test_claims_no_other_protocols_vectors():
    for vec in vectorcheck.load():
        if vec["protocol"] == "gotop":
            continue
        transport = vec.get("transport", "any")
        transport = transport if transport in ("tcp", "udp") else "tcp"
        chunks = [bytes.fromhex(h) for h in vec["frames_hex"]]
        head = b"".join(chunks) if transport == "tcp" else chunks[0]
        for n in range(1, len(head) + 1):
            assert not gotop.detect(head[:n], transport).matched, vec["id"]


def test_detector_picks_gotop_among_all_plugins():
    detector = Detector(discover().values())
    for vec in VECTORS:
        detection = detector.detect(frame_of(vec["id"]), "tcp", final=True)
        assert detection.decoder is gotop


# -- framing --------------------------------------------------------------

STREAM_IDS = ["gotop-001", "gotop-004", "gotop-025", "gotop-020", "gotop-006", "gotop-026"]


def expected(ids):
    out = []
    for i in ids:
        records, _, _ = run([frame_of(i)])
        out += records
    return out


def test_several_frames_in_one_read_keep_their_own_imei():
    stream = b"".join(frame_of(i) for i in STREAM_IDS)
    records, _, hub = run([stream])
    assert hub.errors == []
    assert records == expected(STREAM_IDS)
    assert {d for d, _ in records} == {"353327020115804", "860264050778076",
                                       "867648044456745", "012896001890042"}


def test_split_at_every_byte_boundary():
    stream = b"".join(frame_of(i) for i in STREAM_IDS[:3])
    want = expected(STREAM_IDS[:3])
    for cut in range(1, len(stream)):
        records, _, hub = run([stream[:cut], stream[cut:]])
        assert records == want, cut
        assert hub.errors == []


def test_byte_by_byte():
    stream = b"".join(frame_of(i) for i in STREAM_IDS)
    records, _, hub = run([stream[i:i + 1] for i in range(len(stream))])
    assert records == expected(STREAM_IDS)
    assert hub.errors == []


def test_crlf_after_frames_and_bodies_without_leading_hash():
    frames = [frame_of(i) for i in STREAM_IDS]
    crlf = b"".join(f + b"\r\n" for f in frames)
    bare = b"".join(f[1:] for f in frames)  # Traccar-style: only the closing '#'
    for stream in (crlf, bare):
        records, _, hub = run([stream])
        assert records == expected(STREAM_IDS)
        assert hub.errors == []


def test_garbage_before_a_frame_is_skipped_and_the_session_goes_on():
    first, second = frame_of("gotop-001"), frame_of("gotop-028")
    records, _, hub = run([first[:40], b"\x00\xffjunk" + first, b"noise#" + second])
    assert records == expected(["gotop-001", "gotop-028"])
    # The cut-off frame is reported as bad, the noise as skipped.
    assert [e.split(":")[0] for e in hub.errors] == ["bad frame", "skipped bytes outside any frame"]


def test_garbage_glued_to_a_body():
    records, _, hub = run([frame_of("gotop-028"), b"xx" + frame_of("gotop-001")[1:]])
    assert records == expected(["gotop-028", "gotop-001"])
    assert len(hub.errors) == 1


def test_endless_bytes_without_delimiter_stay_bounded():
    frame, consumed = gotop.frame(b"9" * (MAX_FRAME + 10), "tcp")
    assert frame is None and consumed == MAX_FRAME + 10
    assert gotop.frame(b"9" * 100, "tcp") == (None, 0)
    records, _, hub = run([frame_of("gotop-001")] + [b"A" * 1000] * 10 + [b"#" + frame_of("gotop-028")])
    assert records == expected(["gotop-001", "gotop-028"])


def test_udp_datagram_with_a_batch_and_without_closing_hash():
    batch = frame_of("gotop-001") + frame_of("gotop-004") + frame_of("gotop-028")
    records, sent, hub = run([batch, frame_of("gotop-025")[:-1]], transport="udp")
    assert records == expected(["gotop-001", "gotop-004", "gotop-028", "gotop-025"])
    assert sent == [] and hub.errors == []


def test_message_type_matched_exactly():
    report = decode(frame_of("gotop-001"))
    relay = decode(with_type("gotop-001", "CMD-T1"))
    assert report.confirmations == ()
    assert [c.token for c in relay.confirmations] == ["T1"]
    assert len(relay.records) == 1 and relay.records[0].event == "CMD-T1"


def test_heartbeat_and_connect_notice_have_no_record():
    for frame in (frame_of("gotop-004"), b"#867273021518134,CMD-D,#"):
        result = decode(frame)
        assert result.device_id and result.records == () and result.confirmations == ()


def test_v_frame_is_kept_invalid():
    record = decode(frame_of("gotop-029")).records[0]
    assert record.valid is False and record.latitude is not None


def test_no_fix_yet_gives_no_position():
    frame = b"#353327020115804,CMD-T,V,DATE:,TIME:,LAT:,LOT:,Speed:,84-20,000#"
    record = decode(frame).records[0]
    assert (record.time, record.latitude, record.longitude, record.speed_kmh) == (None,) * 4
    assert record.attributes["battery_level_pct"] == 84


def test_utc_offset_setting():
    plain = decode(frame_of("gotop-001")).records[0].time
    shifted = decode(frame_of("gotop-001"), {"gotop.utc_offset": "+08"}).records[0].time
    assert (plain - shifted).total_seconds() == 8 * 3600
    west = decode(frame_of("gotop-001"), {"gotop.utc_offset": "-05:30"}).records[0].time
    assert (west - plain).total_seconds() == 5.5 * 3600
    with pytest.raises(DecodeError):
        decode(frame_of("gotop-001"), {"gotop.utc_offset": "CET"})


# -- status and extension shapes ------------------------------------------

def test_vt108_five_part_status():
    body = body_of("gotop-001").replace(",84-20,", ",1-1-0-84-20,")
    attrs = decode(f"#{body}#".encode()).records[0].attributes
    assert (attrs["ignition"], attrs["gotop.external_power"], attrs["door"]) == (True, True, False)
    assert (attrs["battery_level_pct"], attrs["rssi"]) == (84, 20)


def test_other_flag_shapes_stay_raw():
    attrs = decode(frame_of("gotop-019")).records[0].attributes
    assert attrs["gotop.flags"] == "X-0-1" and "ignition" not in attrs


def test_wifi_and_ble_lists():
    attrs = decode(frame_of("gotop-025")).records[0].attributes
    assert len(attrs["gotop.wifi"]) == 10 and len(attrs["gotop.ble"]) == 5
    assert attrs["gotop.wifi"][0] == {"mac": "84:a0:6e:94:42:5e", "rssi": -47}
    assert attrs["battery_level_pct"] == 77 and "gotop.extra" not in attrs


def test_unknown_trailing_fields_are_kept_raw():
    body = body_of("gotop-028") + ",AD1:12.34V,RS232:FUEL=0512"
    record = decode(f"#{body}#".encode()).records[0]
    assert record.attributes["gotop.extra"] == ["AD1:12.34V", "RS232:FUEL=0512"]
    assert record.attributes["cell_id"] == 19342


def test_4g_numbers_only_with_cell_lists():
    lte = decode(frame_of("gotop-020")).records[0]
    assert lte.altitude_m == 59.5 and lte.attributes["hdop"] == 0.9
    old = decode(frame_of("gotop-022")).records[0]
    assert old.altitude_m is None and "hdop" not in old.attributes


def test_4g_altitude_without_decimals_is_not_a_course():
    # Spec 0.2: before the ~ cell lists the first number is the altitude,
    # even when printed whole; 0.3: only V5.0's Direction is a course.
    body = body_of("gotop-020").replace(",59.5,", ",59,")
    record = decode(f"#{body}#".encode()).records[0]
    assert (record.altitude_m, record.course, record.attributes["hdop"]) == (59.0, None, 0.9)


# -- alarms, and where Traccar decodes wrongly -----------------------------

@pytest.mark.parametrize("kind, alarm", [
    ("ALM-A", ("sos",)),
    ("CMD-KEY", ("sos",)),
    ("ALM-C", ("overspeed",)),
    ("ALM-D", ("low_battery",)),
    ("ALM-D1", ("low_battery",)),
    # Traccar takes the parity of the fence number (2: exit); spec 0.4 that of m.
    ("ALM-B2-1", ("geofence_enter",)),
    ("ALM-B1-2", ("geofence_exit",)),
    # Traccar reads a character past the end of plain ALM-B.
    ("ALM-B", ("general",)),
    ("ALM-B3", ("general",)),
    ("ALM-F", ()),
    ("CMD-T", ()),
])
def test_alarms(kind, alarm):
    record = decode(with_type("gotop-023", kind)).records[0]
    assert record.alarm == alarm and record.event == kind


def test_geofence_parity_of_an_overlong_number():
    # Found by hypothesis: int() of more than 4300 digits raised ValueError
    # (the framer's cap keeps such a body from the session; decode is called
    # directly here, as the robustness tests do).
    record = gotop.decode(with_type("gotop-023", "ALM-B1-" + "9" * 5000), Context()).records[0]
    assert record.alarm == ("geofence_enter",)


def test_alarm_without_position_data():
    result = decode(b"#867273021518134,ALM-E#")
    assert [(r.alarm, r.latitude, r.time) for r in result.records] == [(("general",), None, None)]


def test_status_with_flags_is_read_unlike_traccar():
    # Traccar reads the status only when it is exactly <n>-<n>.
    attrs = decode(frame_of("gotop-030")).records[0].attributes
    assert (attrs["battery_level_pct"], attrs["rssi"]) == (52, 31)


def test_direction_is_the_course_but_farnear_hdop_is_not():
    # Traccar's 2024 decoder drops the V5.0 Direction field.
    assert decode(frame_of("gotop-028")).records[0].course == 0.0
    assert decode(frame_of("gotop-023")).records[0].course is None
    body = body_of("gotop-028").replace(",000,", ",135,")
    assert decode(f"#{body}#".encode()).records[0].course == 135.0


# -- commands ---------------------------------------------------------------

# From ../shared/protocols/gotop/commands.jsonl (GOTOP V5.0 document and
# location.io's asserted bytes).
@pytest.mark.parametrize("kind, params, data", [
    ("position_request", {}, b":123456F#"),
    ("engine_stop", {}, b":123456T1#"),
    ("engine_resume", {}, b":123456T0#"),
    ("set_interval", {"seconds": "30"}, b":123456M1,030S#"),
    ("set_interval", {"seconds": "5"}, b":123456M1,005S#"),
    ("set_interval", {"seconds": str(45 * 3600), "enabled": "false"}, b":123456M0,045H#"),
    ("custom", {"text": "L+08"}, b":123456L+08#"),
    ("custom", {"text": "J1,080"}, b":123456J1,080#"),
    ("custom", {"text": "N1,40"}, b":123456N1,40#"),
    ("custom", {"text": "H456789"}, b":123456H456789#"),
    ("custom", {"text": "A1,+8613812345678"}, b":123456A1,+8613812345678#"),
    ("custom", {"text": "A2,D"}, b":123456A2,D#"),
    ("custom", {"text": "I1,1,1,51113525N009125670E50241115N011011173E"},
     b":123456I1,1,1,51113525N009125670E50241115N011011173E#"),
    ("custom", {"text": "CCMNET,119.122.101.91:7289"}, b":123456CCMNET,119.122.101.91:7289#"),
    ("custom", {"text": "Ointernet,internet123"}, b":123456Ointernet,internet123#"),
    ("custom", {"text": "U1"}, b":123456U1#"),
    ("custom", {"text": ":123456U0#"}, b":123456U0#"),
    ("custom", {"hex": "3a3132333435364623"}, b":123456F#"),
])
def test_encoder_bytes(kind, params, data):
    encoded = gotop.encode(Command(1, "353327020115804", kind, params), Context())
    assert encoded.data == data
    assert encoded.expects_reply


def test_password_and_relay_polarity_settings():
    context = Context(lookup=lambda device_id: {"gotop.password": "654321",
                                                "gotop.relay_polarity": "inverted"})
    stop = gotop.encode(Command(1, "353327020115804", "engine_stop", {}), context)
    resume = gotop.encode(Command(2, "353327020115804", "engine_resume", {}), context)
    assert (stop.data, resume.data) == (b":654321T0#", b":654321T1#")
    # The device's CMD-T0 now answers the engine stop.
    assert decode(with_type("gotop-001", "CMD-T0")).confirmations[0].token == stop.token


@pytest.mark.parametrize("kind, params, settings", [
    ("reboot", {}, {}),
    ("set_interval", {"seconds": "301"}, {}),
    ("set_interval", {"seconds": "0"}, {}),
    ("set_interval", {}, {}),
    ("custom", {}, {}),
    ("custom", {"text": "F#"}, {}),
    ("custom", {"hex": "zz"}, {}),
    ("engine_stop", {}, {"gotop.relay_polarity": "upside-down"}),
    ("engine_stop", {}, {"gotop.password": "12ab"}),
])
def test_encode_errors(kind, params, settings):
    with pytest.raises(EncodeError):
        gotop.encode(Command(1, "1", kind, params), Context(lookup=lambda device_id: settings))


@pytest.mark.parametrize("kind, params, reply_type", [
    ("position_request", {}, "CMD-F"),
    ("engine_stop", {}, "CMD-T1"),
    ("engine_resume", {}, "CMD-T0"),
    ("set_interval", {"seconds": "30"}, "CMD-M"),
    ("custom", {"text": "F"}, "CMD-F"),
    ("custom", {"text": "A2,D"}, "CMD-A2"),
    ("custom", {"text": "J1,080"}, "CMD-J"),
    ("custom", {"text": "U0"}, "CMD-U0"),
    ("custom", {"text": "N1,40"}, "CMD-N"),
    ("custom", {"text": "L+08"}, "CMD-L"),
    ("custom", {"text": "H456789"}, "CMD-H"),
    ("custom", {"text": "I1,1,1,51113525N009125670E50241115N011011173E"}, "CMD-I"),
    ("custom", {"text": "CCMNET,119.122.101.91:7289"}, "CMD-C"),
    # TL403 firmware (spec 5.1 and 7): heartbeat interval, GPS mode, clock,
    # power-off are answered CMD-M2, CMD-M4, CMD-L1, CMD-K.
    ("custom", {"text": "M2,300"}, "CMD-M2"),
    ("custom", {"text": "M4,1"}, "CMD-M4"),
    ("custom", {"text": "L1,160113,140709"}, "CMD-L1"),
    ("custom", {"text": "K"}, "CMD-K"),
])
def test_confirmation_token_matches_the_encoder(kind, params, reply_type):
    encoded = gotop.encode(Command(1, "353327020115804", kind, params), Context())
    confirmation, = decode(with_type("gotop-001", reply_type)).confirmations
    assert confirmation.token == encoded.token
    assert confirmation.success and confirmation.command_type is None


def test_replies_to_other_codes_do_not_match():
    encoded = gotop.encode(Command(1, "353327020115804", "engine_stop", {}), Context())
    for reply_type in ("CMD-T0", "CMD-F", "CMD-A1"):
        assert decode(with_type("gotop-001", reply_type)).confirmations[0].token != encoded.token
    interval = gotop.encode(Command(2, "353327020115804", "set_interval", {"seconds": "30"}),
                            Context())
    for reply_type in ("CMD-M2", "CMD-M4"):
        assert decode(with_type("gotop-001", reply_type)).confirmations[0].token != interval.token


def test_error_reply_fails_the_oldest_command():
    confirmation, = decode(frame_of("gotop-006")).confirmations
    assert (confirmation.token, confirmation.success) == (None, False)


def test_confirmations_reach_the_command_queue():
    records, _, hub = run([frame_of("gotop-010"), frame_of("gotop-001")])
    (device_id, (confirmation,)), = hub.commands.confirmed_
    assert device_id == "012896001890042" and confirmation.token == "F"
    assert len(records) == 2


# -- robustness ------------------------------------------------------------

def mutate(data: bytes, ops) -> bytes:
    out = bytearray(data)
    for op, at, value in ops:
        if not out:
            break
        at %= len(out)
        if op == "flip":
            out[at] ^= 1 << (value % 8)
        elif op == "cut":
            del out[at:]
        elif op == "insert":
            out[at:at] = bytes([value % 256]) * (value % 7 + 1)
        elif op == "delete":
            del out[at:at + value % 5 + 1]
        elif op == "hash":
            out[at:at] = b"#"
        elif op == "digits":
            out[at:at] = b"9" * (value * 40)  # fields far longer than any device sends
    return bytes(out)


MUTATIONS = st.lists(st.tuples(st.sampled_from(["flip", "cut", "insert", "delete", "hash", "digits"]),
                               st.integers(0, 10_000), st.integers(0, 255)), max_size=6)
REAL_FRAMES = st.sampled_from(sorted(BY_ID)).map(frame_of)


def check_frame_and_decode(data: bytes, transport: str) -> None:
    buffer = data
    context = Context(transport=transport)
    for _ in range(len(data) + 1):
        if not buffer:
            return
        frame, consumed = gotop.frame(buffer, transport)
        assert 0 <= consumed <= len(buffer)
        if consumed == 0:
            assert frame is None and transport == "tcp"
            return
        buffer = buffer[consumed:]
        if frame is None:
            continue
        assert len(frame) <= MAX_FRAME
        try:
            result = gotop.decode(frame, context)
        except DecodeError:
            continue
        for record in result.records:
            json.dumps(record.to_json())
    raise AssertionError("framer did not terminate")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=600), transport=st.sampled_from(["tcp", "udp"]))
def test_random_bytes(data, transport):
    check_frame_and_decode(data, transport)
    check_frame_and_decode(b"#" + data + b"#", transport)
    gotop.detect(data, transport)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=REAL_FRAMES, ops=MUTATIONS, transport=st.sampled_from(["tcp", "udp"]))
def test_mutated_real_frames(frame, ops, transport):
    data = mutate(frame, ops)
    check_frame_and_decode(data, transport)
    check_frame_and_decode(data + frame, transport)
    gotop.detect(data, transport)
    try:
        gotop.decode(data, Context())
    except DecodeError:
        pass


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(st.tuples(REAL_FRAMES, MUTATIONS), min_size=1, max_size=6),
       cuts=st.lists(st.integers(1, 300), max_size=8))
def test_mutated_stream_through_the_session(frames, cuts):
    stream = b"".join(mutate(f, ops) for f, ops in frames) + frame_of("gotop-001")
    chunks, at = [], 0
    for size in cuts + [len(stream)]:
        chunks.append(stream[at:at + size])
        at += size
    records, sent, hub = run([c for c in chunks if c])
    assert sent == []
    assert all("decoder failed" not in e and "framer failed" not in e for e in hub.errors)


def test_session_buffer_stays_bounded():
    hub = memory_hub(gotop)
    store = hub.store_
    session = Session(hub, "tcp", "test", lambda data: None, lambda: None)
    session.data_received(frame_of("gotop-001"))
    for _ in range(400):
        session.data_received(b"7" * 1000)
        assert len(session._buffer) <= MAX_FRAME + 1000 < MAX_BUFFER
    session.data_received(b"#" + frame_of("gotop-028"))
    assert len(store.records) == 2
