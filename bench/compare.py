"""Side-by-side Dispatch benchmark driven by h2load: tyk-dispatcher against the servers a Tyk
user would write instead (a plain grpc-go Dispatcher, the tutorial's Python grpc.aio server).

Run through bench/compare.sh, which builds the binaries and the Python environment and passes
their paths. Every server runs alone on SERVER_CPU (one worker: GOMAXPROCS=1 for Go; the
dispatcher sizes its runtime from its CPU affinity), h2load on LOADGEN_CPU. Rounds are
interleaved (the order of the servers rotates each round) and the tables give medians.

Checks on every run: h2load's own counts (every request done and succeeded, status 200), the
DATA bytes it received (each call's reply is the 5-byte gRPC prefix plus the request's bytes,
so a gRPC error, which has no DATA, shows up as missing bytes), and a tonic probe call before
and after the load whose reply must be the request (`loadgen --probe-only`).
"""

import argparse
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVERS = ("rust", "rust-logged", "go", "python")
DESCRIPTIONS = {
    "rust": "tyk-dispatcher, log_calls = false",
    "rust-logged": "tyk-dispatcher, default config (one INFO line per call)",
    "go": "plain grpc-go Dispatcher, GOMAXPROCS=1",
    "python": "tutorial's grpc.aio server",
}


# CPU per call against grpc-go the dispatcher must stay under (issue #13).
GOALS = {"rust": 0.5, "rust-logged": 0.6}


def log(msg):
    print(f"compare: {msg}", file=sys.stderr, flush=True)


