"""Block Kit builders: readable incident messages with plain status words."""

from __future__ import annotations

from typing import Any

# Provider limits. Block Kit: https://api.slack.com/reference/block-kit/blocks
# (header text 150 chars, section text 3000, a field 2000, at most 10 fields per section).
HEADER_TEXT_LIMIT = 150
SECTION_TEXT_LIMIT = 3000
FIELD_TEXT_LIMIT = 2000
MAX_FIELDS_PER_SECTION = 10

_PASSED_WORDS = frozenset({"passed", "pass", "ok", "success", "succeeded", "successful"})
_FAILED_WORDS = frozenset({"failed", "fail", "failure", "error", "errored"})


def status_word(outcome: str | bool | None) -> str:
    """A plain, upper-case status word: PASSED, FAILED, or the outcome itself upper-cased.

    Args:
        outcome: True/False, or a word such as "passed", "ok", "failed", "skipped",
            "in_progress".

    Returns:
        e.g. ``"PASSED"``, ``"FAILED"``, ``"SKIPPED"``, ``"IN PROGRESS"``; ``"UNKNOWN"`` for None.
    """
    if outcome is None:
        return "UNKNOWN"
    if isinstance(outcome, bool):
        return "PASSED" if outcome else "FAILED"
    word = str(outcome).strip().lower()
    if word in _PASSED_WORDS:
        return "PASSED"
    if word in _FAILED_WORDS:
        return "FAILED"
    return word.replace("_", " ").replace("-", " ").upper() or "UNKNOWN"


def incident_opening_blocks(
    scenario: str,
    target: str,
    mode: str,
    severity: str | None,
    flow_run_url: str | None,
    status: str,
) -> list[dict[str, Any]]:
    """Blocks for the message that opens an incident or drill thread.

    Args:
        scenario: e.g. "primary-failover".
        target: the protected system's name in dr.yaml.
        mode: "incident", "drill" or "dry-run".
        severity: e.g. "SEV1"; None when not set.
        flow_run_url: link to the Prefect flow run, if the UI is known.
        status: e.g. "in_progress", "passed", "failed" (shown as a plain word).

    Returns:
        Block Kit blocks.
    """
    mode_label = mode.replace("_", " ").replace("-", " ").lower()
    blocks: list[dict[str, Any]] = [
        _header(f"DR {mode_label}: {scenario} on {target}"),
        _fields(
            ("Scenario", scenario),
            ("Target", target),
            ("Mode", mode_label),
            ("Severity", severity or "not set"),
            ("Status", status_word(status)),
        ),
    ]
    if flow_run_url:
        blocks.append(_section(_link(flow_run_url, "Open the flow run in Prefect")))
    blocks.append(_context("Each phase's result follows in this thread."))
    return blocks


def phase_reply_blocks(
    phase: str,
    outcome: str | bool,
    duration_seconds: float | None,
    detail: str | None,
) -> list[dict[str, Any]]:
    """Blocks for a thread reply reporting one recovery phase.

    Args:
        phase: the phase's name, e.g. "promote replica".
        outcome: e.g. "passed", "failed", "skipped", "unchanged", or a bool.
        duration_seconds: how long the phase took; None if not measured.
        detail: one or more lines of explanation (the outcome sentence); may be None.

    Returns:
        Block Kit blocks.
    """
    word = status_word(outcome)
    blocks: list[dict[str, Any]] = [
        _section(f"*{_escape(phase)}*: {word}"),
        _fields(("Outcome", word), ("Duration", _duration(duration_seconds))),
    ]
    if detail:
        blocks.append(_section(_escape(detail)))
    return blocks


def final_blocks(
    outcome: str | bool,
    rto_seconds: float | None,
    rpo_seconds: float | None,
    rto_objective: float | None,
    rpo_objective: float | None,
    flow_run_url: str | None,
    notes: list[str] | str | None,
) -> list[dict[str, Any]]:
    """Blocks for the closing message: outcome and measured RTO/RPO against objectives.

    Args:
        outcome: the run's outcome ("passed"/"failed" or a bool).
        rto_seconds: measured recovery time; None if not measured.
        rpo_seconds: measured data-loss window; None if not measured.
        rto_objective: the tier's RTO objective in seconds; None if none.
        rpo_objective: the tier's RPO objective in seconds; None if none.
        flow_run_url: link to the Prefect flow run.
        notes: remarks for people (e.g. undelivered notifications, manual follow-ups).

    Returns:
        Block Kit blocks.
    """
    word = status_word(outcome)
    blocks: list[dict[str, Any]] = [
        _header(f"DR run {word}"),
        _fields(
            ("Outcome", word),
            ("RTO", _against_objective(rto_seconds, rto_objective)),
            ("RPO", _against_objective(rpo_seconds, rpo_objective)),
        ),
    ]
    if isinstance(notes, str):
        notes = [notes]
    if notes:
        lines = "\n".join(f"- {_escape(note)}" for note in notes)
        blocks.append(_section(f"*Notes*\n{lines}"))
    if flow_run_url:
        blocks.append(_section(_link(flow_run_url, "Open the flow run in Prefect")))
    return blocks


def _against_objective(value: float | None, objective: float | None) -> str:
    if value is None:
        return "not measured"
    text = _duration(value)
    if objective is None:
        return f"{text} (no objective)"
    verdict = "met" if value <= objective else "MISSED"
    return f"{text} (objective {_duration(objective)}): {verdict}"


def _duration(seconds: float | None) -> str:
    """A short human duration: "0.4 s", "12.3 s", "4 min 05 s", "1 h 02 min"."""
    if seconds is None:
        return "not measured"
    if seconds < 60:
        return f"{seconds:.1f} s"
    total = round(seconds)
    if total < 3600:
        return f"{total // 60} min {total % 60:02d} s"
    return f"{total // 3600} h {total % 3600 // 60:02d} min"


def _escape(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as control characters."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _header(text: str) -> dict[str, Any]:
    return {
        "type": "header",
        "text": {"type": "plain_text", "text": _truncate(text, HEADER_TEXT_LIMIT)},
    }


def _section(mrkdwn: str) -> dict[str, Any]:
    return {
        "type": "section",
        "text": {"type": "mrkdwn", "text": _truncate(mrkdwn, SECTION_TEXT_LIMIT)},
    }


def _fields(*pairs: tuple[str, str]) -> dict[str, Any]:
    return {
        "type": "section",
        "fields": [
            {
                "type": "mrkdwn",
                "text": _truncate(f"*{_escape(name)}*\n{_escape(value)}", FIELD_TEXT_LIMIT),
            }
            for name, value in pairs[:MAX_FIELDS_PER_SECTION]
        ],
    }


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": _escape(text)}]}


def _link(url: str, label: str) -> str:
    return f"<{_escape(url)}|{_escape(label)}>"
