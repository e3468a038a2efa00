"""Throughput of the served mock (200 answers, quotas off), per server.

Serves ``engine mock`` in its own process (pinned to CPU 0 where possible) and
drives it from a second process (pinned to CPU 1): a raw-socket, keep-alive
HTTP/1.1 load generator on epoll, with ``--connections`` connections each
keeping one request in flight (no pipelining).  Prints one JSON object.

    .venv/bin/python benchmarks/mock_throughput.py [--seconds 5] [--connections 64]
        [--servers hypercorn uvicorn]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import selectors
import socket
import time
import urllib.parse
import urllib.request

from engine.mock import serve_in_subprocess

BODY = json.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 16}
).encode()


def _request(host: str, port: int) -> bytes:
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer sk-bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY


def _load(host: str, port: int, connections: int, seconds: float, cpu: int | None, out) -> None:
    """Drive the server; send (ok, other, elapsed) to ``out``."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    request = _request(host, port)
    selector = (
        selectors.EpollSelector()
        if hasattr(selectors, "EpollSelector")
        else (selectors.DefaultSelector())
    )
    buffers: dict[socket.socket, bytearray] = {}
    for _ in range(connections):
        sock = socket.create_connection((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        buffers[sock] = bytearray()
        selector.register(sock, selectors.EVENT_READ)
        sock.send(request)
    ok = other = reconnects = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        now = time.perf_counter()
        if now >= deadline:
            break
        for key, _ in selector.select(deadline - now):
            sock = key.fileobj
            data = sock.recv(65536)
            if not data:  # the server closed a keep-alive connection: open a new one
                reconnects += 1
                selector.unregister(sock)
                del buffers[sock]
                sock.close()
                sock = socket.create_connection((host, port))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setblocking(False)
                buffers[sock] = bytearray()
                selector.register(sock, selectors.EVENT_READ)
                sock.send(request)
                continue
            buffer = buffers[sock]
            buffer += data
            while True:
                head_end = buffer.find(b"\r\n\r\n")
                if head_end < 0:
                    break
                head = bytes(buffer[:head_end]).lower()
                at = head.find(b"content-length:")
                end = head.find(b"\r\n", at)
                length = int(head[at + 15 : end if end >= 0 else len(head)]) if at >= 0 else 0
                total = head_end + 4 + length
                if len(buffer) < total:
                    break
                if head.startswith(b"http/1.1 200"):
                    ok += 1
                else:
                    other += 1
                del buffer[:total]
                sock.send(request)
    elapsed = time.perf_counter() - start
    for sock in buffers:
        sock.close()
    out.send((ok, other, elapsed, reconnects))


def measure(server: str, seconds: float, connections: int) -> dict:
    args = ["--server", server]
    with serve_in_subprocess(args) as base_url:
        parsed = urllib.parse.urlsplit(base_url)
        stats_url = f"{parsed.scheme}://{parsed.netloc}/_mock/stats"
        pids = _server_pids()
        if pids and hasattr(os, "sched_setaffinity"):
            for pid in pids:
                try:
                    os.sched_setaffinity(pid, {0})
                except OSError:
                    pass
        # warm up (tokenizer load, plan cache) before timing
        receiver, sender = multiprocessing.Pipe(duplex=False)
        warm = multiprocessing.Process(
            target=_load, args=(parsed.hostname, parsed.port, 4, 0.5, 1, sender)
        )
        warm.start()
        receiver.recv()
        warm.join()
        urllib.request.urlopen(
            urllib.request.Request(f"{parsed.scheme}://{parsed.netloc}/_mock/reset", method="POST")
        ).read()
        receiver, sender = multiprocessing.Pipe(duplex=False)
        driver = multiprocessing.Process(
            target=_load, args=(parsed.hostname, parsed.port, connections, seconds, 1, sender)
        )
        cpu_before = _cpu_seconds(pids)
        driver.start()
        ok, other, elapsed, reconnects = receiver.recv()
        cpu_used = _cpu_seconds(pids) - cpu_before
        driver.join()
        stats = json.loads(urllib.request.urlopen(stats_url).read())
    return {
        "server": server,
        "connections": connections,
        "seconds": round(elapsed, 2),
        "ok": ok,
        "non_200": other,
        "reconnects": reconnects,
        "req_per_s": round(ok / elapsed),
        "server_cpu_s": round(cpu_used, 2),
        "req_per_server_cpu_s": round(ok / cpu_used) if cpu_used > 0 else None,
        "server_counted_200": stats["status_counts"].get("200", 0),
    }


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by ``pids`` (from /proc; 0 elsewhere)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _server_pids() -> list[int]:
    """PIDs of our own ``engine mock`` children (found via /proc, by parent PID)."""
    me = os.getpid()
    pids = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return pids
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            pids.append(int(entry))
    return pids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured run per server")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections")
    parser.add_argument(
        "--servers", nargs="+", default=["hypercorn", "uvicorn"], choices=["hypercorn", "uvicorn"]
    )
    args = parser.parse_args()
    results = [measure(server, args.seconds, args.connections) for server in args.servers]
    print(
        json.dumps(
            {"benchmark": "mock_throughput", "cpus": os.cpu_count(), "results": results}, indent=2
        )
    )


if __name__ == "__main__":
    main()
