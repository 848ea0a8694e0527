"""Feedback from the dashboard, in a real headless Chromium against a real ``hone serve``: rate an answer
in the chat (stored with ``store: true``), then work the review queue (#/review): filter by metadata and
model, correct one answer, rate another; what the page did is what the API then says; then build a
training file from the feedback on the same page."""

from __future__ import annotations

import json

import pytest
from test_dashboard import PageLog, api_json, browser  # noqa: F401  (browser is a fixture)

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.slow  # the real embedded model answers every chat
MODEL = "smollm2-135m-instruct"


def test_rate_in_chat_and_correct_in_the_review_queue(browser, tmp_path):  # noqa: F811
    from serve_helpers import start_server

    server = start_server(tmp_path)
    c = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0, timeout=300)
    trap = 'What is <img src=x onerror="document.title=1">?'
    seeded = [c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": q}], max_tokens=3,
                                        temperature=0, store=True, metadata={"topic": t})
              for q, t in (("Sky colour?", "a"), ("Grass colour?", "b"), (trap, "a"))]
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    log = PageLog(page)
    try:
        # The chat stores its answers; rate one under its bubble.
        page.goto(f"{server.url}/#/chat?model={MODEL}")
        page.wait_for_selector(f"#chat-model option[value='{MODEL}']", state="attached")
        page.fill("#chat-max-tokens", "4")
        page.fill("#chat-temperature", "0")
        page.fill("#chat-input", "Say hello.")
        page.click("#chat-send")
        page.wait_for_selector(".msg.assistant[data-done=true]", timeout=120_000)
        chat_id = page.get_attribute(".msg.assistant[data-done=true]", "data-id")
        page.click(".feedback .fb-up")
        page.wait_for_selector(".feedback[data-rating=up]")
        stored = api_json(server, f"/chat/completions/{chat_id}")
        assert stored["feedback"]["rating"] == "up" and stored["metadata"] == {"source": "dashboard-chat"}
        assert stored["choices"][0]["message"]["content"] == page.text_content(".msg.assistant[data-done=true]")

        # The queue: unrated by default (the chat's answer is rated), newest first.
        page.click("nav >> text=Review")
        page.wait_for_selector("#review-list[data-loads='1']")
        ids = page.eval_on_selector_all(".review-item", "els => els.map(e => e.dataset.id)")
        assert ids == [x.id for x in seeded][::-1]
        assert page.locator("#review-list img").count() == 0 and trap in page.text_content("#review-list")

        page.fill("#review-metadata", "topic=a")
        page.select_option("#review-model", MODEL)
        page.click("#review-apply")
        page.wait_for_selector("#review-list[data-loads='2']")
        assert page.locator(".review-item").count() == 2
        first = page.locator(f".review-item[data-id='{seeded[0].id}']")
        first.locator(".fb-fix").click()
        first.locator(".fb-correction").fill("Blue.")
        first.locator(".fb-note").fill("the sky is blue")
        first.locator(".fb-save").click()
        first.locator(".feedback[data-corrected=true]").wait_for()
        page.locator(f".review-item[data-id='{seeded[2].id}'] .fb-down").click()
        page.wait_for_selector(f".review-item[data-id='{seeded[2].id}'] .feedback[data-rating=down]")

        fb = api_json(server, f"/chat/completions/{seeded[0].id}")["feedback"]
        assert (fb["rating"], fb["correction"], fb["note"]) == ("down", "Blue.", "the sky is blue")
        assert api_json(server, f"/chat/completions/{seeded[2].id}")["feedback"]["correction"] is None
        assert api_json(server, f"/chat/completions/{seeded[1].id}")["feedback"] is None

        # Rated ones, any metadata: the chat's answer and the two just reviewed.
        page.fill("#review-metadata", "")
        page.select_option("#review-show", "rated")
        page.click("#review-apply")
        page.wait_for_selector("#review-list[data-loads='3']")
        assert page.locator(".review-item").count() == 3
        assert page.locator(".review-item .feedback[data-rating=down]").count() == 2

        # The feedback becomes a training file from the same page: too few for the default minimum (the
        # reason is shown, no file is made), then a DPO pair file once the minimum allows one pair.
        page.select_option("#traffic-kind", "dpo")
        page.click("#traffic-build")
        page.wait_for_selector("#traffic-error")
        assert "need at least 10" in page.text_content("#traffic-error")
        assert api_json(server, "/files")["data"] == []
        page.fill("#traffic-min", "1")
        page.click("#traffic-build")
        page.wait_for_selector("#traffic-result .validation[data-ok=true]")
        file_id = page.get_attribute("#traffic-result [data-file]", "data-file")
        rows = [json.loads(x) for x in c.files.content(file_id).text.splitlines()]
        assert [(r["id"], r["chosen"]) for r in rows] == [(seeded[0].id, "Blue.")]
        assert rows[0]["rejected"] == seeded[0].choices[0].message.content
        page.wait_for_timeout(200)
        assert page.title() == "Honing"
        assert log.unexpected(allowed=("400",)) == [], log.errors  # the refused build's 400
    finally:
        page.close()
        server.stop()
