"""Pure HJ 212 protocol core: bytes in, typed records out; bytes out for replies and commands.

No I/O, no clock, no logging: time is an argument. The only exception raised for any
input is ``ProtocolError`` (with a ``RejectReason``); framing problems come out as
``Rejected`` records.

Typical use (one ``FrameBuffer`` per connection)::

    framer = FrameBuffer()
    for item in framer.feed(data):
        if isinstance(item, Frame):
            packet = decode(item)            # may raise ProtocolError
            reply = reply_for(packet)        # bytes or None
        else:
            ...                              # a Rejected record: count / archive it
"""

from protocol.classify import PacketKind, packet_kind
from protocol.codes import (
    CnInfo,
    CommandParam,
    FactorInfo,
    InfoCodeInfo,
    Profile,
    StInfo,
    get_profile,
    known_cns,
    known_sts,
    profile_for_version,
    profile_names,
)
from protocol.crc import hj212_crc, match_variant, modbus_crc
from protocol.decode import decode, decode_segment
from protocol.encode import (
    QnGenerator,
    build_segment,
    command,
    encode_frame,
    reply_for,
)
from protocol.errors import ProtocolError, Quirk, RejectReason
from protocol.framing import FrameBuffer, reframe
from protocol.jsonview import packet_to_json, rejected_to_json
from protocol.mask import excerpt, mask_password
from protocol.records import CrcVariant, Frame, Packet, Record, Rejected
from protocol.values import TIME_FIELDS, format_time_ms, parse_number, parse_time_us

__all__ = [
    "TIME_FIELDS",
    "CnInfo",
    "CommandParam",
    "CrcVariant",
    "FactorInfo",
    "Frame",
    "FrameBuffer",
    "InfoCodeInfo",
    "Packet",
    "PacketKind",
    "Profile",
    "ProtocolError",
    "QnGenerator",
    "Quirk",
    "Record",
    "RejectReason",
    "Rejected",
    "StInfo",
    "build_segment",
    "command",
    "decode",
    "decode_segment",
    "encode_frame",
    "excerpt",
    "format_time_ms",
    "get_profile",
    "hj212_crc",
    "known_cns",
    "known_sts",
    "mask_password",
    "match_variant",
    "modbus_crc",
    "packet_kind",
    "packet_to_json",
    "parse_number",
    "parse_time_us",
    "profile_for_version",
    "profile_names",
    "reframe",
    "rejected_to_json",
    "reply_for",
]
