"""The browser tests skip on a developer's machine and fail where they are required.

``browser.skip_unless_available()`` is what every browser test calls first. Without
``WSPROXY_REQUIRE_BROWSER`` a missing Chromium or playwright-core skips the test with the
reason; with it (``.ci/run`` sets it) the same absence is a failure, so a CI run whose
browser install broke cannot come out green with the browser tests silently skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration import browser


@pytest.fixture
def no_chromium(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    absent = tmp_path / "no-chromium"
    monkeypatch.setattr(browser, "CHROMIUM", str(absent))
    monkeypatch.delenv(browser.REQUIRE_ENV, raising=False)
    return absent


@pytest.fixture
def no_playwright(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    chromium = tmp_path / "chromium"
    chromium.write_text("")
    monkeypatch.setattr(browser, "CHROMIUM", str(chromium))
    monkeypatch.setattr(browser, "PLAYWRIGHT_DIR", tmp_path / "pw")
    monkeypatch.delenv(browser.REQUIRE_ENV, raising=False)
    monkeypatch.setattr(browser.shutil, "which", lambda name: f"/usr/bin/{name}")
    return tmp_path / "pw"


@pytest.mark.parametrize("value", [None, "", "0"])
def test_a_missing_chromium_skips_unless_required(
    no_chromium: Path, monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is not None:
        monkeypatch.setenv(browser.REQUIRE_ENV, value)
    with pytest.raises(pytest.skip.Exception, match="no Chromium at"):
        browser.skip_unless_available()


def test_a_missing_chromium_fails_where_required(
    no_chromium: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(browser.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception) as failed:
        browser.skip_unless_available()
    assert str(no_chromium) in str(failed.value)
    assert browser.REQUIRE_ENV in str(failed.value)


def test_a_missing_playwright_core_fails_where_required(
    no_playwright: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(browser.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="playwright-core not installed"):
        browser.skip_unless_available()
    monkeypatch.delenv(browser.REQUIRE_ENV)
    with pytest.raises(pytest.skip.Exception, match="playwright-core not installed"):
        browser.skip_unless_available()
