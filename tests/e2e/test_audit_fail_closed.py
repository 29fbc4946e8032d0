"""Write-ahead audit: when the audit store cannot write, tool calls are
denied and not forwarded, and /healthz says so.

The data directory lives on a 512 KiB tmpfs that the test fills up after the
gateway has started; this needs permission to mount (root in the CI
container). Without it the test is skipped, saying why.
"""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from pathlib import Path

import pytest

from e2e_support import Issuer, Launcher, mandate_bin, read_jsonl


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(directory: Path) -> None:
    """Fills the file system holding `directory` to the last byte."""
    with contextlib.suppress(OSError), open(directory / f"fill-{uuid.uuid4().hex}", "wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()
    with contextlib.suppress(OSError), open(directory / f"fill-{uuid.uuid4().hex}", "wb") as f:
        while True:
            f.write(b"\0")
            f.flush()


def test_audit_store_unwritable_denies_and_does_not_forward(
    tiny_tmpfs: Path, fresh_launcher: Launcher, issuer: Issuer
) -> None:
    rec = fresh_launcher.root / "docs-calls.jsonl"  # outside the tmpfs
    gw = fresh_launcher.gateway(issuer, {
        "docs": {
            "command": str(mandate_bin()), "args": ["demo-server", "--profile", "workspace", "--record", str(rec)],
            "timeout_secs": 10, "tools": {"search": "read"},
        },
    }, data_dir=tiny_tmpfs / "data")
    fresh_launcher.cleanups.append(lambda: [p.unlink() for p in tiny_tmpfs.glob("fill-*")])
    tok = issuer.mint(gw.audience, scope="docs.search")
    session = gw.initialize(tok)

    # Positive control: with a writable store the call goes through.
    ok = gw.call_tool(tok, session, "docs.search", {"query": "before"}, rid=1)
    assert ok.status == 200 and "result" in ok.response(1), ok.text
    assert [c["arguments"] for c in read_jsonl(rec)] == [{"query": "before"}]

    fill(tiny_tmpfs)

    for i in range(3):
        reply = gw.call_tool(tok, session, "docs.search", {"query": f"during-{i}"}, rid=10 + i)
        err = reply.error(10 + i)
        assert err["code"] == -32003, err
        assert (err.get("data") or {}).get("reason") == "audit_unavailable", err
    assert [c["arguments"] for c in read_jsonl(rec)] == [{"query": "before"}], \
        "a call was forwarded although its decision could not be recorded"

    health = gw.get("/healthz")
    assert health.status_code == 503, f"/healthz {health.status_code} {health.text}"
    assert gw.proc.alive(), gw.proc.stderr()[-2000:]

    # Space comes back: the gateway recovers without a restart, and the
    # chain it wrote is intact.
    for p in tiny_tmpfs.glob("fill-*"):
        p.unlink()
    reply = gw.call_tool(tok, session, "docs.search", {"query": "after"}, rid=20)
    assert reply.status == 200 and "result" in reply.response(20), reply.text
    assert read_jsonl(rec)[-1]["arguments"] == {"query": "after"}
    assert gw.get("/healthz").status_code == 200
    verify = gw.cli("audit", "verify", "--data-dir", str(gw.data_dir))
    assert verify.returncode == 0, verify.stdout + verify.stderr
