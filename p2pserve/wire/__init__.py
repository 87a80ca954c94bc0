"""Wire format: immutable messages, msgpack codec, length-prefixed framing, named limits. No I/O."""

from p2pserve.wire.codec import Message, SignedMessage, decode, encode, message
from p2pserve.wire.framing import FrameDecoder, encode_frame, encode_uvarint
from p2pserve.wire.gossip import ModelStatus, Status
from p2pserve.wire.infer import Accept, Cancel, Chunk, Done, Failure, InferRequest, Receipt, Reject
from p2pserve.wire.limits import DEFAULT_LIMITS, Limits

__all__ = [
    "DEFAULT_LIMITS",
    "Accept",
    "Cancel",
    "Chunk",
    "Done",
    "Failure",
    "FrameDecoder",
    "InferRequest",
    "Limits",
    "Message",
    "ModelStatus",
    "Receipt",
    "Reject",
    "SignedMessage",
    "Status",
    "decode",
    "encode",
    "encode_frame",
    "encode_uvarint",
    "message",
]