class RunFailed(Exception):
    pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ticks(pid):
    """utime + stime of a process (all its threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def machine_busy_ticks():
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return sum(values) - values[3] - values[4]  # all but idle and iowait


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Server:
    def __init__(self, kind, args, workdir):
        self.kind, self.args, self.workdir = kind, args, workdir
        self.port = free_port()
        self.log_path = os.path.join(workdir, f"{kind}-server.log")
        self.proc = None

    def start(self):
        pin = ["taskset", "-c", str(self.args.server_cpu)]
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("TYK_DISPATCHER_", "TYK_GW_COPROCESSOPTIONS_"))}
        addr = f"127.0.0.1:{self.port}"
        if self.kind.startswith("rust"):
            self.admin_port = free_port()
            env["TYK_DISPATCHER_LISTEN"] = addr
            env["TYK_DISPATCHER_ADMIN_LISTEN"] = f"127.0.0.1:{self.admin_port}"
            if self.kind == "rust":
                env["TYK_DISPATCHER_LOG_CALLS"] = "false"
            cmd = pin + [self.args.dispatcher]
        elif self.kind == "go":
            env["GOMAXPROCS"] = "1"
            cmd = pin + [self.args.go_dispatcher, "-listen", f"tcp://{addr}"]
        else:
            cmd = pin + [sys.executable, self.args.python_server, addr]
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.probe(wait=self.args.ready_secs)

    def probe(self, wait=0):
        cmd = [self.args.loadgen, "--target", f"http://127.0.0.1:{self.port}", "--probe-only"]
        if wait:
            cmd += ["--wait-ready-secs", str(wait)]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=wait + 30)
        if result.returncode != 0:
            raise RunFailed(f"{self.kind}: probe failed: {result.stdout.strip()} {result.stderr.strip()}"
                            f"; server log tail: {self.tail()}")

    def tail(self):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.path.getsize(self.log_path) - 1500))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


H2LOAD_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored")
H2LOAD_DATA = re.compile(r"traffic: .*?, .*?\((\d+)\) headers.*?, .*?\((\d+)\) data")
H2LOAD_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index]


def run_h2load(server, args, payload, rps, workdir):
    """One measured run against a started server; returns its figures."""
    request_log = os.path.join(workdir, f"{server.kind}-requests.tsv")

    def h2load(seconds, *extra):
        cmd = ["taskset", "-c", str(args.loadgen_cpu), "h2load",
               "-c", str(args.connections), "-m", str(args.streams), "-t", "1",
               "-D", str(seconds), "-d", payload, *extra,
               "-H", "content-type: application/grpc", "-H", "te: trailers"]
        if rps:
            cmd.append(f"--rps={rps / args.connections:g}")
        cmd.append(f"http://127.0.0.1:{server.port}/coprocess.Dispatcher/Dispatch")
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    # A warm-up run of its own: h2load's --warm-up-time would count the warm-up's DATA bytes
    # with the measured calls.
    warmup = h2load(args.warmup_secs)
    warmup_output, _ = warmup.communicate(timeout=args.warmup_secs + 60)
    if warmup.returncode != 0:
        raise RunFailed(f"{server.kind}: h2load warm-up failed: {warmup_output[-1500:]}")
    pid = server.proc.pid
    start_wall, start_cpu, start_busy = time.time(), cpu_ticks(pid), machine_busy_ticks()
    proc = h2load(args.duration_secs, "--log-file", request_log)
    output, _ = proc.communicate(timeout=args.duration_secs + 60)
    end_wall, end_cpu, end_busy = time.time(), cpu_ticks(pid), machine_busy_ticks()
    if proc.returncode != 0:
        raise RunFailed(f"{server.kind}: h2load exited with {proc.returncode}: {output[-1500:]}")
    if server.proc.poll() is not None:
        raise RunFailed(f"{server.kind}: the server died during the run: {server.tail()}")
    requests, data, status = (H2LOAD_REQUESTS.search(output), H2LOAD_DATA.search(output),
                              H2LOAD_STATUS.search(output))
    if not (requests and data and status):
        raise RunFailed(f"{server.kind}: cannot read h2load's output: {output[-1500:]}")
    total, _, done, succeeded, failed, errored = map(int, requests.groups())
    if failed or errored or succeeded != done or int(status.group(1)) != succeeded:
        raise RunFailed(f"{server.kind}: h2load counted failures: {requests.group(0)}")
    reply_bytes = os.path.getsize(payload)  # the reply echoes the framed request
    data_bytes = int(data.group(2))
    if data_bytes != succeeded * reply_bytes:
        raise RunFailed(f"{server.kind}: {succeeded} calls but {data_bytes} DATA bytes, "
                        f"not {reply_bytes} per call: some calls returned a gRPC error")
    server.probe()

    latencies = []
    with open(request_log) as f:
        for line in f:
            started, status_code, elapsed = line.split("\t")[:3]
            if int(status_code) != 200:
                raise RunFailed(f"{server.kind}: a request got HTTP {status_code}")
            latencies.append(int(elapsed))
    os.unlink(request_log)
    latencies.sort()
    wall = end_wall - start_wall
    cpu_s = (end_cpu - start_cpu) / CLK_TCK
    busy_s = (end_busy - start_busy) / CLK_TCK
    return {
        "calls": succeeded,
        "calls_per_s": succeeded / args.duration_secs,
        "cpu_us_per_call": cpu_s * 1e6 / succeeded if succeeded else None,
        "server_cpu": cpu_s / wall,
        "busy_cpus": busy_s / wall,
        "p50_us": percentile(latencies, 0.50),
        "p99_us": percentile(latencies, 0.99),
        "max_us": latencies[-1] if latencies else None,
        "rss_kib": rss_kib(server.proc.pid),
    }


def run_round(kinds, args, payload, rate_of, workdir):
    """One run per server; `rate_of(kind)` is its fixed rate in calls/s, or 0 for closed loop."""
    results = {}
    for kind in kinds:
        rps = rate_of(kind)
        server = Server(kind, args, workdir)
        try:
            server.start()
            label = f"{rps} calls/s" if rps else f"{args.connections}x{args.streams} closed loop"
            log(f"{kind}: {label}, {args.warmup_secs}s warm-up + {args.duration_secs}s")
            results[kind] = run_h2load(server, args, payload, rps, workdir)
            results[kind]["offered_calls_per_s"] = rps or None
        finally:
            server.stop()
    return results


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, spec):
    return "n/a" if value is None else format(value, spec)


def per_round_ratios(rounds, kinds, peer, key):
    """{server: median over the rounds of its `key` / the `peer`'s}; empty without the peer."""
    if peer not in kinds:
        return {}
    return {kind: median([r[kind][key] / r[peer][key] for r in rounds])
            for kind in kinds if kind != peer}


def report(title, rounds, kinds, judged):
    print(f"\n## {title}: medians of {len(rounds)} rounds\n")
    print("| server | calls/s | CPU µs/call | server CPU | p50 µs | p99 µs | RSS MiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    table = {}
    for kind in kinds:
        runs = [r[kind] for r in rounds]
        row = {key: median([run[key] for run in runs]) for key in runs[0]}
        table[kind] = row
        print(f"| {DESCRIPTIONS[kind]} | {fmt(row['calls_per_s'], ',.0f')} | "
              f"{fmt(row['cpu_us_per_call'], '.1f')} | {fmt(row['server_cpu'] * 100, '.0f')}% | "
              f"{fmt(row['p50_us'], '.0f')} | {fmt(row['p99_us'], '.0f')} | "
              f"{fmt(row['rss_kib'] / 1024, '.1f')} |")
    ratios = per_round_ratios(rounds, kinds, "go", "cpu_us_per_call")
    if ratios:
        print("\nCPU per call against grpc-go, median of the per-round ratios:")
        for kind, ratio in ratios.items():
            goal = GOALS.get(kind) if judged else None
            verdict = "" if goal is None else (
                f" (goal: at most {goal:.2f}: {'met' if ratio <= goal else 'MISSED'})")
            print(f"  {kind}: {ratio:.2f}{verdict}")
    throughput = per_round_ratios(rounds, kinds, "python", "calls_per_s")
    if throughput:
        print("\nThroughput against the Python seed, median of the per-round ratios:")
        for kind, ratio in throughput.items():
            print(f"  {kind}: {ratio:.1f}x")
    return {"medians": table, "cpu_ratio_to_go": ratios, "throughput_ratio_to_python": throughput,
            "rounds": rounds}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dispatcher", required=True)
    parser.add_argument("--go-dispatcher", required=True)
    parser.add_argument("--python-server", required=True)
    parser.add_argument("--loadgen", required=True, help="for the payload and the probe calls")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--warmup-secs", type=int, default=2)
    parser.add_argument("--duration-secs", type=int, default=10)
    parser.add_argument("--rates", default="closed,10000",
                        help="comma-separated: 'closed' (as fast as each server goes), calls/s,"
                             " or N%% of each server's closed-loop capacity (after 'closed')")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--loadgen-cpu", type=int, default=1)
    parser.add_argument("--ready-secs", type=int, default=60)
    parser.add_argument("--json", required=True, help="where to write the results")
    parser.add_argument("--min-python-ratio", type=float, default=0,
                        help="exit 1 when the default config's closed-loop throughput is below"
                             " this multiple of the Python seed's")
    args = parser.parse_args()
    kinds = [k for k in args.servers.split(",") if k]
    for kind in kinds:
        if kind not in SERVERS:
            parser.error(f"unknown server {kind!r}: expected some of {', '.join(SERVERS)}")

    workdir = os.path.dirname(os.path.abspath(args.json))
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, suffix=".object", delete=False) as f:
        object_path = f.name
    subprocess.run([args.loadgen, "--dump-payload", object_path], check=True, capture_output=True)
    body = open(object_path, "rb").read()
    os.unlink(object_path)
    payload = os.path.join(workdir, "dispatch.grpc")
    with open(payload, "wb") as f:  # one gRPC message: uncompressed flag, length, the Object
        f.write(b"\0" + len(body).to_bytes(4, "big") + body)

    results = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
               "settings": vars(args), "tables": {}}
    try:
        for rate in [r for r in args.rates.split(",") if r]:
            if rate == "closed":
                rate_of, title = (lambda kind: 0), (
                    f"{args.connections} connections x {args.streams} streams, closed loop")
            elif rate.endswith("%"):
                # A share of each server's own capacity, measured by the closed-loop runs.
                if "closed" not in results["tables"]:
                    raise RunFailed(f"rate {rate}: list 'closed' before it in --rates")
                capacity = results["tables"]["closed"]["medians"]
                share = float(rate[:-1]) / 100
                rate_of = lambda kind, share=share: int(share * capacity[kind]["calls_per_s"])
                title = f"{rate} of each server's capacity, fixed rate ({args.connections} connections)"
            else:
                rate_of = lambda kind, rps=int(rate): rps
                title = f"fixed {rate} calls/s ({args.connections} connections)"
            rounds = []
            for i in range(args.rounds):
                order = kinds[i % len(kinds):] + kinds[:i % len(kinds)]
                rounds.append(run_round(order, args, payload, rate_of, workdir))
            # The goals are set for the closed loop and for 10 000 calls/s.
            results["tables"][rate] = report(title, rounds, kinds, rate in ("closed", "10000"))
    except RunFailed as err:
        log(f"FAILED: {err}")
        return 2
    finally:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    print(f"\nresults: {args.json}")
    closed = results["tables"].get("closed", {}).get("throughput_ratio_to_python", {})
    if args.min_python_ratio and "rust-logged" in closed and closed["rust-logged"] < args.min_python_ratio:
        log(f"default config / Python throughput {closed.get('rust-logged', 0):.1f}x is below "
            f"the required {args.min_python_ratio:g}x")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
