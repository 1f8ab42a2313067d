"""The sources an answer came from, on both pages: a flow answering from a knowledge base
shows its citations (the final envelope's ``citations``) under the answer, numbered as the
model saw them, as text: a document's markup is shown, never run."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page

from tests.browser.conftest import Pages
from tests.browser.test_pages import open_page, wait_status
from tests.kb_helpers import KB

pytestmark = pytest.mark.slow

MARKUP = "<img src=x onerror=\"window.__pwned=7;document.title='pwned'\">"
POLICY = f"Refunds are paid within 14 days of the return. {MARKUP} Keep the receipt."


@pytest.fixture(scope="module")
def answered(pages: Pages) -> str:
    """A flow over a KB holding one policy document; its id."""
    kb = KB(pages.server)
    kb_id = kb.create(name="Policies")
    assert kb.add(kb_id, "policy.txt", POLICY.encode())["status"] == "indexed"
    flow = f"""
id: cited
inputs:
  in-0: {{description: "Question", default: "when are refunds paid"}}
nodes:
  kb-0: {{type: knowledge_base, knowledge_base_ids: ["{kb_id}"], query: "{{in-0}}", top_k: 3}}
  llm-0: {{type: llm, provider: scripted, model: "echo?delay=0.01", prompt: "answer from {{kb-0}}"}}
outputs: {{out-0: llm-0}}
"""
    published = pages.server.publish(flow)
    assert published.status_code == 201, published.text
    return "cited"


def test_the_form_page_lists_the_sources_under_the_answer(
    page: Page, pages: Pages, answered: str
) -> None:
    open_page(page, pages, answered)
    assert page.locator(".sources").count() == 0  # nothing before a run
    page.click("button.primary")
    wait_status(page, "done")
    names = page.locator(".sources .source-name").all_text_contents()
    assert names == ["[1] policy.txt"]
    shown = page.locator(".sources .source-text").text_content() or ""
    assert MARKUP in shown and "Refunds are paid" in shown  # the document's text, as text
    assert page.locator("main img").count() == 0
    page.wait_for_timeout(200)
    assert page.evaluate("window.__pwned") is None
    # the record says the same
    record = pages.record(answered, page.locator("#status .run-id").text_content() or "")
    assert [c["document_name"] for c in record["citations"]] == ["policy.txt"]


def test_the_chat_page_shows_the_sources_of_each_answer_and_keeps_them(
    page: Page, pages: Pages, answered: str
) -> None:
    open_page(page, pages, answered, "chat")
    page.fill("#message", "when are refunds paid")
    page.keyboard.press("Enter")
    wait_status(page, "done")
    turn = page.locator(".turn.assistant").last
    assert turn.locator(".source-name").all_text_contents() == ["[1] policy.txt"]
    page.reload()  # kept with the conversation
    page.wait_for_selector("body[data-ready]")
    turn = page.locator(".turn.assistant").last
    assert turn.locator(".source-name").all_text_contents() == ["[1] policy.txt"]
    assert page.locator("main img").count() == 0
    page.wait_for_timeout(200)
    assert page.evaluate("window.__pwned") is None
