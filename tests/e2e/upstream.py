#!/usr/bin/env python3
"""The end-to-end suite's upstream: an HTTP/1.1 server on loopback that tells what it received.

Every request is answered 200 with a JSON document: method, path, raw query, every header with
all its values (in the order received), and the length and SHA-256 of the body. Some paths
shape the answer instead, so Response hooks have something to work on:

  /slow?ms=N                   waits N ms before answering (a request in flight during a drain)
  /cookies                     two Set-Cookie headers of the upstream's own
  /bytes?n=N&kind=binary|json  an N-byte body (deterministic; `json` is one valid UTF-8 document)

    upstream.py PORT [--ready-file PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def payload(n: int, kind: str) -> bytes:
    """An n-byte body: pseudo-random bytes (every value 0-255), or a JSON string document."""
    if kind == "json":
        if n < 2:
            raise ValueError("a JSON body needs at least 2 bytes")
        filler = ("é-ü-" * (n // 6 + 1)).encode()[: n - 2]
        # Cut on a character boundary and pad with ASCII to the exact length.
        filler = filler.decode("utf-8", errors="ignore").encode()
        return b'"' + filler + b"x" * (n - 2 - len(filler)) + b'"'
    block = hashlib.sha256(b"e2e").digest()
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(block + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:n])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "e2e-upstream"

    def log_message(self, fmt: str, *args) -> None:  # one line per request, to the log file
        sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        headers: dict[str, list[str]] = {}
        for name, value in self.headers.items():
            headers.setdefault(name, []).append(value)
        seen = {
            "method": self.command,
            "path": url.path,
            "query": url.query,
            "headers": headers,
            "body_bytes": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        }
        extra: list[tuple[str, str]] = []
        out = json.dumps(seen).encode()
        content_type = "application/json"
        if url.path.endswith("/slow"):
            time.sleep(int(query.get("ms", ["1000"])[0]) / 1000)
        elif url.path.endswith("/cookies"):
            extra = [("Set-Cookie", "upstream1=a; Path=/"), ("Set-Cookie", "upstream2=b; Path=/")]
        elif url.path.endswith("/bytes"):
            kind = query.get("kind", ["binary"])[0]
            out = payload(int(query["n"][0]), kind)
            content_type = "application/json" if kind == "json" else "application/octet-stream"
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(out)))
        self.send_header("X-Upstream", "e2e")
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _answer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--ready-file")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    if args.ready_file:
        with open(args.ready_file, "w") as f:
            f.write("ready\n")
    server.serve_forever()


if __name__ == "__main__":
    main()
