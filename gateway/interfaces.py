# -*- test-case-name: tests.test_registry,tests.test_detection_all -*-
"""
The contracts between the core and vendor plugins.

A vendor protocol is one module in L{decoders} holding an object that provides
L{IDecoder} (and, when the device takes commands, L{ICommandEncoder}) together
with L{twisted.plugin.IPlugin}. The core finds it with
C{twisted.plugin.getPlugins(IDecoder, decoders)}; it never imports a decoder by
name.

Decoders are pure: bytes and a L{gateway.context.Context} in, values or a
L{DecodeError} out. They never touch a socket, a clock or a database.
"""

from __future__ import annotations

import enum

import attrs
from zope.interface import Attribute, Interface


class DecodeError(Exception):
    """
    A frame that does not parse. The session logs it with the peer and the bytes,
    drops the frame, sends no ack for it and goes on.
    """


class EncodeError(Exception):
    """
    A command this protocol cannot encode (unknown type, bad parameter). The
    command queue marks the command C{failed} with this message.
    """


class Outcome(enum.Enum):
    NO = "no"
    MORE = "more"
    MATCH = "match"


@attrs.frozen
class Verdict:
    """
    A decoder's answer to "is this head of a session yours?".

    @ivar score: how specific the evidence is when C{outcome} is C{MATCH}:
        the detector picks the highest. Rough scale: 10 a magic prefix only;
        50 a parsed structure (fields, lengths, ranges); 90 a verified checksum
        or an exact grammar with an identifier.
    """

    outcome: Outcome
    score: int = 0

    @classmethod
    def match(cls, score: int) -> "Verdict":
        return cls(Outcome.MATCH, score)

    @classmethod
    def no(cls) -> "Verdict":
        return _NO

    @classmethod
    def more(cls) -> "Verdict":
        return _MORE

    @property
    def matched(self) -> bool:
        return self.outcome is Outcome.MATCH


_NO = Verdict(Outcome.NO)
_MORE = Verdict(Outcome.MORE)


class IDecoder(Interface):
    """
    One vendor wire protocol: detection, framing and decoding.
    """

    name = Attribute("Short protocol id (C{str}), e.g. C{'h02'}; unique among plugins.")

    transports = Attribute("C{frozenset} of C{'tcp'} and/or C{'udp'} this protocol is spoken on.")

    def detect(head, transport):
        """
        Say whether C{head}, the first bytes of a TCP session or one UDP
        datagram, is this protocol.

        @param head: C{bytes}, possibly only a prefix of the first frame on TCP.
        @param transport: C{'tcp'} or C{'udp'}.
        @return: a L{Verdict}: C{match} with a specificity score, C{no}, or
            C{more} when C{head} is too short to tell (TCP only; on UDP the
            datagram is all there is).
        """

    def frame(buffer, transport):
        """
        Cut the next frame off the front of C{buffer}.

        @param buffer: C{bytes} received and not yet consumed.
        @param transport: C{'tcp'} or C{'udp'}; on UDP C{buffer} is what is
            left of one datagram, which may hold several frames.
        @return: C{(frame, consumed)}: a complete frame (C{bytes}) and how many
            bytes of C{buffer} it used; C{(None, 0)} when more bytes are needed;
            C{(None, n)} to discard C{n} bytes that belong to no frame (logged
            as skipped garbage); C{(b"", n)} to consume C{n} bytes the
            protocol allows between frames (line ends, padding) quietly.
        """

    def decode(frame, context):
        """
        Decode one frame.

        @param frame: C{bytes} as returned by L{frame}.
        @param context: the L{gateway.context.Context} of the session: transport,
            known device id, per-device settings, the decoder's per-session
            state and the injected clock. Valid for this call only: what must
            last goes in its C{state} (a session whose decoder keeps no state
            is handed a shared context, L{gateway.session.Session._decode}).
        @return: a L{gateway.model.DecodeResult}.
        @raise DecodeError: when the frame does not parse.
        """


class ICommandEncoder(Interface):
    """
    Encodes operator commands into the bytes a device understands.
    """

    commands = Attribute("C{frozenset} of command types (L{gateway.model.COMMAND_TYPES}) it encodes.")

    def encode(command, context):
        """
        Encode C{command} for the device of C{context}.

        @param command: a L{gateway.model.Command}.
        @param context: the device's session L{gateway.context.Context}
            (settings such as passwords or relay polarity come from it).
        @return: a L{gateway.model.EncodedCommand}.
        @raise EncodeError: when the command or one of its parameters cannot be
            encoded for this protocol.
        """
