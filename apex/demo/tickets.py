"""Sample support tickets for the demo, and the outcome each one should have."""

from __future__ import annotations

from typing import Any

from apex.demo.agents import QUEUES, classify_text

_TEMPLATES = [
    ("Site is down #{n}", "Our dashboard returns 502 since 9am. Customers cannot access it."),
    ("Charged twice #{n}", "My card 4111 1111 1111 1111 was charged twice for the invoice."),
    (
        "App crash #{n}",
        "The app shows an error and crashes when I export. Mail me at ann@example.com",
    ),
    ("Locked out #{n}", "I cannot login, my account is locked after the password reset."),
    (
        "Urgent data loss #{n}",
        "After the update there is an error and we see data loss in reports.",
    ),
    ("Question #{n}", "How do I change the colour of the sidebar? Call me on +44 20 7946 0958."),
    ("Refund please #{n}", "Please refund the payment for last month, the invoice is wrong."),
]


def tickets(count: int) -> list[dict[str, Any]]:
    """``count`` tickets cycling through the templates, numbered from 1."""
    out = []
    for n in range(1, count + 1):
        subject, body = _TEMPLATES[(n - 1) % len(_TEMPLATES)]
        out.append(
            {
                "ticket_id": f"T-{n:04d}",
                "subject": subject.format(n=n),
                "body": body,
                "customer": {"tier": "gold" if n % 3 == 0 else "standard"},
            }
        )
    return out


def expected_outcome(ticket: dict[str, Any]) -> dict[str, Any]:
    """What the run must end with: its queue and priority (the classify rule decides)."""
    verdict = classify_text(f"{ticket['subject']}\n\n{ticket['body']}")
    return {"queue": QUEUES[verdict["category"]], "priority": verdict["priority"]}
