"""Connection capacity (issue 4): 100,000 idle device connections on this one machine.

Run:  .venv/bin/python benchmarks/connections.py [--connections 100000] [--workers 6]
          [--max-per-worker 17000] [--extra 2000] [--hold 30]

1. creates a throwaway database and starts ``hj212-gateway serve --workers W`` with
   ``listen.max_connections`` = ``--max-per-worker`` (one process may open at most 20,000
   files here, so 100,000 connections need several workers);
2. opens ``--connections`` TCP connections from client processes (each below the file
   limit, each connection bound to its own 127.x.y.z source address so the ephemeral port
   range is never the limit); every connection sends one real-time upload for its own MN
   (so the gateway holds a session per connection, as for a real DAU), gets its reply,
   then stays silent;
3. holds them for ``--hold`` seconds, sampling the gateway's RSS and open files summed
   over its workers, and /metrics (connections open, per worker too);
4. opens ``--extra`` more connections: with ``W x max-per-worker`` below the total, the
   fullest workers refuse them at accept time, and ``hj212_connections_refused_total``
   counts them;
5. reports connections held, marginal RSS per connection ((RSS with N - RSS with none) /
   N), open files, refusals, and writes ``benchmarks/results/<date>-connections.md/.json``.

The reference is the kernel's side of the same sockets: a bare process holding N accepted
sockets costs (RSS) what the report's "bare accept" line says, measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import multiprocessing as mp
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from e2e import (
    ADMIN_DSN,
    GatewayProcess,
    Sampler,
    command_line,
    free_port,
    machine,
    metric_sum,
    rss_kb,
    scrape,
    server_info,
    table,
    throwaway_database,
    write_report,
)

from protocol import build_segment, encode_frame

PER_CLIENT_PROCESS: Final = 15_000
"""Client sockets per process: under the 20,000 open files one process may have."""
CONNECT_CONCURRENCY: Final = 500
"""Connects in flight per client process (the listen backlog is 4,096 here)."""
UPLOAD_REPLY_TIMEOUT_S: Final = 60.0
LOCAL_OFFSET_S: Final = 8 * 3_600


def _source(i: int) -> str:
    """127.x.y.z source address of client socket ``i`` (never 127.0.0.1, the listener's)."""
    n = i + 2
    return f"127.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255 or 1}"


def _upload(mn: str) -> bytes:
    now = time.time() + LOCAL_OFFSET_S
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
    segment = build_segment(
        qn=f"{stamp}000",
        st="32",
        cn="2011",
        pw="123456",
        mn=mn,
        flag=5,
        cp=[("DataTime", stamp), ("w01018-Rtd", "12.5"), ("w01018-Flag", "N")],
    )
    return encode_frame(segment)


def _client_main(  # noqa: PLR0917 (a process target takes its arguments by position)
    port: int, first: int, count: int, hold_s: float, results: Any, go: Any
) -> None:
    """Open ``count`` connections (indices ``first``...), upload once on each, report how many
    were replied to, wait for ``go``, hold ``hold_s``, report how many are still open."""
    import uvloop

    async def one(
        i: int, sem: asyncio.Semaphore, socks: list[socket.socket], out: dict[str, int]
    ) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setblocking(False)
        async with sem:
            try:
                sock.bind((_source(i), 0))
                await loop.sock_connect(sock, ("127.0.0.1", port))
            except OSError:
                out["failed"] += 1
                sock.close()
                return
            try:
                await loop.sock_sendall(sock, _upload(f"3299{i:020d}"))
                async with asyncio.timeout(UPLOAD_REPLY_TIMEOUT_S):
                    reply = await loop.sock_recv(sock, 1024)
            except (OSError, TimeoutError):
                reply = b""
        if b"CN=9014" in reply:
            out["replied"] += 1
            socks.append(sock)
        else:
            out["refused"] += 1  # accepted by the kernel, then closed: a full worker
            sock.close()

    async def run() -> None:
        out = {"replied": 0, "refused": 0, "failed": 0}
        socks: list[socket.socket] = []
        sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
        await asyncio.gather(*(one(first + k, sem, socks, out) for k in range(count)))
        results.put(("opened", out))
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        await asyncio.sleep(hold_s)
        still = 0
        for s in socks:
            try:
                data = s.recv(1)
            except BlockingIOError:
                still += 1  # nothing to read and not closed: still held
                continue
            except OSError:
                continue
            if data:
                still += 1
        results.put(("held", {"still_open": still}))
        for s in socks:
            s.close()

    uvloop.run(run())


def _bare_accept_rss(n: int) -> dict[str, float]:
    """The reference: RSS of a bare asyncio process that accepted ``n`` connections and
    holds them (sockets only, no protocol state), in the same run."""
    ctx = mp.get_context("spawn")
    port = free_port()
    ready, results = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_bare_server, args=(port, n, ready, results), daemon=True)
    proc.start()
    ready.wait(30)
    base = rss_kb([proc.pid])
    clients = []
    go = ctx.Event()
    per = PER_CLIENT_PROCESS
    for first in range(0, n, per):
        c = ctx.Process(
            target=_bare_client, args=(port, first, min(per, n - first), results, go), daemon=True
        )
        c.start()
        clients.append(c)
    held = results.get(timeout=600)
    full = rss_kb([proc.pid])
    go.set()
    for c in clients:
        c.join(60)
    proc.terminate()
    proc.join(10)
    return {"connections": held, "rss_kb_empty": base, "rss_kb_full": full,
            "bytes_per_connection": (full - base) * 1024 / max(1, held)}  # fmt: skip


