"""The README's "try it with a client" path, as a new user follows it: the
shipped quickstart config copied to a folder of its own, a development
issuer key made with `mandate keys generate`, `mandate serve`, a token from
`mandate token mint`, and `examples/client/try_mandate.py` (the official
MCP Python SDK) against it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from e2e_support import REPO_ROOT, Gateway, Launcher, free_port, mandate_bin, run_mandate


def test_the_python_sdk_example_lists_reads_and_is_refused(launcher: Launcher, tmp_path: Path) -> None:
    here = tmp_path / "try"
    shutil.copytree(REPO_ROOT / "examples" / "quickstart", here)
    made = run_mandate("keys", "generate", "--out", "mandate-data/dev-issuer", cwd=here)
    assert made.returncode == 0, made.stderr
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = launcher.spawn([str(mandate_bin()), "serve", "--config", "mandate.toml", "--listen", f"127.0.0.1:{port}"],
                          "quickstart", cwd=here)
    gw = Gateway(public_url=url, config=here / "mandate.toml", data_dir=here / "mandate-data", proc=proc)
    gw.wait_ready()
    # The state is kept beside the config file (a relative data_dir).
    assert (here / "mandate-data" / "audit.sqlite").exists()

    minted = run_mandate("token", "mint", "--key", "mandate-data/dev-issuer", "--aud", f"{url}/mcp",
                         "--sub", "alice@example.com", "--act", "my-agent", "--scope", "docs.* bank.*", cwd=here)
    assert minted.returncode == 0, minted.stderr
    run = subprocess.run([sys.executable, str(REPO_ROOT / "examples" / "client" / "try_mandate.py"), f"{url}/mcp"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "MANDATE_TOKEN": minted.stdout.strip()})
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "tools: bank.close_account, bank.get_balance, bank.transfer" in out, out
    assert "docs.search: <<untrusted-content" in out, out
    assert "bank.transfer: refused, reason 'untrusted_argument'" in out, out
    assert "went through" not in out, out
