"""Takes the README's screenshots of a flow's pages: docs/screenshots/form.png and chat.png.

It goes the way the README does: ``flowserve init`` in a scratch directory (the example flow
on the embedded model), ``flowserve keys create --kind public --origin <server>`` for a key
the pages may use, ``flowserve serve``, then Debian's Chromium (through Playwright) opens
``/ui/default/support-bot#key=…`` and its chat page, runs them, and saves the pictures.

    .venv/bin/python scripts/screenshots.py [--out docs/screenshots]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import Page, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
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
QUESTION = "How do I reset my password?"


def flowserve(*args: str, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "flowserve", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(base_url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 180  # the embedded model loads at start
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("flowserve serve exited")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit("flowserve serve did not start")


def finished(page: Page) -> None:
    page.wait_for_selector('#status[data-kind="done"], #status[data-kind="error"]')


def shoot(base_url: str, key: str, out: Path) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        page = context.new_page()
        page.set_default_timeout(180_000)
        page.goto(f"{base_url}/ui/default/support-bot#key={key}")
        page.wait_for_selector("body[data-ready]")
        page.fill("textarea[name=in-0]", QUESTION)
        page.click("button.primary")
        finished(page)
        page.screenshot(path=str(out / "form.png"), full_page=True)

        page.goto(f"{base_url}/ui/default/support-bot/chat")
        page.wait_for_selector("body[data-ready]")
        for message in (QUESTION, "And if I no longer have access to my email?"):
            page.fill("#message", message)
            page.keyboard.press("Enter")
            page.wait_for_selector(".turn.assistant:last-child[data-state='RUNNING']")
            page.wait_for_selector(".turn.assistant:last-child:not([data-state='RUNNING'])")
        page.screenshot(path=str(out / "chat.png"), full_page=True)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSERVE_")}
    env |= {"FLOWSERVE_PORT": str(port), "COLUMNS": "300"}
    with tempfile.TemporaryDirectory() as scratch:
        cwd = Path(scratch)
        flowserve("init", cwd=cwd, env=env)
        key = flowserve(
            "keys", "create", "--kind", "public", "--origin", base_url, cwd=cwd, env=env
        )
        log = (cwd / "server.log").open("wb")
        server = subprocess.Popen(
            [sys.executable, "-m", "flowserve", "serve"], cwd=cwd, env=env, stdout=log, stderr=log
        )
        try:
            wait_up(base_url, server)
            shoot(base_url, key.strip(), args.out)
        finally:
            server.terminate()
            server.wait(timeout=30)
            log.close()
    print(f"wrote {args.out / 'form.png'} and {args.out / 'chat.png'}")


if __name__ == "__main__":
    main()