def _bare_server(port: int, n: int, ready: Any, results: Any) -> None:
    import uvloop

    async def run() -> None:
        held: list[asyncio.BaseTransport] = []
        done = asyncio.Event()

        class Hold(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                held.append(transport)
                if len(held) >= n:
                    done.set()

        server = await asyncio.get_running_loop().create_server(
            Hold, "127.0.0.1", port, backlog=4096
        )
        ready.set()
        await done.wait()
        results.put(len(held))
        await asyncio.sleep(3600)
        server.close()

    uvloop.run(run())


def _bare_client(port: int, first: int, count: int, results: Any, go: Any) -> None:
    socks = []
    for k in range(count):
        s = socket.socket()
        s.bind((_source(first + k), 0))
        with contextlib.suppress(OSError):
            s.connect(("127.0.0.1", port))
            socks.append(s)
    go.wait(600)
    for s in socks:
        s.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = dt.datetime.now().astimezone()
    os.environ["HJ212_LISTEN__MAX_CONNECTIONS"] = str(args.max_per_worker)
    os.environ["HJ212_LISTEN__IDLE_TIMEOUT_S"] = str(max(900.0, args.hold * 4))
    # Loopback metrics: 100,000 client sockets hold ephemeral ports on many 127.x
    # addresses (TIME_WAIT after a run), and a 0.0.0.0 bind of a port picked on 127.0.0.1
    # can collide with one of them.
    os.environ["HJ212_METRICS__HOST"] = "127.0.0.1"
    ctx = mp.get_context("spawn")
    with throwaway_database(args.admin_dsn) as dsn:
        pg_version, _ = asyncio.run(server_info(dsn))
        log = Path(f"/tmp/hj212-bench-connections-{os.getpid()}.log")
        gw = GatewayProcess(dsn, workers=args.workers, log_path=log)
        gw.start()
        sampler = Sampler(gw, 1.0)
        try:
            time.sleep(2.0)
            base = sampler.take()
            sampler.start()
            results: Any = ctx.Queue()
            go = ctx.Event()
            clients = []
            t0 = time.monotonic()
            total = args.connections + args.extra
            for first in range(0, args.connections, PER_CLIENT_PROCESS):
                count = min(PER_CLIENT_PROCESS, args.connections - first)
                c = ctx.Process(
                    target=_client_main,
                    args=(gw.port, first, count, args.hold, results, go),
                    daemon=True,
                )
                c.start()
                clients.append(c)
            opened = _sum_reports(results, len(clients), "opened")
            connect_s = time.monotonic() - t0
            time.sleep(3.0)  # the last batches and presence rows
            full = sampler.take()
            # Beyond capacity: the fullest workers refuse at accept time, and count it.
            extra = ctx.Process(
                target=_client_main,
                args=(gw.port, args.connections, args.extra, 1.0, results, go),
                daemon=True,
            )
            extra.start()
            extra_opened = _sum_reports(results, 1, "opened")
            go.set()
            held = _sum_reports(results, len(clients) + 1, "held")
            after = sampler.take()
            metrics = scrape(gw.metrics_port)
            sampler.stop()
            for c in [*clients, extra]:
                c.join(60)
        finally:
            code = gw.stop()
    bare = _bare_accept_rss(min(args.connections, args.bare))
    n = opened["replied"]
    return {
        "benchmark": "connections",
        "started": started.isoformat(timespec="seconds"),
        "command": command_line("benchmarks/connections.py", args.argv),
        "machine": {**machine(), "postgresql": pg_version},
        "workers": args.workers,
        "max_per_worker": args.max_per_worker,
        "asked": {"connections": args.connections, "extra": args.extra, "total": total},
        "opened": opened,
        "extra_opened": extra_opened,
        "held_after_hold": held["still_open"],
        "connect_s": connect_s,
        "hold_s": args.hold,
        "rss_kb_none": base.rss_kb,
        "rss_kb_full": full.rss_kb,
        "marginal_rss_bytes_per_connection": (full.rss_kb - base.rss_kb) * 1024 / max(1, n),
        "open_files_none": base.fds,
        "open_files_full": full.fds,
        "gateway_connections_open": full.conns,
        "refused_total": metric_sum(metrics, "hj212_connections_refused_total"),
        "refused_by_reason": {
            k: v for k, v in metrics.items() if k.startswith("hj212_connections_refused_total")
        },
        "rss_kb_after_extra": after.rss_kb,
        "gateway_exit_code": code,
        "gateway_command": " ".join(gw.command()).replace(dsn, "<dsn>"),
        "bare_accept_reference": bare,
        "samples": [s.__dict__ for s in sampler.samples],
    }


def _sum_reports(results: Any, n: int, kind: str) -> dict[str, int]:
    total: dict[str, int] = {}
    got = 0
    while got < n:
        what, part = results.get(timeout=900)
        if what != kind:
            raise RuntimeError(f"expected {kind!r} reports, got {what!r}")
        got += 1
        for k, v in part.items():
            total[k] = total.get(k, 0) + v
    return total


def render(d: dict[str, Any]) -> str:
    mb = 1 / 1024
    bare = d["bare_accept_reference"]
    per_conn = d["marginal_rss_bytes_per_connection"]
    rows = [
        ("workers; listen.max_connections per worker", f"{d['workers']}; {d['max_per_worker']:,}"),
        (
            "connections asked; replied to and held; failed",
            f"{d['asked']['connections']:,}; {d['opened']['replied']:,}; "
            f"{d['opened']['failed']:,} (closed by the gateway {d['opened']['refused']:,})",
        ),
        ("time to open them and get every reply", f"{d['connect_s']:.1f} s"),
        ("still open after the hold", f"{d['held_after_hold']:,} ({d['hold_s']:.0f} s)"),
        (
            "gateway hj212_connections_open (all workers, all held)",
            f"{d['gateway_connections_open']:,.0f}",
        ),
        (
            "gateway RSS (all workers): none / all held",
            f"{d['rss_kb_none'] * mb:.1f} / {d['rss_kb_full'] * mb:.1f} MB",
        ),
        ("marginal RSS per connection", f"{per_conn / 1024:.2f} KB"),
        (
            "open files (all workers): none / all held",
            f"{d['open_files_none']:,} / {d['open_files_full']:,}",
        ),
        (
            f"extra connections beyond capacity ({d['asked']['extra']:,})",
            f"replied {d['extra_opened']['replied']:,}, refused {d['extra_opened']['refused']:,}, "
            f"failed {d['extra_opened']['failed']:,}",
        ),
        (
            "refusals counted by the gateway",
            ", ".join(f"{k} {v:,.0f}" for k, v in d["refused_by_reason"].items()) or "none",
        ),
        ("gateway exit code (SIGTERM at the end)", str(d["gateway_exit_code"])),
    ]
    ref = [
        (
            f"bare uvloop process holding {bare['connections']:,} accepted sockets",
            f"{bare['bytes_per_connection'] / 1024:.2f} KB per connection",
            f"gateway {per_conn / max(1.0, bare['bytes_per_connection']):.1f}x",
        )
    ]
    ok = d["opened"]["replied"] >= 100_000 and per_conn <= 10 * 1024
    m = d["machine"]
    return "\n".join(
        [
            f"# Connection capacity ({d['started']})",
            "",
            f"`{d['command']}` (commit {m['commit']}, {m['cpus']} CPUs, Python {m['python']}).",
            f"Gateway: `{d['gateway_command']}`. Loopback only.",
            "",
            table(("figure", "value"), rows),
            "",
            "Reference, measured in the same run:",
            "",
            table(("reference", "cost", "ratio"), ref),
            "",
            "Target (issue 4): 100,000 concurrent idle connections held, marginal RSS <= 10 KB "
            f"per connection: {'met' if ok else 'MISSED'}.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=100_000)
    p.add_argument("--workers", type=int, default=6)
    p.add_argument("--max-per-worker", type=int, default=17_000)
    p.add_argument("--extra", type=int, default=5_000, help="connections beyond the first N")
    p.add_argument("--hold", type=float, default=30.0, help="seconds all are held")
    p.add_argument("--bare", type=int, default=15_000, help="sockets in the bare reference")
    p.add_argument("--admin-dsn", default=ADMIN_DSN)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    args.argv = argv
    data = run(args)
    md = render(data)
    print(md)
    if not args.no_write:
        paths = write_report("connections", md, data)
        print(f"written: {paths[0]}, {paths[1]}")
    return 0 if data["opened"]["replied"] >= args.connections * 0.99 else 1


if __name__ == "__main__":
    sys.exit(main())
