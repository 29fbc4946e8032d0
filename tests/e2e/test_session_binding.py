"""A transport session (Mcp-Session-Id) belongs to the subject that opened
it: (sub, act, sid). Any other token presented on it gets 403, and nothing
it asks for is forwarded (F-04, session hijack)."""

from __future__ import annotations

import anyio
import pytest

from e2e_support import DROP, Gateway, Issuer, Launcher, mandate_bin, read_jsonl, sdk_client, text_of

SCOPE = "docs.search docs.list_customers"


@pytest.fixture(scope="module")
def env(launcher: Launcher, issuer: Issuer):
    rec = launcher.root / "docs-calls.jsonl"
    gw = launcher.gateway(issuer, {
        "docs": {
            "command": str(mandate_bin()), "args": ["demo-server", "--profile", "workspace", "--record", str(rec)],
            "timeout_secs": 10, "tools": {"search": "read", "list_customers": "read"},
        },
    })
    return gw, rec


def hijackers(issuer: Issuer, gw: Gateway, sid: str) -> dict[str, str]:
    aud = gw.audience
    return {
        "another user": issuer.mint(aud, scope=SCOPE, sub="mallory@example.com", sid=sid),
        "same user, another Mandate session": issuer.mint(aud, scope=SCOPE, sid=sid + "-other"),
        "same user and session, another agent": issuer.mint(aud, scope=SCOPE, sid=sid,
                                                            act={"sub": "agent-rogue"}),
        "same user, no sid": issuer.mint(aud, scope=SCOPE, sid=DROP),
    }


def test_other_subject_on_an_existing_session_is_403(env, issuer: Issuer) -> None:
    gw, rec = env
    sid = "sess-alice-binding"
    alice = issuer.mint(gw.audience, scope=SCOPE, sid=sid)
    session = gw.initialize(alice)
    ok = gw.call_tool(alice, session, "docs.search", {"query": "mine"}, rid=1)
    assert ok.status == 200 and "result" in ok.response(1), ok.text
    before = len(read_jsonl(rec))

    for label, tok in hijackers(issuer, gw, sid).items():
        for body in [
            {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
             "params": {"name": "docs.list_customers", "arguments": {}}},
            {"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
        ]:
            reply = gw.post(body, tok, session)
            assert reply.status == 403, f"{label} / {body['method']}: HTTP {reply.status} {reply.text[:300]}"
        # Nor may they end the victim's session.
        r = gw._http.request("DELETE", gw.mcp_url, headers={"Authorization": f"Bearer {tok}", "Mcp-Session-Id": session})
        assert r.status_code == 403, f"{label} / DELETE: HTTP {r.status_code}"
    assert len(read_jsonl(rec)) == before, read_jsonl(rec)[before:]

    # The refusals are on the record, as alice's session's attackers.
    refusals = gw.audit_rows("effect = 'deny' AND sub = 'mallory@example.com'")
    assert refusals, "no audit record of the hijack attempt"

    # The owner's session is unharmed; a fresh token for the same
    # (sub, act, sid), e.g. after a refresh, may continue it.
    again = gw.call_tool(alice, session, "docs.search", {"query": "still mine"}, rid=4)
    assert again.status == 200 and "result" in again.response(4), again.text
    refreshed = issuer.mint(gw.audience, scope=SCOPE, sid=sid)
    assert refreshed != alice
    third = gw.call_tool(refreshed, session, "docs.search", {"query": "refreshed"}, rid=5)
    assert third.status == 200 and "result" in third.response(5), third.text


def test_sdk_sessions_of_two_users_stay_separate(env, issuer: Issuer) -> None:
    """Two official SDK clients at once, each on its own session, both work."""
    gw, _ = env

    async def one(sub: str) -> str:
        tok = issuer.mint(gw.audience, scope=SCOPE, sub=sub, sid=f"sess-{sub}")
        async with sdk_client(gw.mcp_url, tok) as c:
            return text_of(await c.call_tool("docs.search", {"query": sub}))

    async def go() -> list[str]:
        out: list[str] = ["", ""]

        async def run(i: int, sub: str) -> None:
            out[i] = await one(sub)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, 0, "alice@example.com")
            tg.start_soon(run, 1, "bob@example.com")
        return out

    a, b = anyio.run(go)
    assert a and b
