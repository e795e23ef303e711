"""
One poison frame per protocol: a real frame (the vector named, from
C{tests/vectors}) changed the way a fuzzer or an attacker changed it, so that
what it decodes to is something a database refuses. Shared by the fault tests
and C{bench/poison.py}.

Each entry: (protocol, transport, frame, what it carries, the reply the
gateway owes it or C{b""}).
"""


def _nul_at(frame: bytes, index: int) -> bytes:
    return frame[:index] + b"\x00" + frame[index + 1:]


def _insert_nul(frame: bytes, index: int) -> bytes:
    return frame[:index] + b"\x00" + frame[index:]


ENFORA_006 = bytes.fromhex(
    "00040200202020202020202020382020202020202030313137323230303131383531373820313220244750524d432c"
    "3232343833392e30302c412c303332382e3433383830362c4e2c30373633312e3630373731372c572c302e302c302e"
    "302c3139303731342c332e382c452c412a32420d0a00")
GOSAFE_003 = bytes.fromhex(
    "2a475331362c3335313533353035383730393737352c3130303335363133303231352c2c5359533a473739573b5631"
    "2e30363b56312e302e322c4750533a413b363b4e32342e3830323730303b4534362e3631363832383b303b303b3638"
    "343b312e33352c434f543a36302c4144433a342e33313b302e31302c4454543a32303030303b3b303b303b303b3123")
H02_003 = bytes.fromhex(
    "2a48512c353930353130313839332c56312c3130353735392c412c33373537333339322c532c3134353033373032322c"
    "452c3030302e30302c3137332c3238303132322c46463746464246462c2c2c393035396532632c383233322c3423")
SKYPATROL_001 = bytes.fromhex(
    "0005021004ffffffff0000000d313134373735383300cb000000000e11070c010184d032fb3841370000000016072b00"
    "0017050032000000000000024e0c071116072c105900050000000000050000000000050000000003100260b7363b6306"
    "c11a00b73637f206bf19b73637f106b50eb73638b106bb0bb7363b6106b80ab73637f306b709000000000000000000")
ASTRA_001 = bytes.fromhex(
    "58003201052196881ae0ce1f00000000000353d3d49e0010200000093d2353d3d49d031b934afffb036c0000a0000000e0eb")
GOTOP_001 = (b"#353327020115804,CMD-T,A,DATE:090329,TIME:223252,LAT:22.7634066N,LOT:114.3964783E,"
             b"Speed:000.0,84-20,000#")

POISON = [
    # The 108-byte datagram that halted all storage: a 100-digit "unit id".
    ("atrack", "udp", b"$INFO=" + b"1" * 100 + b"\r\n", "device id of 100 digits", b""),
    # skypatrol-001 with a NUL inside the unit id.
    ("skypatrol", "udp", _nul_at(SKYPATROL_001, 14), "device id with a NUL byte", b""),
    # enfora-006 with a NUL before the event field: the event is a NUL.
    ("enfora", "udp", _insert_nul(ENFORA_006, 3), "event with a NUL byte", b""),
    # gosafe-003 with a NUL starting the SYS field: an attribute key with a NUL.
    ("gosafe", "tcp", _nul_at(GOSAFE_003, 35), "attribute key with a NUL byte", b"1234"),
    # h02-003 with a NUL in the time field: an attribute value with a NUL.
    ("h02", "tcp", _nul_at(H02_003, 18), "attribute value with a NUL byte", b""),
    # gotop-001 with a 104-character event (the column holds 64).
    ("gotop", "tcp", GOTOP_001.replace(b"CMD-T", b"CMD-" + b"X" * 100), "event of 104 characters", b""),
    # astra-001 as it is: the test database refuses astra records (an
    # operator's rule the gateway cannot know), so it is refused at the write.
    ("astra", "tcp", ASTRA_001, "a record the database refuses", b"\x06"),
]
