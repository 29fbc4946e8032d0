"""`mandate serve --check` validates config, policies and upstreams without
serving: a mistake is caught before deployment, with a message that says
what is wrong, instead of at the first tool call."""

from __future__ import annotations

import json
import shutil
import time
import tomllib
from pathlib import Path

import pytest

from e2e_support import POLICY_DIR, Issuer, everything_entry, free_port, gateway_toml, mandate_bin, run_mandate


def write_config(tmp_path: Path, issuer: Issuer, *, upstreams=None, policy_dir: Path = POLICY_DIR,
                 extra: str = "") -> Path:
    if upstreams is None:
        upstreams = {
            "docs": {"command": str(mandate_bin()), "args": ["demo-server", "--profile", "workspace"],
                     "timeout_secs": 10, "tools": {"search": "read", "send_mail": "outbound"}},
        }
    text = gateway_toml(port=free_port(), data_dir=tmp_path / "data", jwks=issuer.jwks_path,
                        issuer=issuer.issuer, upstreams=upstreams, policy_dir=policy_dir)
    path = tmp_path / "mandate.toml"
    path.write_text(text + extra)
    return path


def check(config: Path):
    return run_mandate("serve", "--config", str(config), "--check", timeout=90)


def output(r) -> str:
    return (r.stdout or "") + (r.stderr or "")


