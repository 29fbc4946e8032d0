"""The audit log's Merkle proofs, checked by an independent implementation
of RFC 9162 written here from the RFC's own definitions (§2.1.1 tree hash,
§2.1.3 inclusion, §2.1.4 consistency), sharing nothing with Mandate's code:

- every signed checkpoint's root equals the tree hash computed here from
  the leaves read straight out of the SQLite file;
- every inclusion and consistency proof in an evidence bundle is exactly
  the proof the RFC's recursive definition gives, and passes the RFC's
  iterative verification algorithm;
- the same verifier rejects a proof with one altered hash, a proof for the
  wrong leaf, and a consistency proof against the wrong old root."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import time
import uuid
from pathlib import Path

from e2e_support import Issuer, Launcher, mandate_bin, run_mandate


# --- RFC 9162 §2.1, over leaf hashes -------------------------------------------------------

def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(leaves: list[bytes]) -> bytes:
    """MTH(D[n]) of §2.1.1, given the leaf hashes."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = split(len(leaves))
    return node(mth(leaves[:k]), mth(leaves[k:]))


def path(m: int, leaves: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of §2.1.3.1."""
    if len(leaves) <= 1:
        return []
    k = split(len(leaves))
    if m < k:
        return path(m, leaves[:k]) + [mth(leaves[k:])]
    return path(m - k, leaves[k:]) + [mth(leaves[:k])]


def subproof(m: int, leaves: list[bytes], whole: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) of §2.1.4.1."""
    n = len(leaves)
    if m == n:
        return [] if whole else [mth(leaves)]
    k = split(n)
    if m <= k:
        return subproof(m, leaves[:k], whole) + [mth(leaves[k:])]
    return subproof(m - k, leaves[k:], False) + [mth(leaves[:k])]


def verify_inclusion(index: int, size: int, leaf: bytes, proof: list[bytes], root: bytes) -> bool:
    """§2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(first: int, second: int, first_root: bytes, second_root: bytes,
                       proof: list[bytes]) -> bool:
    """§2.1.4.2 (for 0 < first < second)."""
    if not 0 < first < second or not proof:
        return False
    if first & (first - 1) == 0:
        proof = [first_root] + proof
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node(c, fr), node(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0


# --- the test --------------------------------------------------------------------------------

def checkpoint_root(note: str) -> tuple[int, bytes]:
    """Size and root of a C2SP checkpoint note (origin, size, base64 root, blank, signatures)."""
    lines = note.split("\n")
    return int(lines[1]), base64.b64decode(lines[2])


def test_proofs_match_an_independent_rfc9162_implementation(launcher: Launcher, issuer: Issuer,
                                                           tmp_path: Path) -> None:
    exe = str(mandate_bin())
    gw = launcher.gateway(issuer, {
        "docs": {"command": exe, "args": ["demo-server", "--profile", "workspace"], "timeout_secs": 10,
                 "tools": {"search": "read"}},
    }, extra_toml='\n[[operators]]\nsub = "ops@example.com"\nroles = ["admin"]\n\n[audit]\ncheckpoint_interval_secs = 0\n',
        name="proofs")
    ops = issuer.operator_token(gw.api_audience, "ops@example.com")
    sid = "proofs-" + uuid.uuid4().hex[:8]
    tok = issuer.mint(gw.audience, scope="docs.search", sid=sid)
    session = gw.initialize(tok)

    # Three checkpoints, with calls in between.
    calls = 0
    for rounds in (3, 2, 4):
        for i in range(rounds):
            r = gw.call_tool(tok, session, "docs.search", {"query": f"q{rounds}-{i}"}, rid=100 + i)
            assert r.status == 200, r.text
            calls += 1
        # Outcome records land just after the responses: wait for all of
        # them, so each checkpoint covers whole calls.
        deadline = time.monotonic() + 10
        while len(gw.audit_rows("session = ? AND kind = 'outcome'", [f"sid:{sid}"])) < calls:
            assert time.monotonic() < deadline, "outcome records did not arrive"
            time.sleep(0.05)
        made = gw.api("POST", "/api/audit/checkpoint", ops)
        assert made.status_code == 200, made.text

    # The leaves, straight from the file.
    conn = sqlite3.connect(f"file:{gw.audit_db}?mode=ro", uri=True, timeout=10)
    try:
        bodies = [(seq, body) for seq, body in conn.execute("SELECT seq, body FROM audit_log ORDER BY seq")]
        notes = [note for (note,) in conn.execute("SELECT note FROM audit_checkpoints ORDER BY size")]
    finally:
        conn.close()
    assert [s for s, _ in bodies] == list(range(1, len(bodies) + 1))
    leaves = [leaf_hash(b.encode()) for _, b in bodies]

    # 1. Every checkpoint's root is the tree hash of its first `size` leaves.
    roots = dict(checkpoint_root(n) for n in notes)
    assert len(roots) >= 3, roots.keys()
    for size, root in roots.items():
        assert root == mth(leaves[:size]), f"checkpoint {size}: root differs from RFC 9162 MTH"

    # 2. The bundle's proofs are the RFC's proofs, and verify.
    out = tmp_path / "bundle"
    r = run_mandate("audit", "export", "--data-dir", str(gw.data_dir), "--from", "2020-01-01",
                    "--session", f"sid:{sid}", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    proofs = json.loads((out / "proofs.json").read_text())
    n = proofs["tree_size"]
    assert n in roots
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(proofs["inclusion"]) == len(records) >= 18
    for p in proofs["inclusion"]:
        m = p["leaf_index"]
        got = [base64.b64decode(h) for h in p["proof"]]
        assert m == p["seq"] - 1
        assert got == path(m, leaves[:n]), f"inclusion proof of leaf {m} differs from PATH(m, D[{n}])"
        assert verify_inclusion(m, n, leaves[m], got, roots[n])
    assert len(proofs["consistency"]) >= 2, proofs["consistency"]
    for c in proofs["consistency"]:
        a, b = c["from_size"], c["to_size"]
        got = [base64.b64decode(h) for h in c["proof"]]
        assert got == subproof(a, leaves[:b], True), f"consistency proof {a}->{b} differs from PROOF"
        assert verify_consistency(a, b, roots[a], roots[b], got)

    # 3. The verifier here is not a rubber stamp.
    p = proofs["inclusion"][len(proofs["inclusion"]) // 2]
    m = p["leaf_index"]
    good = [base64.b64decode(h) for h in p["proof"]]
    bad = list(good)
    bad[0] = bytes([bad[0][0] ^ 1]) + bad[0][1:]
    assert not verify_inclusion(m, n, leaves[m], bad, roots[n])
    assert not verify_inclusion(m, n, leaves[(m + 1) % n], good, roots[n])
    c = proofs["consistency"][-1]
    a, b = c["from_size"], c["to_size"]
    good = [base64.b64decode(h) for h in c["proof"]]
    assert not verify_consistency(a, b, mth(leaves[: a - 1]), roots[b], good)
