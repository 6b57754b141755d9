"""In a real browser: start the backup-verification drill from the Prefect UI's form.

Headless Chromium from Debian's packages (``/usr/bin/chromium``), driven by Playwright
with ``executable_path`` (no browser download). A person's path: Deployments, search,
open ``backup-verification-drill``, Run, Custom run, pick the target from the drop-down
(which offers exactly the targets that allow drills), Submit; then the run's page until
it says Completed. A screenshot lands in the test's temporary folder on failure.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DEPLOYMENT = "backup-verification-drill"
UI_TIMEOUT_MS = 30_000
RUN_TIMEOUT_SECONDS = 180


def _browser_or_skip() -> Any:
    """Playwright's sync API, or a skip (outside CI only) when the browser is missing."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ModuleNotFoundError:
        missing.append("the playwright package (pip install playwright)")
        sync_playwright = None
    if missing:
        message = "browser test needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set: scripts/setup.sh installs them)")
        pytest.skip(message)
    return sync_playwright


def test_drill_started_from_the_ui_form_runs_to_completion(
    deployed: Any,
    worker: Any,
    backup_taken: dict[str, Any],
    e2e_prefect: Any,
    tmp_path: Path,
    record_property: Any,
) -> None:
    sync_playwright = _browser_or_skip()
    api = e2e_prefect.api
    drill_targets = [n for n, t in deployed.config["targets"].items() if t.get("drills_allowed")]
    run_name = f"ui-e2e-{secrets.token_hex(4)}"
    started = time.monotonic()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(UI_TIMEOUT_MS)
        try:
            page.goto(f"{e2e_prefect.ui_url}/deployments")
            page.get_by_placeholder("Search deployments").fill(DEPLOYMENT)
            page.get_by_role("link", name=DEPLOYMENT, exact=True).first.click()
            page.get_by_role("button", name="Run", exact=True).click()
            page.get_by_text("Custom run").click()

            page.get_by_text("Run Name").wait_for()
            page.locator(".p-label").filter(has_text="Run Name").locator("input").first.fill(
                run_name
            )
            # The target field is a drop-down of exactly the targets that allow drills.
            target = page.locator(".schema-form-property").filter(has_text="a target of the config")
            target.locator("button.p-select-button__control").focus()
            page.keyboard.press("Space")
            page.get_by_role("option").first.wait_for()
            assert page.get_by_role("option").all_inner_texts() == drill_targets
            page.get_by_role("option", name=drill_targets[0], exact=True).click()
            assert target.locator(".p-select-button__value").inner_text() == drill_targets[0]
            page.get_by_role("button", name="Submit").click()

            run = _wait_for_run_named(api, run_name)
            page.goto(f"{e2e_prefect.ui_url}/runs/flow-run/{run['id']}")
            page.get_by_text(run_name).first.wait_for()
            page.locator(".state-badge").filter(
                has_text=re.compile(r"^\s*Completed\s*$")
            ).first.wait_for(timeout=RUN_TIMEOUT_SECONDS * 1000)
        except BaseException:
            shot = tmp_path / "failure.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot of the failure: {shot}")
            raise
        finally:
            browser.close()
    finished = api.wait_run(run["id"], timeout_seconds=30)
    assert finished["parameters"]["target"] == drill_targets[0]
    assert finished["parameters"]["mode"] == "drill"
    assert finished["deployment_id"] == api.deployment(f"backup-verification/{DEPLOYMENT}")["id"]
    elapsed = round(time.monotonic() - started, 1)
    record_property("ui_run_seconds", elapsed)
    print(f"UI: form to Completed in {elapsed} s")


def _wait_for_run_named(api: Any, name: str, timeout_seconds: float = 20) -> dict[str, Any]:
    """The flow run the form created (found by the unique name typed into the form)."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        runs = api.runs(name={"any_": [name]})
        if runs:
            return runs[0]
        time.sleep(0.3)
    pytest.fail(f"no flow run named {name} after submitting the form")