def test_good_config_passes_check(tmp_path: Path, issuer: Issuer) -> None:
    node, script, arg = everything_entry()
    config = write_config(tmp_path, issuer, upstreams={
        "docs": {"command": str(mandate_bin()), "args": ["demo-server", "--profile", "workspace"],
                 "timeout_secs": 10, "tools": {"search": "read"}},
        "everything": {"command": node, "args": [script, arg], "timeout_secs": 20, "tools": {"echo": "read"}},
    })
    r = check(config)
    assert r.returncode == 0, output(r)
    assert "configuration OK" in r.stdout, output(r)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root`: size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_check_writes_nothing(tmp_path: Path, issuer: Issuer, fresh_launcher) -> None:
    """`--check` builds what `serve` builds on scratch stores: a data
    directory that does not exist is not created, and the state of a
    gateway that has served (its audit log, control store, keys) is left
    exactly as it was, while the check still reads the real audit log."""
    config = write_config(tmp_path, issuer)
    r = check(config)
    assert r.returncode == 0, output(r)
    assert "(created at first start)" in r.stdout, output(r)
    assert not (tmp_path / "data").exists(), "the check created the data directory"

    # A gateway serves once (writing its audit log and keys), then stops.
    gw = fresh_launcher.gateway(issuer, {
        "docs": {"command": str(mandate_bin()), "args": ["demo-server", "--profile", "workspace"],
                 "timeout_secs": 10, "tools": {"search": "read"}}}, name="served")
    gw.proc.stop()
    before = snapshot(gw.data_dir)
    assert "audit.sqlite" in before, before
    r = check(gw.config)
    assert r.returncode == 0, output(r)
    assert "(readable)" in r.stdout, output(r)
    assert snapshot(gw.data_dir) == before, "the check changed the served gateway's state"


def test_shipped_quickstart_config_passes_check(tmp_path: Path) -> None:
    """The config the README points people at must itself be valid."""
    r = run_mandate("keys", "generate", "--out", str(tmp_path / "data" / "dev-issuer"))
    assert r.returncode == 0, output(r)
    cfg_dir = tmp_path / "quickstart"
    shutil.copytree(POLICY_DIR.parent, cfg_dir)
    r = run_mandate("serve", "--config", str(cfg_dir / "mandate.toml"), "--data-dir", str(tmp_path / "data"),
                    "--check", timeout=90)
    assert r.returncode == 0, output(r)
    assert "configuration OK" in r.stdout
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["dev-issuer"], "the check wrote state"


@pytest.mark.parametrize("section,key", [("server", "listne"), ("auth", "leway_secs"), ("policy", "directory")])
def test_unknown_key_fails_check_naming_the_key(tmp_path: Path, issuer: Issuer, section: str, key: str) -> None:
    config = write_config(tmp_path, issuer)
    text = config.read_text().replace(f"[{section}]\n", f"[{section}]\n{key} = 1\n", 1)
    config.write_text(text)
    r = check(config)
    assert r.returncode != 0, output(r)
    assert key in output(r), output(r)
    assert "configuration OK" not in r.stdout


def test_unknown_upstream_key_fails_check(tmp_path: Path, issuer: Issuer) -> None:
    config = write_config(tmp_path, issuer, upstreams={
        "docs": {"command": str(mandate_bin()), "args": ["demo-server", "--profile", "workspace"],
                 "timeout_sec": 10, "tools": {"search": "read"}},
    })
    r = check(config)
    assert r.returncode != 0 and "timeout_sec" in output(r), output(r)


def test_unknown_tool_class_fails_check(tmp_path: Path, issuer: Issuer) -> None:
    config = write_config(tmp_path, issuer, upstreams={
        "docs": {"command": str(mandate_bin()), "args": ["demo-server", "--profile", "workspace"],
                 "tools": {"search": "harmless"}},
    })
    r = check(config)
    assert r.returncode != 0 and "harmless" in output(r), output(r)


def broken_policy_dir(tmp_path: Path, name: str, text: str) -> Path:
    d = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, d)
    (d / name).write_text(text)
    return d


def test_policy_syntax_error_fails_check_naming_the_file(tmp_path: Path, issuer: Issuer) -> None:
    d = broken_policy_dir(tmp_path, "99-broken.cedar",
                          '@id("broken")\npermit (principal, action, resource) when { context.in_scope && };\n')
    r = check(write_config(tmp_path, issuer, policy_dir=d))
    assert r.returncode != 0, output(r)
    assert "99-broken.cedar" in output(r), output(r)
    # `mandate policy check` agrees.
    r2 = run_mandate("policy", "check", "--dir", str(d))
    assert r2.returncode != 0 and "99-broken.cedar" in output(r2), output(r2)


def test_policy_that_breaks_the_schema_fails_check(tmp_path: Path, issuer: Issuer) -> None:
    d = broken_policy_dir(tmp_path, "99-typo.cedar",
                          '@id("typo")\npermit (principal, action, resource) when { context.in_scoep };\n')
    r = check(write_config(tmp_path, issuer, policy_dir=d))
    assert r.returncode != 0, output(r)
    assert "in_scoep" in output(r) or "99-typo.cedar" in output(r), output(r)


def test_missing_policy_dir_fails_check(tmp_path: Path, issuer: Issuer) -> None:
    missing = tmp_path / "no-such-policies"
    r = check(write_config(tmp_path, issuer, policy_dir=missing))
    assert r.returncode != 0 and str(missing) in output(r), output(r)


def test_shipped_policies_pass_policy_check() -> None:
    r = run_mandate("policy", "check", "--dir", str(POLICY_DIR))
    assert r.returncode == 0, output(r)


def test_unreachable_http_upstream_fails_check_naming_it(tmp_path: Path, issuer: Issuer) -> None:
    port = free_port()  # nothing listens there
    config = write_config(tmp_path, issuer, upstreams={
        "docs": {"command": str(mandate_bin()), "args": ["demo-server", "--profile", "workspace"],
                 "tools": {"search": "read"}},
        "crm": {"url": f"http://127.0.0.1:{port}/mcp", "timeout_secs": 5, "tools": {"lookup": "read"}},
    })
    r = check(config)
    assert r.returncode != 0, output(r)
    assert "crm" in output(r), output(r)
    assert "configuration OK" not in r.stdout


def test_upstream_command_that_does_not_exist_fails_check(tmp_path: Path, issuer: Issuer) -> None:
    config = write_config(tmp_path, issuer, upstreams={
        "ghost": {"command": str(tmp_path / "no-such-program"), "timeout_secs": 5, "tools": {"x": "read"}},
    })
    r = check(config)
    assert r.returncode != 0, output(r)
    assert "ghost" in output(r), output(r)


def test_upstream_that_exits_at_once_fails_check(tmp_path: Path, issuer: Issuer) -> None:
    config = write_config(tmp_path, issuer, upstreams={
        "flaky": {"command": "/bin/false", "timeout_secs": 5, "tools": {"x": "read"}},
    })
    r = check(config)
    assert r.returncode != 0 and "flaky" in output(r), output(r)


def test_missing_jwks_file_fails_check(tmp_path: Path, issuer: Issuer) -> None:
    config = write_config(tmp_path, issuer)
    config.write_text(config.read_text().replace(str(issuer.jwks_path), str(tmp_path / "nope.json")))
    r = check(config)
    assert r.returncode != 0 and "nope.json" in output(r), output(r)


def test_the_log_names_the_version_and_carries_no_colour_codes_when_not_a_terminal(fresh_launcher, issuer: Issuer) -> None:
    gw = fresh_launcher.gateway(issuer, {"docs": {
        "command": str(mandate_bin()), "args": ["demo-server", "--profile", "workspace"],
        "tools": {"search": "read"}}})
    # /healthz can answer a moment before the startup line is written.
    deadline = time.monotonic() + 20
    while "mandate serving MCP at /mcp" not in gw.proc.stderr() and time.monotonic() < deadline:
        time.sleep(0.05)
    gw.proc.stop()
    log = gw.proc.stderr_path.read_text(errors="replace")
    assert "mandate serving MCP at /mcp" in log, log[-2000:]
    serving = next(line for line in log.splitlines() if "mandate serving MCP" in line)
    assert "version=" in serving, serving
    assert "\x1b[" not in log, "ANSI colour codes in a log written to a file"


def test_upstream_tools_lists_every_tool_with_its_class_and_annotations(tmp_path: Path, issuer: Issuer) -> None:
    """`mandate upstream tools` connects to each upstream (a Mandate demo
    server and the reference `server-everything`) and lists every tool: its
    class from the config or `unclassified`, and the server's own
    annotations. Like `--check`, it writes nothing."""
    node, script, arg = everything_entry()
    config = write_config(tmp_path, issuer, upstreams={
        "docs": {"command": str(mandate_bin()), "args": ["demo-server", "--profile", "workspace"],
                 "timeout_secs": 10, "tools": {"search": "read"}},
        "everything": {"command": node, "args": [script, arg], "timeout_secs": 20, "tools": {"echo": "read"}},
    })
    r = run_mandate("upstream", "tools", "--config", str(config), "--json", timeout=90)
    assert r.returncode == 0, output(r)
    rows = {row["tool"]: row for row in json.loads(r.stdout)}
    assert rows["docs.search"]["class"] == "read" and rows["docs.send_mail"]["class"] is None, rows
    assert rows["everything.echo"]["class"] == "read", rows
    assert any(v is not None for row in rows.values() if row["tool"].startswith("everything.")
               for v in row["annotations"].values()), "no annotations read from server-everything"
    table = run_mandate("upstream", "tools", "--config", str(config), timeout=90)
    assert table.returncode == 0, output(table)
    assert "docs.send_mail" in table.stdout and "unclassified" in table.stdout, table.stdout
    assert "denied until classified" in table.stdout, table.stdout
    assert not (tmp_path / "data").exists(), "listing the tools created the data directory"



def test_init_drafts_a_config_that_classifies_tools_from_their_annotations(tmp_path: Path) -> None:
    """`mandate init` connects to server-everything, proposes a class for each
    tool from its annotations (read-only → read; otherwise held classes
    unless the hints say it neither destroys nor reaches out), writes starter
    policies, and the draft passes `serve --check`. It replaces nothing, and
    an unreachable upstream leaves nothing behind."""
    node, script, arg = everything_entry()
    target = tmp_path / "fresh"
    r = run_mandate("init", "--dir", str(target), "--name", "everything", "--", node, script, arg, timeout=90)
    assert r.returncode == 0, output(r)
    draft = tomllib.loads((target / "mandate.toml").read_text())
    classes = draft["upstreams"]["everything"]["tools"]
    listed = run_mandate("upstream", "tools", "--config", str(target / "mandate.toml"), "--json", timeout=90)
    assert listed.returncode == 0, output(listed)
    for row in json.loads(listed.stdout):
        name = row["tool"].removeprefix("everything.")
        hints = row["annotations"]
        if hints["readOnlyHint"] is True:
            assert classes.get(name) == "read", (name, hints, classes.get(name))
        elif hints["readOnlyHint"] is None:
            assert name not in classes, f"{name} has no readOnlyHint and must stay unclassified"
        else:
            assert classes.get(name) in ("write", "outbound", "irreversible"), (name, hints)
        assert row["class"] == classes.get(name), row
    assert sorted(p.name for p in (target / "policies").iterdir()) == [
        "10-routine.cedar", "20-high-impact.cedar", "30-flows.cedar", "mandate.cedarschema"]
    assert check(target / "mandate.toml").returncode == 0

    again = run_mandate("init", "--dir", str(target), "--", node, script, arg, timeout=60)
    assert again.returncode != 0 and "replaces nothing" in output(again), output(again)

    gone = tmp_path / "gone"
    r = run_mandate("init", "--dir", str(gone), "--url", "http://127.0.0.1:1/mcp", timeout=90)
    assert r.returncode != 0, output(r)
    assert not (gone / "mandate.toml").exists() and not (gone / "policies").exists()
