"""Feedback tokens: only an answer a gateway gave can be scored, and only once per pod.

User feedback (``POST /v1/feedback``) feeds the candidate's quality alarm, which rolls the
candidate back. An unauthenticated endpoint that took any request id would let anyone roll
back every rollout with two requests. So every answer the model gave (the model server's 200,
never a request the gateway refused or the model server failed) carries a token,
``x-weightshift-feedback-token: <colour>.<issued>.<answer>.<mac>``: ``answer`` is an id the
gateway generated for that answer (24 hex digits), and the MAC an HMAC-SHA256 (first 128
bits, hex) of the colour that answered, the time it was issued (Unix seconds), the answer
id and the request's ``x-request-id``, under a key every gateway of the stack shares.
Feedback must send the token back with the ``x-request-id``; the gateway that receives it
(either colour: the ALB splits by weight) checks the token's form (anything else is a 403,
whatever its characters), the MAC, that the token is at most ``MAX_AGE_SECONDS`` old, and
that this pod has not already taken feedback for that answer. The answer id, not the
client's request id, is what is scored once: a client choosing its ``x-request-id`` can
neither mint scores nor spend another client's.

The shared key is derived, never stored: at start each gateway asks AWS KMS for
``GenerateMac`` of a fixed message under the stack's HMAC key (``HMAC_256``), which is
deterministic, so every pod of both colours gets the same 32 bytes and no secret exists in
config, state or Kubernetes. Rotating means a new KMS key. Without a KMS key (a gateway run by
hand) the key is random per process: tokens then verify only in that process.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

from weightshift.gateway.errors import GatewayStartError

TOKEN_HEADER = "x-weightshift-feedback-token"
DERIVATION_MESSAGE = b"weightshift feedback tokens v1"
"""What each gateway asks KMS to MAC: the same message under the same key, the same bytes."""
MAX_AGE_SECONDS = 7 * 24 * 3600
"""How long after an answer its feedback is taken."""
FUTURE_SKEW_SECONDS = 300
"""Clock difference between pods tolerated for a token issued "in the future"."""
MAC_HEX = 32
ANSWER_HEX = 24
SEEN_LIMIT = 200_000
"""Answer ids remembered per pod against repeated feedback (oldest forgotten first)."""
_TOKEN = re.compile(
    rf"(blue|green)\.([0-9]{{1,12}})\.([0-9a-f]{{{ANSWER_HEX}}})\.([0-9a-f]{{{MAC_HEX}}})",
    re.ASCII,
)
"""A token's only form (ASCII digits and lower-case hex: ``isdigit`` takes ``²``)."""

log = logging.getLogger("weightshift.gateway.feedback")


class FeedbackError(Exception):
    """Feedback refused: ``status`` and an error ``code`` for the answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def derive_key(kms_key_id: str, region: str | None) -> bytes:
    """The stack's feedback key: KMS ``GenerateMac`` of ``DERIVATION_MESSAGE``."""
    import boto3  # noqa: PLC0415 (only when a KMS key is given)
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

    try:
        client = boto3.client("kms", region_name=region)
        answer = client.generate_mac(
            KeyId=kms_key_id, Message=DERIVATION_MESSAGE, MacAlgorithm="HMAC_SHA_256"
        )
    except (BotoCoreError, ClientError) as error:
        raise GatewayStartError(
            f"--feedback-key {kms_key_id}: KMS GenerateMac failed ({error}). The pod's role "
            "needs kms:GenerateMac on that HMAC_256 key; feedback tokens cannot be signed "
            "without it."
        ) from None
    key: bytes = answer["Mac"]
    return key


def random_key() -> bytes:
    log.warning(
        "no --feedback-key: feedback tokens are signed with a key of this process only, so "
        "feedback is taken only by this process"
    )
    return secrets.token_bytes(32)


class FeedbackTokens:
    """Issue and check feedback tokens under one key; remember the request ids scored."""

    def __init__(self, key: bytes, clock: Callable[[], float] = time.time) -> None:
        self._keyed = hmac.new(key, digestmod="sha256")
        """HMAC-SHA256 with the key set, copied per token (cheaper than keying anew)."""
        self._clock = clock
        self._seen: OrderedDict[str, None] = OrderedDict()

    def _mac(self, colour: str, issued: int, answer: str, request_id: str) -> str:
        message = f"{colour}.{issued}.{answer}.{request_id}".encode(errors="surrogatepass")
        mac = self._keyed.copy()
        mac.update(message)
        return mac.hexdigest()[:MAC_HEX]

    def issue(self, colour: str, request_id: str, answer: str | None = None) -> str:
        """The token of the answer ``answer`` (the gateway's id for it; a new one if
        none) given to the request ``request_id``."""
        issued = int(self._clock())
        answer = answer or secrets.token_hex(ANSWER_HEX // 2)
        return f"{colour}.{issued}.{answer}.{self._mac(colour, issued, answer, request_id)}"

    def accept(self, token: str, request_id: str) -> str:
        """The colour that gave the answer ``token`` names, once; raises
        :class:`FeedbackError` (403 for any token not issued by this stack, 409 again)."""
        colour, answer = self._check(token, request_id)
        if answer in self._seen:
            raise FeedbackError(
                409, "duplicate_feedback", f"feedback for {request_id!r} was already taken"
            )
        self._seen[answer] = None
        if len(self._seen) > SEEN_LIMIT:
            self._seen.popitem(last=False)
        return colour

    def _check(self, token: str, request_id: str) -> tuple[str, str]:
        invalid = FeedbackError(
            403,
            "invalid_feedback_token",
            f"token does not match request id {request_id!r}: send back the answer's "
            f"{TOKEN_HEADER} header with its x-request-id",
        )
        form = _TOKEN.fullmatch(token)
        if form is None:
            raise invalid
        colour, issued, answer, mac = form.group(1), int(form.group(2)), form[3], form[4]
        if not hmac.compare_digest(mac, self._mac(colour, issued, answer, request_id)):
            raise invalid
        age = self._clock() - issued
        if age > MAX_AGE_SECONDS or age < -FUTURE_SKEW_SECONDS:
            raise FeedbackError(
                403,
                "expired_feedback_token",
                f"feedback is taken for {MAX_AGE_SECONDS // 86400} days after the answer",
            )
        return colour, answer
