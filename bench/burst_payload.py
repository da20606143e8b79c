"""Writes the benchmarks' large Dispatch payload: the seed Object (as `loadgen --dump-payload`
writes it) with a raw_body (field 14 of the request) of MIB MiB appended.

    python3 bench/burst_payload.py SEED_OBJECT OUT [MIB]     # MIB: 20 by default
"""
import sys

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)

def read_varint(buf, i):
    """The varint at buf[i] and the index after it."""
    n = 0; shift = 0
    while True:
        b = buf[i]; i += 1
        n |= (b & 0x7F) << shift; shift += 7
        if b < 0x80:
            return n, i

def fields(buf):
    i = 0
    while i < len(buf):
        start = i
        key, i = read_varint(buf, i)
        wire = key & 7
        if wire == 0:
            _, i = read_varint(buf, i)
        elif wire == 2:
            n, i = read_varint(buf, i)
            i += n
        else:
            raise SystemExit(f"unexpected wire type {wire}")
        yield key >> 3, buf[start:i]

seed = open(sys.argv[1], "rb").read()
body = b"\xab" * (int(sys.argv[3]) << 20 if len(sys.argv) > 3 else 20 << 20)
out = bytearray()
for number, raw in fields(seed):
    if number == 3:
        header_len = len(varint((3 << 3) | 2))
        # The request's own bytes, then raw_body appended (the seed has none).
        rest = raw[header_len:]
        n, j = read_varint(rest, 0)
        request = bytes(rest[j:j + n]) + varint((14 << 3) | 2) + varint(len(body)) + body
        out += varint((3 << 3) | 2) + varint(len(request)) + request
    else:
        out += raw
open(sys.argv[2], "wb").write(out)
