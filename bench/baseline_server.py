#!/usr/bin/env python3
"""The throughput baseline: a Python grpc.aio coprocess.Dispatcher like the tutorial's seed.

Dispatch returns the Object it was sent (decoded and re-encoded by protobuf, as the seed's
server does) and DispatchEvent returns an empty EventReply. Unlike the seed it logs nothing,
so the comparison measures the gRPC stack rather than JSON logging.

The Python stubs are generated at start-up with grpcio-tools from proto/*.proto into a
temporary directory, so no generated code is kept in the repository.

    python bench/baseline_server.py 127.0.0.1:50052 [--ready-file PATH]
"""

import argparse
import asyncio
import glob
import importlib
import os
import shutil
import signal
import sys
import tempfile

import grpc
from grpc_tools import protoc

PROTO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "proto")


def generate_stubs(out_dir: str) -> None:
    """Compiles every proto in PROTO_DIR into Python modules in out_dir."""
    protos = sorted(glob.glob(os.path.join(PROTO_DIR, "*.proto")))
    if not protos:
        sys.exit(f"baseline_server: no .proto files in {PROTO_DIR}")
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"--proto_path={PROTO_DIR}",
            f"--proto_path={well_known}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *protos,
        ]
    )
    if code != 0:
        sys.exit(f"baseline_server: protoc failed with exit code {code}")


async def serve(address: str, ready_file: str | None, pb2, pb2_grpc) -> None:
    class Dispatcher(pb2_grpc.DispatcherServicer):
        async def Dispatch(self, request, context):
            return request

        async def DispatchEvent(self, request, context):
            return pb2.EventReply()

    server = grpc.aio.server()
    pb2_grpc.add_DispatcherServicer_to_server(Dispatcher(), server)
    if server.add_insecure_port(address) == 0:
        sys.exit(f"baseline_server: cannot listen on {address}")
    await server.start()
    if ready_file:
        with open(ready_file, "w") as f:
            f.write(f"{os.getpid()}\n")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", help="listen address, e.g. 127.0.0.1:50052")
    parser.add_argument("--ready-file", help="written with the pid once the server listens")
    args = parser.parse_args()

    stub_dir = tempfile.mkdtemp(prefix="coprocess-stubs-")
    try:
        generate_stubs(stub_dir)
        sys.path.insert(0, stub_dir)
        pb2 = importlib.import_module("coprocess_object_pb2")
        pb2_grpc = importlib.import_module("coprocess_object_pb2_grpc")
    finally:
        # The modules are loaded; the files are no longer needed.
        shutil.rmtree(stub_dir, ignore_errors=True)
    asyncio.run(serve(args.address, args.ready_file, pb2, pb2_grpc))


if __name__ == "__main__":
    main()
