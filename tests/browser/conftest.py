"""The pages' fixtures: one real flowserve server for the browser suite, one Chromium per
module, a fresh browser context (its own storage) per test.

Chromium is Debian's (``/usr/bin/chromium``; scripts/test.sh installs it when missing):
there is no skip when it is missing, the tests fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.slow

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

# What the XSS flow's model streams, and what its interface says: markup that would run
# script if it were ever parsed as HTML.
XSS_REPLY = (
    "<img src=x onerror=\"window.__pwned=1;document.title='pwned'\"> "
    "<script>window.__pwned=2;document.title='pwned'</script> done"
)
XSS_NAME = '<img src=x onerror="window.__pwned=3">Evil'
XSS_DEFAULT = "<script>window.__pwned=4</script>"

FLOWS = {
    "slow": """
id: slow
name: Slow words
inputs:
  in-0: {description: "Words to echo", default: "one two three four five six seven eight nine ten eleven twelve"}
nodes:
  llm-0: {type: llm, provider: scripted, model: "echo?delay=0.15", prompt: "{in-0}"}
outputs: {out-0: llm-0}
""",
    "endless": """
id: endless
inputs:
  in-0: {default: "and on"}
nodes:
  llm-0: {type: llm, provider: scripted, model: "echo?delay=0.1&repeat=500", prompt: "{in-0}"}
outputs: {out-0: llm-0}
""",
    "form": """
id: form
name: Form flow
description: Answers in a tone.
inputs:
  in-0: {description: "Your question"}
  in-1: {description: "Tone", default: "friendly"}
nodes:
  llm-0: {type: llm, provider: scripted, model: "echo?delay=0.01", prompt: "{in-1}: {in-0}", system: "SECRET-SYSTEM-TEXT"}
  tpl-0: {type: template, template: "Q: {in-0}"}
outputs: {out-0: llm-0, out-1: tpl-0, out-2: in-1}
""",
    "chain": """
id: chain
inputs:
  in-0: {default: "fast start"}
nodes:
  llm-0: {type: llm, provider: scripted, model: echo, prompt: "{in-0}"}
  llm-1: {type: llm, provider: scripted, model: "echo?delay=0.25", prompt: "{llm-0} one two three four five six seven eight"}
outputs: {out-0: llm-0, out-1: llm-1}
""",
    "failing": """
id: failing
inputs:
  in-0: {default: "one two three four five six"}
nodes:
  llm-0: {type: llm, provider: scripted, model: "echo?delay=0.05&fail_after=2", prompt: "{in-0}"}
outputs: {out-0: llm-0}
""",
    "chat": """
id: chat
name: Chat flow
inputs:
  in-0: {description: "Persona", default: "bot"}
  in-1: {description: "Message"}
nodes:
  llm-0:
    type: llm
    provider: scripted
    model: "echo?history=1&delay=0.01"
    prompt: "{in-1}"
    memory: {window: 10}
  tpl-0: {type: template, template: "persona {in-0}"}
outputs: {out-0: tpl-0, out-1: llm-0}
chat: {input: in-1, output: out-1}
""",
    "xss": f"""
id: xss
name: {XSS_NAME!r}
description: "<script>window.__pwned=5</script>"
inputs:
  in-0: {{description: "<b onmouseover=x>field</b>", default: {XSS_DEFAULT!r}}}
nodes:
  llm-0: {{type: llm, provider: scripted, model: "echo?text={quote(XSS_REPLY, safe="")}", prompt: "{{in-0}}"}}
outputs: {{out-0: llm-0}}
""",
}


@dataclass
class Pages:
    """The server, a public key that allows the server's own origin, and how to open a page."""

    server: Server
    key: str  # a public key with allowed_origins = [the server's origin]

    def url(self, flow: str, mode: str = "form", key: str | None = None) -> str:
        path = f"/ui/{self.server.org}/{flow}" + ("/chat" if mode == "chat" else "")
        return self.server.base_url + path + (f"#key={key or self.key}" if key != "" else "")

    def record(self, flow: str, run_id: str) -> dict:
        """The run's record, read with the private key."""
        response = httpx.get(
            f"{self.server.base_url}/inference/v0/run/{self.server.org}/{flow}/metadata",
            params={"run_id": run_id},
            headers=self.server.auth(self.server.private_key),
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return dict(response.json())


def create_key(server: Server, *origins: str) -> str:
    """A public key made as the README says: ``flowserve keys create --origin …``."""
    args = [sys.executable, "-m", "flowserve", "keys", "create", "--kind", "public"]
    args += ["--org", server.org, *(a for o in origins for a in ("--origin", o))]
    env = {**os.environ, "FLOWSERVE_DATABASE_URL": server.database_url, "COLUMNS": "300"}
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=True, timeout=60)
    [token] = done.stdout.split()
    return token


@pytest.fixture(scope="session")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pages]:
    server = start_server(
        tmp_path_factory.mktemp("pages"), env={"FLOWSERVE_RATE_LIMIT_PER_MINUTE": "0"}
    )
    try:
        for text in FLOWS.values():
            response = server.publish(text)
            assert response.status_code == 201, response.text
        yield Pages(server, create_key(server, server.base_url))
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def browser(pages: Pages) -> Iterator[Browser]:
    """One Chromium per test module. Playwright's sync API runs an event loop in this thread
    while it is open, so nothing may call ``asyncio.run`` meanwhile: the server (which
    ``make_org`` sets up that way) is started first, and the browser is closed with the
    module."""
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A page in a fresh context; any uncaught error in the page's scripts fails the test."""
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    errors: list[str] = []
    tab = context.new_page()
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.set_default_timeout(15_000)
    try:
        yield tab
    finally:
        context.close()
    assert errors == [], errors
