"""The ticket-triage agents. Deterministic Python: the same ticket gives the same result.

``classify`` fails its first attempt on every ticket whose id ends in 7 with a
retryable error ("model overloaded"), so the demo shows retries with backoff.
"""

from __future__ import annotations

import re
from typing import Any

from apex.worker import RetryableError, TaskContext, agent

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
_PHONE = re.compile(r"\+?\d[\d -]{7,}\d")
_CARD = re.compile(r"\b\d(?:[ -]?\d){12,15}\b")

_LANGUAGE_WORDS = {
    "en": {"the", "is", "and", "my", "not", "cannot", "please", "since"},
    "es": {"el", "la", "es", "y", "mi", "no", "por", "favor"},
    "de": {"der", "die", "das", "ist", "und", "mein", "nicht", "bitte"},
}

# category -> (keywords, priority when matched)
_CATEGORIES: dict[str, tuple[tuple[str, ...], str]] = {
    "outage": (("down", "outage", "502", "503", "unreachable", "cannot access"), "high"),
    "billing": (("invoice", "charged", "refund", "payment", "billing"), "normal"),
    "bug": (("error", "crash", "bug", "broken", "exception"), "normal"),
    "account": (("password", "login", "locked", "2fa", "account"), "low"),
}

QUEUES = {
    "outage": "sre-oncall",
    "billing": "finance",
    "bug": "engineering",
    "account": "support-tier1",
    "other": "support-tier1",
}


@agent("parse")
async def parse(input: dict[str, Any]) -> dict[str, Any]:
    text = f"{input['subject'].strip()}\n\n{input['body'].strip()}".strip()
    words = set(re.findall(r"[a-zäöüñ]+", text.lower()))
    scores = {lang: len(words & vocab) for lang, vocab in _LANGUAGE_WORDS.items()}
    language = max(sorted(scores), key=lambda lang: scores[lang])
    return {"text": text, "language": language}


@agent("redact-pii")
async def redact_pii(input: dict[str, Any]) -> dict[str, Any]:
    text = input["text"]
    count = 0
    for pattern, label in ((_EMAIL, "[EMAIL]"), (_CARD, "[CARD]"), (_PHONE, "[PHONE]")):
        text, n = pattern.subn(label, text)
        count += n
    return {"text": text, "redactions": count}


@agent("classify")
async def classify(input: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    if ctx.attempt == 1 and ctx.run_id and _ticket_number(input["text"]).endswith("7"):
        raise RetryableError("model overloaded, try again")
    return classify_text(input["text"])


@agent("summarize")
async def summarize(input: dict[str, Any]) -> dict[str, Any]:
    body = input["text"].split("\n\n", 1)[-1]
    first = re.split(r"(?<=[.!?])\s", body.strip(), maxsplit=1)[0]
    if len(first) > 100:
        first = first[:97].rstrip() + "..."
    return {"summary": f"[{input['category']}] {first}"}


@agent("route")
async def route(input: dict[str, Any]) -> dict[str, Any]:
    queue = QUEUES.get(input["category"], QUEUES["other"])
    out: dict[str, Any] = {"queue": queue}
    if input["priority"] == "high":
        out["assignee"] = "oncall-lead"
    return out


def classify_text(text: str) -> dict[str, Any]:
    """The classification rule, also used by the demo to know what to expect."""
    lowered = text.lower()
    best, best_hits = "other", 0
    for category, (keywords, _) in _CATEGORIES.items():
        hits = sum(1 for k in keywords if k in lowered)
        if hits > best_hits:
            best, best_hits = category, hits
    priority = _CATEGORIES[best][1] if best in _CATEGORIES else "low"
    if "data loss" in lowered or "urgent" in lowered:
        priority = "high"
    confidence = round(min(1.0, 0.5 + 0.25 * best_hits), 2)
    return {"category": best, "priority": priority, "confidence": confidence}


def _ticket_number(text: str) -> str:
    match = re.search(r"#(\d+)", text)
    return match.group(1) if match else ""


agents = [parse, redact_pii, classify, summarize, route]
