"""Fixtures for Mandate's end-to-end tests: a test identity provider, process
launchers that always clean up, and the real upstream peers."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e_support import Issuer, Launcher, RecordingServer, everything_entry, mandate_bin  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    # Fail fast with a clear message instead of one error per test.
    try:
        mandate_bin()
    except RuntimeError as e:
        raise pytest.UsageError(str(e)) from None
    try:
        everything_entry()
    except (OSError, RuntimeError) as e:
        raise pytest.UsageError(
            f"@modelcontextprotocol/server-everything is not installed ({e}); run `npm ci` in tests/e2e"
        ) from None


@pytest.fixture(scope="session")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    return Issuer(tmp_path_factory.mktemp("idp"))


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    """Processes shared by a test module; all stopped when the module ends."""
    lr = Launcher(tmp_path_factory.mktemp("mod"))
    try:
        yield lr
    finally:
        lr.close()


@pytest.fixture
def fresh_launcher(tmp_path: Path) -> Iterator[Launcher]:
    """Processes for one test; all stopped when the test ends."""
    lr = Launcher(tmp_path)
    try:
        yield lr
    finally:
        lr.close()


@pytest.fixture(scope="module")
def rec_http(launcher: Launcher) -> RecordingServer:
    """The recording server (official Python SDK) over Streamable HTTP."""
    return launcher.recording_http_server()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, driven by Playwright (never a download)."""
    import os

    from playwright.sync_api import sync_playwright

    chromium = Path(os.environ.get("MANDATE_CHROMIUM", "/usr/bin/chromium"))
    if not chromium.exists():
        pytest.fail(f"{chromium} is missing: apt-get install chromium (or set MANDATE_CHROMIUM)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(chromium), headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()
