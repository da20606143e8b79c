#!/usr/bin/env python3
"""The end-to-end suite's DNS server: UDP on loopback, authoritative for one name, standard
library only. It is what gRPC-Go's `dns://AUTHORITY/NAME:PORT` resolver inside the gateway asks.

  A    NAME                 the --a addresses, in the order given (TTL 1)
  any other type of NAME    NOERROR, no records (Go's resolver asks AAAA beside A)
  any name under NAME       NOERROR, no records: gRPC-Go asks TXT `_grpc_config.NAME` (service
                            config) and, when grpclb is linked in (the v5.14.0 gateway links
                            it), SRV `_grpclb._tcp.NAME`
  anything else             NXDOMAIN (e.g. NAME with a search domain of /etc/resolv.conf appended)

Every question is logged as one line `query <id> <name> <type> -> <rcode> <n answers>`, so a test
can tell the gateway really asked this server. Answers carry AA and RA: Go's resolver treats a
NOERROR answer with neither bit as a lame referral. Truncation never happens (answers are tiny),
so no TCP listener.

    dns_server.py --name dispatchers.e2e.test --a 127.0.0.1 --a 127.0.0.2 --ready-file PATH

It binds 127.0.0.1 on a free port (or --port) and writes the port to the ready file.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import struct
import sys

TYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV", 41: "OPT",
         65: "HTTPS", 255: "ANY"}
NOERROR, FORMERR, NXDOMAIN, NOTIMP = 0, 1, 3, 4


def parse_name(packet: bytes, offset: int) -> tuple[str, int]:
    """A name of the question section (no compression pointers in questions of real clients,
    but they are followed anyway); returns the lower-cased name with a trailing dot."""
    labels: list[str] = []
    jumped_end: int | None = None
    hops = 0
    while True:
        length = packet[offset]
        if length & 0xC0 == 0xC0:
            if hops > 16:
                raise ValueError("compression loop")
            pointer = struct.unpack_from("!H", packet, offset)[0] & 0x3FFF
            if jumped_end is None:
                jumped_end = offset + 2
            offset, hops = pointer, hops + 1
            continue
        offset += 1
        if length == 0:
            break
        labels.append(packet[offset:offset + length].decode("ascii", errors="replace").lower())
        offset += length
    return ".".join(labels) + ".", (jumped_end if jumped_end is not None else offset)


def answer(packet: bytes, name: str, addresses: list[bytes]) -> tuple[bytes, str]:
    """The reply to one query packet, and the log line for it."""
    ident, flags, qdcount = struct.unpack_from("!HHH", packet, 0)
    opcode = (flags >> 11) & 0xF
    rd = flags & 0x0100
    if qdcount != 1 or opcode != 0:
        rcode = NOTIMP if opcode != 0 else FORMERR
        header = struct.pack("!HHHHHH", ident, 0x8000 | (opcode << 11) | 0x0400 | rd | 0x0080 | rcode, 0, 0, 0, 0)
        return header, f"query {ident} opcode={opcode} qdcount={qdcount} -> rcode {rcode}"
    qname, end = parse_name(packet, 12)
    qtype, qclass = struct.unpack_from("!HH", packet, end)
    question = packet[12:end + 4] if end <= len(packet) - 4 else b""
    records: list[bytes] = []
    if qname == name:
        rcode = NOERROR
        if qtype == 1 and qclass == 1:
            for addr in addresses:
                # Name: a pointer to the question's name at offset 12; type A, class IN, TTL 1.
                records.append(struct.pack("!HHHIH", 0xC00C, 1, 1, 1, 4) + addr)
    elif qname.endswith("." + name):
        rcode = NOERROR
    else:
        rcode = NXDOMAIN
    # QR, opcode, AA, RD copied, RA, rcode.
    reply_flags = 0x8000 | 0x0400 | rd | 0x0080 | rcode
    header = struct.pack("!HHHHHH", ident, reply_flags, 1, len(records), 0, 0)
    kind = TYPES.get(qtype, str(qtype))
    return header + question + b"".join(records), f"query {ident} {qname} {kind} -> rcode {rcode} {len(records)} answers"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True, help="the one name answered (without the trailing dot)")
    parser.add_argument("--a", action="append", required=True, help="an IPv4 address for A queries (repeat)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file", required=True)
    args = parser.parse_args()
    name = args.name.lower().rstrip(".") + "."
    addresses = [ipaddress.IPv4Address(a).packed for a in args.a]

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", args.port))
    port = sock.getsockname()[1]
    print(f"dns server on 127.0.0.1:{port} for {name} -> {', '.join(args.a)}", flush=True)
    tmp = args.ready_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.replace(tmp, args.ready_file)
    while True:
        packet, peer = sock.recvfrom(4096)
        try:
            reply, line = answer(packet, name, addresses)
        except (IndexError, ValueError, struct.error) as err:
            print(f"malformed query from {peer}: {err!r}", flush=True)
            continue
        sock.sendto(reply, peer)
        print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
