#!/usr/bin/env python3
"""Writes the small seed corpus: one valid frame stream for the decoder and
one chunk sequence per request kind for the envelope handler (protobuf is
encoded by hand here so no generator build is needed)."""
import os, struct, sys

def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)

def field(number, value):
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    if isinstance(value, str):
        value = value.encode()
    return varint(number << 3 | 2) + varint(len(value)) + value

def msg(*fields):
    return b"".join(field(n, v) for n, v in fields)

def envelope(body_field, body):
    return msg((1, 1), (body_field, body))

requests = {
    "heartbeat": envelope(6, b""),
    "send": envelope(10, msg((2, 42), (4, "hi"), (5, 7))),
    "send_group": envelope(10, msg((4, "hi"), (5, 8), (8, 99))),
    "send_media": envelope(10, msg((2, 42), (3, 1), (5, 9), (6, msg((1, "https://x/a.png"), (2, "image/png"), (3, 10))))),
    "delivery_ack": envelope(12, msg((1, "si_1_2"), (2, 3))),
    "sync": envelope(13, msg((1, msg((1, "si_1_2"), (2, 0))), (2, 10))),
    "history": envelope(15, msg((2, 42), (4, 20))),
    "get_user": envelope(17, msg((2, "fuzzer"))),
    "mark_read": envelope(19, msg((1, "si_1_2"), (2, 1))),
    "conversations": envelope(21, msg((1, 10))),
    "recall": envelope(23, msg((1, "si_1_2"), (2, 1))),
    "typing": envelope(25, msg((1, 42), (2, 1))),
    "update_profile": envelope(26, msg((1, "nick"))),
    "refresh": envelope(29, b""),
    "devices": envelope(61, b""),
    "friend_request": envelope(65, msg((1, 42), (2, "hello"))),
    "respond_friend": envelope(66, msg((1, 42), (2, 1))),
    "delete_friend": envelope(67, msg((1, 42))),
    "block": envelope(68, msg((1, 42), (2, 1))),
    "friends": envelope(69, b""),
    "search": envelope(71, msg((1, "fuzz"), (2, 5))),
    "presence": envelope(74, msg((1, 1))),
    "presence_query": envelope(75, msg((1, 42))),
    "create_group": envelope(77, msg((2, "g"), (3, 42))),
    "get_group": envelope(79, msg((1, 99))),
    "dissolve": envelope(81, msg((1, 99))),
    "update_group": envelope(82, msg((1, 99), (2, "n"))),
    "add_members": envelope(83, msg((1, 99), (2, 42))),
    "remove_members": envelope(84, msg((1, 99), (2, 42))),
    "leave": envelope(85, msg((1, 99))),
    "transfer": envelope(86, msg((1, 99), (2, 42))),
    "set_admin": envelope(87, msg((1, 99), (2, 42), (3, 1))),
    "members": envelope(89, msg((1, 99), (3, 10))),
    "my_groups": envelope(91, msg((2, 10))),
    "register": envelope(2, msg((1, "someone"), (2, "password-1"))),
    "login": envelope(4, msg((1, "fuzzer"), (2, "wrong-password"))),
}

root = os.path.dirname(os.path.abspath(__file__))
decoder = os.path.join(root, "corpus", "frame_decoder")
handler = os.path.join(root, "corpus", "envelope_handler")
os.makedirs(decoder, exist_ok=True)
os.makedirs(handler, exist_ok=True)
stream = b"".join(struct.pack(">I", len(e)) + e for e in requests.values())
open(os.path.join(decoder, "all_requests"), "wb").write(stream)
open(os.path.join(decoder, "too_large"), "wb").write(struct.pack(">I", 1 << 30) + b"x")
for name, e in requests.items():
    open(os.path.join(handler, name), "wb").write(bytes([1]) + struct.pack(">H", len(e)) + e)
# Garbage after a valid request, and a create-then-send session.
open(os.path.join(handler, "garbage"), "wb").write(bytes([1]) + struct.pack(">H", 2) + requests["heartbeat"] + bytes([0, 0, 3, 0xff, 0xff, 0xff]))
seq = b"".join(bytes([1]) + struct.pack(">H", len(requests[k])) + requests[k] for k in ["create_group", "send_group", "history", "members"])
open(os.path.join(handler, "session"), "wb").write(seq)
print(f"wrote {len(requests) + 2} handler seeds and 2 decoder seeds")
