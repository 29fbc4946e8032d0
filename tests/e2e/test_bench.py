"""`mandate bench`, the reproducible performance command of
docs/BENCHMARKS.md, kept working end to end. The loads are tiny and nothing
here is timed (timed tests are not benchmarks): the tests check that every
benchmark call went through a gateway that recorded it durably, against the
built-in demo server and against the official reference server over
Streamable HTTP."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

from e2e_support import Launcher, everything_entry, free_port, mandate_bin, run_mandate

SEQUENTIAL = 20
WARM_UP = 50  # sequential calls per path before the measured ones
CLIENTS = 3


def run_bench(tmp_path: Path, *extra: str) -> str:
    r = run_mandate("bench", "--sequential-calls", str(SEQUENTIAL), "--seconds", "1",
                    "--concurrency", str(CLIENTS), "--data-dir", str(tmp_path / "bench"), *extra,
                    timeout=240)
    assert r.returncode == 0, f"bench failed:\n{r.stdout}\n{r.stderr[-3000:]}"
    return r.stdout


def check_report(out: str) -> None:
    """All three paths (direct, the bare MCP proxy baseline, Mandate) served
    calls, and the gateway recorded each of its calls (a decision and an
    outcome record per call) durably."""
    rate = re.search(
        r"\| throughput, \d+ clients \| (\d+) calls/s \| (\d+) calls/s \| (\d+) calls/s \| ([\d.]+)× \| ([\d.]+)× \|",
        out,
    )
    assert rate, out
    direct, proxy, through = int(rate[1]), int(rate[2]), int(rate[3])
    assert direct > 0 and proxy > 0 and through > 0, out
    seq = re.search(r"\| sequential p50 latency \| ([\d.]+) ms \| ([\d.]+) ms \| ([\d.]+) ms \|", out)
    assert seq and all(float(seq[i]) > 0 for i in (1, 2, 3)), out
    assert re.search(r"Mandate's own work adds p50 [+-][\d.]+ ms", out), out
    # (The fsync time itself may print as 0.000 on a memory-backed temp dir.)
    assert re.search(r"fsync .*: p50 [\d.]+ ms", out), out
    audit = re.search(r"Audit: (\d+) records", out)
    assert audit, out
    # Sequential calls (warm-up and measured), one warm-up call per throughput
    # client, then at least one call per client in the throughput second.
    gateway_calls = WARM_UP + SEQUENTIAL + 2 * CLIENTS
    assert int(audit[1]) >= 2 * gateway_calls, out


def test_bench_against_the_demo_server(tmp_path: Path) -> None:
    out = run_bench(tmp_path)
    check_report(out)
    assert "built-in demo server" in out


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


def test_bench_against_the_reference_server_over_http(tmp_path: Path, fresh_launcher: Launcher) -> None:
    node, script, _stdio = everything_entry()
    port = free_port()
    server = fresh_launcher.spawn([node, script, "streamableHttp"], "everything-http", env={"PORT": str(port)})
    wait_port(port)
    url = f"http://127.0.0.1:{port}/mcp"
    out = run_bench(tmp_path, "--upstream-url", url, "--tool", "echo", "--arguments", '{"message": "bench"}')
    check_report(out)
    assert f"Upstream: {url}, tool `echo`" in out
    assert server.alive()


def test_bench_drives_a_peer_gateway_beside_mandate(tmp_path: Path, fresh_launcher: Launcher) -> None:
    """`--peer`, as scripts/bench-peers drives agentgateway and ContextForge:
    a gateway already running on loopback (here the bare proxy, started as a
    process of its own) joins the same run with the same tool and arguments,
    its token file is sent, and its CPU per call is read from its process,
    as Mandate's and the upstream's are."""
    up_port, peer_port = free_port(), free_port()
    upstream = fresh_launcher.spawn(
        [str(mandate_bin()), "demo-server", "--profile", "workspace", "--http", f"127.0.0.1:{up_port}"], "upstream")
    wait_port(up_port)
    url = f"http://127.0.0.1:{up_port}/mcp"
    peer = fresh_launcher.spawn(
        [str(mandate_bin()), "bench-proxy", "--listen", f"127.0.0.1:{peer_port}", "--upstream", url], "peer")
    wait_port(peer_port)
    token = tmp_path / "peer-token"
    token.write_text("not-checked-by-this-peer\n")
    out = run_bench(tmp_path, "--upstream-url", url, "--upstream-pid", str(upstream.pid),
                    "--peer", f"other=http://127.0.0.1:{peer_port}/mcp,tool=search,token={token},pid={peer.pid}")
    check_report(out)
    assert "## Side by side" in out, out
    rows = {m[1]: m for m in re.finditer(
        r"^\| (direct|bare MCP proxy|Mandate|other) \| ([\d.]+) / ([\d.]+) ms \|.*?\| (\d+) calls/s \|"
        r".*\| (—|[\d.]+ ms) \| (—|[\d.]+×) \| (—|[\d.]+ ms) \|$", out, re.M)}
    assert set(rows) == {"direct", "bare MCP proxy", "Mandate", "other"}, out
    assert all(int(r[4]) > 0 for r in rows.values()), out
    # CPU per call is read for every gateway process, never for direct; the
    # upstream's for every target.
    assert rows["direct"][5] == "—", out
    for name in ("bare MCP proxy", "Mandate", "other"):
        assert rows[name][5].endswith(" ms"), out
    assert all(r[7].endswith(" ms") for r in rows.values()), out
    assert peer.alive() and upstream.alive()


def test_bench_refuses_a_peer_off_loopback(tmp_path: Path) -> None:
    r = run_mandate("bench", "--peer", "far=http://192.0.2.1:3000/mcp", "--data-dir", str(tmp_path / "bench"),
                    timeout=60)
    assert r.returncode != 0
    assert "only http:// on loopback" in r.stderr


def test_bench_refuses_arguments_that_are_not_an_object(tmp_path: Path) -> None:
    r = run_mandate("bench", "--arguments", "[1, 2]", "--data-dir", str(tmp_path / "bench"), timeout=60)
    assert r.returncode != 0
    assert "the arguments must be a JSON object" in r.stderr
