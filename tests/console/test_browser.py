"""The console in a real headless Chromium (Debian's ``chromium``, driven by Playwright for Python; no
browser is downloaded), against a live server running a real built-in engine endpoint. One session walks
the whole flow: sign in, upload a fileset with the progress bar, register a model and an adapter, create an
endpoint, attach two adapters, compare the base and both adapters in the playground (three different
streamed answers), detach one and see the refusal inline, then read the usage just recorded. Screenshots go
to ``tests/console/artifacts/`` (git-ignored).

Without chromium or Playwright the test is skipped with a message, except in CI (``CI=true``), where it
fails: ``make test`` installs chromium when it can.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from modelyard.client import Modelyard
from modelyard.client.client import upload_dir
from tests.conftest import IN_CI, admin_key
from tests.console.conftest import ARTIFACTS

CHROMIUM = os.environ.get("MODELYARD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
LAPTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="session", autouse=True)
def _browser() -> None:
    """Checked before the fixtures (an engine checkpoint, a live server) are built for nothing."""
    _need_browser()


def _need_browser() -> None:
    problem = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problem = "Playwright for Python is not installed (pip install -e '.[dev]')"
    if problem is None and not CHROMIUM:
        problem = "no chromium on PATH (apt-get install -y chromium, or set MODELYARD_CHROMIUM)"
    if problem:
        if IN_CI:
            pytest.fail(f"browser tests must run in CI: {problem}")
        pytest.skip(f"browser tests skipped: {problem}")


def _no_sideways_scroll(page) -> None:
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"{page.url} scrolls sideways by {overflow}px at {page.viewport_size['width']}px"


def test_console_end_to_end_in_chromium(live_server: str, fixture_models: dict[str, Path], settings) -> None:
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    for stale in ARTIFACTS.glob("failure-*"):
        stale.unlink()
    key = admin_key(settings)
    sdk = Modelyard(live_server, api_key=key)
    # the adapters' files go up through the SDK; the base checkpoint through the console's drop zone
    for name in ("pirate", "chef"):
        upload_dir(sdk, fixture_models[name], "default", f"{name}-files")
    base_files = sorted(p for p in fixture_models["base"].iterdir() if p.is_file())

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        context = browser.new_context(viewport=LAPTOP, bypass_csp=True)  # lets the test evaluate script
        page = context.new_page()
        page.set_default_timeout(30_000)
        console_errors: list[str] = []
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)

        try:
            # signed out: sent to sign in; a wrong key shows the API's refusal
            page.goto(live_server + "/console/w/default/endpoints")
            assert "/console/signin" in page.url
            page.fill("input[name=api_key]", "not-a-key")
            page.click("button[type=submit]")
            expect(page.locator(".error")).to_contain_text("refused")
            page.screenshot(path=ARTIFACTS / "01-signin.png")
            page.fill("input[name=api_key]", key)
            page.click("button[type=submit]")
            page.wait_for_url("**/console/w/default/endpoints")
            expect(page.locator(".empty")).to_contain_text("No endpoint")
            assert key not in page.content()

            # a fileset: created with the form, filled by drop (a synthetic drop event) and by the file picker
            page.goto(live_server + "/console/w/default/filesets")
            expect(page.locator("table")).to_contain_text("pirate-files")
            page.click("summary:text('Create a fileset')")
            page.fill("form[data-form=create-fileset] input[name=name]", "tiny-files")
            page.click("form[data-form=create-fileset] button")
            page.wait_for_url("**/console/w/default/filesets/tiny-files")
            drop = page.evaluate_handle("""() => { const dt = new DataTransfer();
                dt.items.add(new File(['dropped on the console'], 'NOTES.txt', {type: 'text/plain'})); return dt; }""")
            page.dispatch_event("[data-upload]", "drop", {"dataTransfer": drop})
            page.wait_for_selector("td code:text('NOTES.txt')")
            page.set_input_files("[data-upload-input]", [str(p) for p in base_files])
            expect(page.locator("[data-progress]")).to_be_visible()
            page.wait_for_function("document.querySelector('[data-upload]').dataset.finished === 'true'")
            assert page.evaluate("document.querySelector('[data-progress]').value") == 100
            expect(page.locator("[data-upload-status]")).to_contain_text(f"Uploaded {len(base_files)} files")
            page.screenshot(path=ARTIFACTS / "02-fileset-uploaded.png")
            page.wait_for_selector("td code:text('config.json')")  # the page reloads with the files listed
            for path in base_files:
                expect(page.locator("table[data-files]")).to_contain_text(path.name)

            # a model: its spec card is read from the uploaded checkpoint
            page.goto(live_server + "/console/w/default/models")
            expect(page.locator(".empty")).to_contain_text("No model registered")
            page.fill("form[data-form=register-model] input[name=name]", "tiny")
            page.fill("form[data-form=register-model] input[name=fileset]", "default/tiny-files")
            page.click("form[data-form=register-model] button")
            card = page.locator("#model-tiny")
            expect(card).to_contain_text("Architecture")
            expect(card).to_contain_text("Context length")
            expect(card).to_contain_text("Parameters")
            page.screenshot(path=ARTIFACTS / "03-models.png")

            # adapters: one through the form (and a refused one shows the API's message), one through the SDK
            page.goto(live_server + "/console/w/default/adapters")
            form = "form[data-form=register-adapter]"
            page.fill(f"{form} input[name=name]", "pirate")
            page.select_option(f"{form} select[name=model]", "default/tiny")
            page.fill(f"{form} input[name=fileset]", "default/no-such-files")
            page.click(f"{form} button")
            expect(page.locator("[data-refusal]")).to_contain_text("no-such-files")
            page.fill(f"{form} input[name=name]", "pirate")
            page.fill(f"{form} input[name=fileset]", "default/pirate-files")
            page.click(f"{form} button")
            expect(page.locator(".notice")).to_contain_text("Adapter pirate registered")
            sdk.adapters.create("default", model="default/tiny", name="chef", fileset="chef-files", finetuning_type="lora")
            page.reload()
            expect(page.locator("table")).to_contain_text("chef")
            expect(page.locator("table")).to_contain_text("8")  # the rank read from adapter_config.json
            page.click("a:text('pirate')")
            expect(page.locator("dl.spec")).to_contain_text("q_proj")  # target modules from the adapter's files

            # an endpoint: created with the form, followed until STARTED
            page.goto(live_server + "/console/w/default/endpoints")
            page.select_option("form[data-form=create-endpoint] select[name=model]", "default/tiny")
            page.click("form[data-form=create-endpoint] button")
            page.wait_for_selector(".state-started", timeout=120_000)
            endpoint = page.get_attribute("[data-endpoint]", "data-endpoint")
            for adapter in ("pirate", "chef"):
                page.fill(".endpoint [data-attach-input]", f"{endpoint}:{adapter}")
                page.click(".endpoint [data-attach]")
                expect(page.locator(".endpoint .notice")).to_contain_text(f"{endpoint}:{adapter} attached")
            page.fill(".endpoint [data-attach-input]", f"{endpoint}:ghost")
            page.click(".endpoint [data-attach]")
            expect(page.locator(".endpoint [data-refusal]")).to_contain_text("Could not find")  # the API's message, inline
            expect(page.locator(".endpoint ul.attached li")).to_have_count(2)
            page.screenshot(path=ARTIFACTS / "04-endpoints.png", full_page=True)

            # the playground: base and both adapters at once, three different streamed answers
            page.goto(live_server + "/console/w/default/playground")
            expect(page.locator("input[name=target]")).to_have_count(3)
            page.fill("textarea[name=prompt]", "hello there")
            page.fill("input[name=max_tokens]", "12")
            page.click("[data-run]")
            page.wait_for_function("document.querySelectorAll('.answer[data-state=done]').length === 3", timeout=60_000)
            answers = {el.get_attribute("data-target"): el.locator(".text").inner_text()
                       for el in page.locator(".answer").all()}
            assert set(answers) == {endpoint, f"{endpoint}:pirate", f"{endpoint}:chef"}
            assert all(answers.values()) and len(set(answers.values())) == 3, answers
            for el in page.locator(".answer").all():
                assert int(el.get_attribute("data-chunks")) > 1  # streamed token by token, not all at once
                expect(el.locator(".meta")).to_contain_text("tokens/s")
                expect(el.locator(".meta")).to_contain_text("first token")
            page.screenshot(path=ARTIFACTS / "05-playground.png", full_page=True)

            # detach pirate (in another tab), ask again: pirate's column shows the API's refusal
            other = context.new_page()
            other.goto(live_server + "/console/w/default/endpoints")
            other.click("[data-detach=pirate]")
            expect(other.locator(".endpoint .notice")).to_contain_text("detached")
            expect(other.locator(".endpoint ul.attached li")).to_have_count(1)
            page.click("[data-run]")
            page.wait_for_function("document.querySelectorAll('.answer[data-state]').length === 3 && "
                                   "!document.querySelector('[data-answers]').dataset.running.includes('true')",
                                   timeout=60_000)
            refused = page.locator(f".answer[data-target='{endpoint}:pirate']")
            expect(refused).to_have_attribute("data-state", "error")
            expect(refused.locator(".error")).to_contain_text("pirate")
            expect(refused.locator(".meta")).to_contain_text("404")
            assert page.locator(f".answer[data-target='{endpoint}:chef'] .text").inner_text() == answers[f"{endpoint}:chef"]
            page.screenshot(path=ARTIFACTS / "06-playground-after-detach.png", full_page=True)

            # usage: the requests just made, per model, in charts and a sortable table
            usage_served = httpx.get(live_server + "/v1/usage", headers={"Authorization": f"Bearer {key}"}).status_code
            page.goto(live_server + "/console/w/default/usage?granularity=minute")
            if usage_served == 404:
                expect(page.locator(".empty")).to_contain_text("keeps no usage records")
            else:
                for _ in range(40):
                    if page.locator("[data-usage-table] tbody tr").count():
                        break
                    page.wait_for_timeout(500)
                    page.reload()
                table = page.locator("[data-usage-table]")
                expect(table).to_contain_text("chef")
                expect(page.locator("svg.chart").first).to_be_visible()
                page.click("[data-usage-table] th:text('Requests')")
                expect(page.locator("[data-usage-table] th:text('Requests')")).to_have_attribute("aria-sort", "ascending")
                total = sum(int(c) for c in page.locator("[data-usage-table] tbody tr td:nth-child(3)").all_inner_texts())
                assert total >= 3
            page.screenshot(path=ARTIFACTS / "07-usage.png", full_page=True)

            # phone width: every page fits without sideways scrolling
            phone = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True, bypass_csp=True,
                                        storage_state=context.storage_state())
            small = phone.new_page()
            for section in ("endpoints", "models", "adapters", "filesets", "playground", "usage"):
                small.goto(f"{live_server}/console/w/default/{section}")
                _no_sideways_scroll(small)
            small.goto(f"{live_server}/console/w/default/playground")
            small.click("[data-run]")
            small.wait_for_function("document.querySelectorAll('.answer[data-state]').length === 2", timeout=60_000)
            small.screenshot(path=ARTIFACTS / "08-playground-phone.png", full_page=True)
            small.goto(f"{live_server}/console/w/default/endpoints")
            small.screenshot(path=ARTIFACTS / "09-endpoints-phone.png", full_page=True)

            # deleting the endpoint asks first
            page.goto(live_server + "/console/w/default/endpoints")
            page.once("dialog", lambda dialog: dialog.dismiss())
            page.click(".endpoint button:text('Delete')")
            expect(page.locator(".endpoint")).to_have_count(1)
            page.once("dialog", lambda dialog: dialog.accept())
            page.click(".endpoint button:text('Delete')")
            expect(page.locator(".notice")).to_contain_text("Endpoint deleted")
            expect(page.locator(".endpoint")).to_have_count(0)

            # signing out ends the session
            page.goto(live_server + "/console/workspaces")
            page.click("button:text('Sign out')")
            page.wait_for_url("**/console/signin")
            page.goto(live_server + "/console/w/default/endpoints")
            assert "/console/signin" in page.url
        except Exception:
            pages = [p for c in browser.contexts for p in c.pages]
            for i, p in enumerate(pages):  # what the browser showed when it failed
                p.screenshot(path=ARTIFACTS / f"failure-{i}.png", full_page=True)
                (ARTIFACTS / f"failure-{i}.html").write_text(p.content())
            raise
        browser.close()
    # script errors only: "Failed to load resource" is the browser noting a status the console meant
    # (the refused sign-in's 401, the detached adapter's 404)
    assert not [e for e in console_errors if not e.startswith("Failed to load resource")], console_errors
