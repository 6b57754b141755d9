"""Who may send alerts: bearer tokens and HMAC signatures (ours, PagerDuty's, Grafana's)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from deployments.alerts.payloads import PayloadKind

#: Our own signature header: ``sha256=<hex HMAC-SHA256 of the raw body>``.
SIGNATURE_HEADER = "X-DR-Signature"


#: PagerDuty V3: ``v1=<hex>[,v1=<hex>...]`` (several while a secret is rotated).
#: https://developer.pagerduty.com/docs/webhooks/webhook-signatures/
PAGERDUTY_SIGNATURE_HEADER = "X-PagerDuty-Signature"


#: Grafana's default HMAC header: ``<hex>`` of the body, or of ``<timestamp>:<body>`` when
#: the contact point's "Timestamp Header" is set to :data:`GRAFANA_TIMESTAMP_HEADER`.
GRAFANA_SIGNATURE_HEADER = "X-Grafana-Alerting-Signature"


GRAFANA_TIMESTAMP_HEADER = "X-Grafana-Alerting-Timestamp"


#: How far a signed Grafana timestamp may be from our clock (replay protection).
GRAFANA_TIMESTAMP_TOLERANCE_SECONDS = 300


def sign_body(secret: str | bytes, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``body`` (what senders put in their signature header)."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def verify_hmac_sha256(secret: str | bytes, body: bytes, signature_hex: str) -> bool:
    """Check a hex HMAC-SHA256 in constant time.

    Args:
        secret: the shared secret.
        body: the exact bytes received (never re-serialized JSON).
        signature_hex: the signature as sent, hex (case-insensitive).

    Returns:
        True when it matches.
    """
    expected = sign_body(secret, body)
    return hmac.compare_digest(expected.encode(), signature_hex.strip().lower().encode())


def verify_pagerduty_signature(secret: str | bytes, body: bytes, header: str) -> bool:
    """Check PagerDuty's ``X-PagerDuty-Signature``: true when any ``v1=`` entry matches.

    PagerDuty sends several comma-separated signatures while a subscription's secret is
    being rotated; one valid signature is enough. Entries of other versions are skipped.
    """
    expected = sign_body(secret, body).encode()
    ok = False
    for entry in header.split(","):
        version, _, value = entry.strip().partition("=")
        if version == "v1" and value:
            # No early exit: every entry is compared, so timing says nothing about which.
            ok |= hmac.compare_digest(expected, value.strip().lower().encode())
    return ok


@dataclass(frozen=True)
class AuthResult:
    """Whether a request is authenticated, how, and (when not) why, safe to log."""

    ok: bool
    method: str = ""
    reason: str = ""


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


def _check_signatures(
    kind: PayloadKind,
    headers: Mapping[str, str],
    body: bytes,
    secret: str,
    now: float,
) -> AuthResult | None:
    """Verify whichever signature headers are present; None when there are none."""
    dr_sig = headers.get(SIGNATURE_HEADER.lower())
    if dr_sig is not None:
        algorithm, _, value = dr_sig.strip().partition("=")
        if algorithm != "sha256" or not verify_hmac_sha256(secret, body, value):
            return AuthResult(False, reason=f"bad {SIGNATURE_HEADER}")
        return AuthResult(True, method="hmac")
    if kind == "pagerduty":
        pd_sig = headers.get(PAGERDUTY_SIGNATURE_HEADER.lower())
        if pd_sig is not None:
            if not verify_pagerduty_signature(secret, body, pd_sig):
                return AuthResult(False, reason=f"bad {PAGERDUTY_SIGNATURE_HEADER}")
            return AuthResult(True, method="hmac")
    if kind == "grafana":
        gf_sig = headers.get(GRAFANA_SIGNATURE_HEADER.lower())
        if gf_sig is not None:
            stamp = headers.get(GRAFANA_TIMESTAMP_HEADER.lower())
            signed = body if stamp is None else stamp.strip().encode() + b":" + body
            if not verify_hmac_sha256(secret, signed, gf_sig):
                return AuthResult(False, reason=f"bad {GRAFANA_SIGNATURE_HEADER}")
            if stamp is not None:
                try:
                    age = abs(now - float(stamp))
                except ValueError:
                    return AuthResult(False, reason=f"bad {GRAFANA_TIMESTAMP_HEADER}")
                if age > GRAFANA_TIMESTAMP_TOLERANCE_SECONDS:
                    return AuthResult(False, reason="stale signed timestamp")
            return AuthResult(True, method="hmac")
    return None


def verify_request(
    kind: PayloadKind,
    headers: Mapping[str, str],
    body: bytes,
    *,
    bearer_token: str | None,
    hmac_secret: str | None,
    now: float,
) -> AuthResult:
    """Decide whether a request may start runs.

    Either a valid bearer token or a valid signature is enough. A signature header that
    is present (and a secret configured) must be valid, even when the bearer token is
    right: a wrong signature means the body is not what the sender signed. Signatures are
    accepted in :data:`SIGNATURE_HEADER` on every endpoint, plus PagerDuty's own header on
    the PagerDuty endpoint and Grafana's on the Grafana endpoint.

    Args:
        kind: the endpoint's payload kind.
        headers: request headers with lower-case names.
        body: the raw body.
        bearer_token: the expected token, or None when not configured.
        hmac_secret: the shared signing secret, or None when not configured.
        now: the current Unix time (for Grafana's signed timestamp).

    Returns:
        An :class:`AuthResult`; its ``reason`` never contains a credential.
    """
    if hmac_secret:
        signed = _check_signatures(kind, headers, body, hmac_secret, now)
        if signed is not None:
            return signed
    presented = _bearer(headers.get("authorization"))
    if bearer_token and presented is not None:
        if hmac.compare_digest(presented.encode(), bearer_token.encode()):
            return AuthResult(True, method="bearer")
        return AuthResult(False, reason="bad bearer token")
    return AuthResult(False, reason="no credentials")
