"""A flow's form and chat pages, in a real Chromium against a real server: what a user sees
while a run streams, stops, fails or is refused, and that nothing a model sends can run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page

from tests.browser.conftest import XSS_DEFAULT, XSS_NAME, XSS_REPLY, Pages

pytestmark = pytest.mark.slow

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def open_page(page: Page, pages: Pages, flow: str, mode: str = "form", key: str | None = None):
    page.goto(pages.url(flow, mode, key))
    page.wait_for_selector("body[data-ready]")


def output_text(page: Page, out_id: str) -> str:
    return page.locator(f'[data-output="{out_id}"] .output-text').text_content() or ""


def wait_status(page: Page, kind: str) -> str:
    page.wait_for_selector(f'#status[data-kind="{kind}"]')
    return page.locator("#status .message").text_content() or ""


def run_id(page: Page) -> str:
    return page.locator("#status .run-id").text_content() or ""


def box_state(page: Page, kind: str, node_id: str) -> str | None:
    box = page.locator(f'svg.graph [data-kind="{kind}"][data-id="{node_id}"]')
    return box.get_attribute("data-state")


def longer_than(page: Page, out_id: str, n: int) -> None:
    page.wait_for_function(
        """([id, n]) => document.querySelector(`[data-output="${id}"] .output-text`)
             .textContent.length > n""",
        arg=[out_id, n],
    )


def test_the_form_shows_each_input_with_its_description_and_default(
    page: Page, pages: Pages
) -> None:
    open_page(page, pages, "form")
    assert page.title() == "Form flow · flowserve"
    assert page.locator("#flow-description").text_content() == "Answers in a tone."
    labels = page.locator(".field .description").all_text_contents()
    assert labels == ["Your question", "Tone"]
    assert page.locator("textarea[name=in-0]").input_value() == ""
    assert page.locator("textarea[name=in-0]").get_attribute("required") is not None
    assert page.locator("textarea[name=in-1]").input_value() == "friendly"
    assert page.locator("textarea[name=in-1]").get_attribute("required") is None
    page.fill("textarea[name=in-0]", "how are you")
    page.click("button.primary")
    assert wait_status(page, "done").startswith("completed in")
    # each output in its own panel, the default used, an output that is an input too
    assert output_text(page, "out-0") == "friendly: how are you"
    assert output_text(page, "out-1") == "Q: how are you"
    assert output_text(page, "out-2") == "friendly"
    record = pages.record("form", run_id(page))
    assert record["inputs"] == {"in-0": "how are you", "in-1": "friendly"}
    assert record["outputs"] == {out: output_text(page, out) for out in ("out-0", "out-1", "out-2")}


def test_text_appears_progressively(page: Page, pages: Pages, tmp_path: Path) -> None:
    open_page(page, pages, "slow")
    whole = page.locator("textarea[name=in-0]").input_value()
    panel = page.locator('[data-output="out-0"] .output-text')
    page.click("button.primary")
    longer_than(page, "out-0", 0)
    first = output_text(page, "out-0")
    shot_1 = panel.screenshot(path=str(tmp_path / "1.png"))
    longer_than(page, "out-0", len(first))
    second = output_text(page, "out-0")
    shot_2 = panel.screenshot(path=str(tmp_path / "2.png"))
    assert page.locator("#status").get_attribute("data-kind") == "running"
    wait_status(page, "done")
    final = output_text(page, "out-0")
    assert final == whole
    # a proper prefix, then a longer one, then the whole text: both shots were mid-stream
    assert first and second.startswith(first) and len(second) > len(first)
    assert final.startswith(second) and len(final) > len(second)
    assert shot_1 != shot_2


def test_the_graph_marks_the_running_node_then_shows_tokens_and_time(
    page: Page, pages: Pages
) -> None:
    open_page(page, pages, "chain")
    edges = {
        (e.get_attribute("data-from"), e.get_attribute("data-to"))
        for e in page.locator("svg.graph path.edge").all()
    }
    assert edges == {
        ("input:in-0", "node:llm-0"),
        ("node:llm-0", "node:llm-1"),
        ("node:llm-0", "output:out-0"),
        ("node:llm-1", "output:out-1"),
    }
    assert box_state(page, "node", "llm-1") == "idle"
    page.click("button.primary")
    page.wait_for_selector('svg.graph [data-kind="node"][data-id="llm-1"][data-state="running"]')
    assert box_state(page, "node", "llm-0") == "done"
    assert box_state(page, "output", "out-1") == "running"
    assert page.locator('#node-stats tr[data-node="llm-1"] td').first.text_content() == "running"
    wait_status(page, "done")
    assert box_state(page, "node", "llm-1") == "done"
    cells = page.locator('#node-stats tr[data-node="llm-1"] td').all_text_contents()
    record = pages.record("chain", run_id(page))
    assert cells[:2] == ["done", str(record["usage"]["llm-1"]["completion_tokens"])]
    assert cells[1] == "10"  # "fast start" and eight words, one scripted token each
    assert re.fullmatch(r"\d\.\d s", cells[2])  # eight tokens 0.25 s apart: about 2.5 s
    stat = page.locator('svg.graph [data-id="llm-1"] text.stat').text_content()
    assert stat == f"10 tok · {cells[2]}"


def test_stop_ends_the_stream_and_the_run_is_recorded_cancelled(page: Page, pages: Pages) -> None:
    open_page(page, pages, "endless")
    page.click("button.primary")
    longer_than(page, "out-0", 0)
    page.wait_for_selector("button.stop:enabled")
    page.click("button.stop")
    assert wait_status(page, "cancelled") == "CANCELLED: run stopped"
    assert page.locator("button.primary").is_enabled()
    shown = output_text(page, "out-0")
    page.wait_for_timeout(400)  # tokens come every 0.1 s: none may arrive any more
    assert output_text(page, "out-0") == shown
    record = pages.record("endless", run_id(page))
    assert record["state"] == "CANCELLED"
    assert record["error"] == "run stopped"
    assert shown and record["outputs"]["out-0"].startswith(shown)
    assert len(shown) < len("and on " * 500)
    assert box_state(page, "node", "llm-0") == "cancelled"


def test_a_bad_key_is_shown_as_a_401_and_a_good_one_can_be_entered(
    page: Page, pages: Pages
) -> None:
    page.goto(pages.url("form", key="fs-pub-nope-nope"))
    assert wait_status(page, "error") == "401: invalid API key"
    assert page.locator("#access").is_visible()
    page.fill("#key-input", pages.key)
    page.click("#access button[type=submit]")
    page.wait_for_selector("body[data-ready]")
    assert page.locator(".field .description").first.text_content() == "Your question"


def test_a_key_that_does_not_allow_the_page_origin_is_refused_with_how_to_fix_it(
    page: Page, pages: Pages
) -> None:
    # The org's first public key has no allowed origins: server-to-server only.
    open_page(page, pages, "slow", key=pages.server.public_key)
    page.click("button.primary")
    origin = pages.server.base_url
    assert wait_status(page, "error") == f"403: origin {origin!r} is not allowed for this API key"
    hint = page.locator("#status .hint").text_content()
    assert hint is not None and hint.endswith(
        f"flowserve keys create --kind public --origin {origin}"
    )


def test_a_failing_node_shows_the_error_the_api_sent(page: Page, pages: Pages) -> None:
    open_page(page, pages, "failing")
    page.click("button.primary")
    message = wait_status(page, "error")
    record = pages.record("failing", run_id(page))
    assert record["state"] == "FAILED" and record["error"]
    assert message == f"FAILED: {record['error']}"
    assert output_text(page, "out-0") == "one two"  # the two tokens before the failure
    assert box_state(page, "node", "llm-0") == "failed"
    assert page.locator('#node-stats tr[data-node="llm-0"] td').first.text_content() == "failed"


def test_markup_from_the_model_and_the_flow_is_shown_as_text_and_never_runs(
    page: Page, pages: Pages
) -> None:
    open_page(page, pages, "xss")
    assert page.title() == f"{XSS_NAME} · flowserve"
    assert page.locator("#flow-name").text_content() == XSS_NAME
    assert page.locator("#flow-description").text_content() == "<script>window.__pwned=5</script>"
    assert page.locator(".field .description").text_content() == "<b onmouseover=x>field</b>"
    assert page.locator("textarea[name=in-0]").input_value() == XSS_DEFAULT
    page.click("button.primary")
    wait_status(page, "done")
    assert output_text(page, "out-0") == XSS_REPLY
    # parsed as nothing: no element came of it (the CSP would only have stopped it running)
    assert page.locator("main img, main script, header img, header b").count() == 0
    page.wait_for_timeout(200)  # an <img src=x> fails to load at once; its onerror would run
    assert page.evaluate("window.__pwned") is None
    assert page.title() == f"{XSS_NAME} · flowserve"

    open_page(page, pages, "xss", "chat")
    page.fill("#message", "hi")
    page.keyboard.press("Enter")
    wait_status(page, "done")
    assert page.locator(".turn.assistant .turn-text").text_content() == XSS_REPLY
    page.reload()  # the conversation comes back from localStorage, as text again
    page.wait_for_selector("body[data-ready]")
    assert page.locator(".turn.assistant .turn-text").text_content() == XSS_REPLY
    assert page.locator("main img, main script").count() == 0
    page.wait_for_timeout(200)
    assert page.evaluate("window.__pwned") is None


def _send(page: Page, text: str) -> str:
    """Sends a chat message and returns the reply once the run is done."""
    replies = page.locator(".turn.assistant")
    before = replies.count()
    page.fill("#message", text)
    page.keyboard.press("Enter")
    page.wait_for_function(
        "n => document.querySelectorAll('.turn.assistant').length > n", arg=before
    )
    page.wait_for_selector(".turn.assistant:last-child:not([data-state=RUNNING])")
    return replies.last.locator(".turn-text").text_content() or ""


def test_chat_keeps_its_history_across_reloads_and_a_new_conversation_starts_afresh(
    page: Page, pages: Pages
) -> None:
    open_page(page, pages, "chat", "chat")
    user_id = page.locator(".user-id").text_content() or ""
    assert UUID.fullmatch(user_id)
    # the chat pair is in-1 -> out-1; the scripted model answers with the whole conversation
    assert _send(page, "hello") == "hello"
    assert _send(page, "again") == "hello | hello | again"
    page.reload()
    page.wait_for_selector("body[data-ready]")
    turns = page.locator(".turn .turn-text").all_text_contents()
    assert turns == ["hello", "hello", "again", "hello | hello | again"]
    assert page.locator(".user-id").text_content() == user_id
    # the server's memory for this user_id continues the conversation
    assert _send(page, "third") == "hello | hello | again | hello | hello | again | third"
    record = pages.record("chat", run_id(page))
    assert record["user_id"] == user_id
    assert record["inputs"] == {"in-0": "bot", "in-1": "third"}

    page.click("button.new")
    fresh = page.locator(".user-id").text_content() or ""
    assert UUID.fullmatch(fresh) and fresh != user_id
    assert page.locator(".turn").count() == 0
    assert _send(page, "anew") == "anew"  # no memory of the other conversation
    assert pages.record("chat", run_id(page))["user_id"] == fresh


def test_retry_sends_the_last_message_again(page: Page, pages: Pages) -> None:
    open_page(page, pages, "chat", "chat")
    assert _send(page, "once") == "once"
    first_run = run_id(page)
    page.click("button.retry")
    page.wait_for_function(
        "id => document.querySelector('#status .run-id')?.textContent !== id", arg=first_run
    )
    page.wait_for_selector(".turn.assistant:last-child:not([data-state=RUNNING])")
    # the same message again, in place of its answer (memory holds the first exchange)
    texts = page.locator(".turn .turn-text").all_text_contents()
    assert texts == ["once", "once | once | once"]
    assert pages.record("chat", run_id(page))["inputs"]["in-1"] == "once"


def test_a_key_in_the_fragment_stays_in_the_tab_and_leaves_the_address(
    page: Page, pages: Pages
) -> None:
    open_page(page, pages, "form")
    assert "#" not in page.url and pages.key not in page.url
    assert page.evaluate("sessionStorage.getItem('flowserve.key.acme')") == pages.key
    page.reload()
    page.wait_for_selector("body[data-ready]")  # the tab still has it
    assert page.context.browser is not None
    other = page.context.browser.new_context()
    try:
        tab = other.new_page()
        tab.goto(pages.url("form", key=""))
        tab.wait_for_selector("#access:not([hidden])")  # a new tab asks for one
    finally:
        other.close()
