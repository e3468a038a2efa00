"""The exception tree: codes, redaction, pickling."""

from __future__ import annotations

import pickle

import engine
from engine._errors import redact


def test_error_messages_never_carry_an_api_key():
    """A key-shaped string in a server message is masked."""
    error = engine.BadRequestError("bad key sk-proj-abcdefghijklmnop given")
    assert "sk-proj" not in str(error) and "***" in str(error)


def test_redact_masks_explicit_secrets_and_bearer_tokens():
    """redact() hides the given secret and any Authorization bearer value."""
    text = redact("token=hunter2-secret Authorization: Bearer abcdef123456", "hunter2-secret")
    assert "hunter2" not in text and "abcdef123456" not in text


def test_errors_keep_every_attribute_through_pickling():
    """Pickling keeps code, status, request id and the raw content."""
    error = engine.ResponseValidationError(
        "bad json", raw="{oops", code="invalid_json", status_code=200, request_id="req_1"
    )
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is engine.ResponseValidationError
    assert (copy.raw, copy.code, copy.status_code, copy.request_id) == (
        "{oops",
        "invalid_json",
        200,
        "req_1",
    )


def test_default_codes_name_the_failure_kind():
    """Each class has a short default code for Batch-API error lines."""
    assert engine.RequestTooLargeError("x").code == "request_too_large"
    assert engine.InsufficientQuotaError("x").code == "insufficient_quota"
    assert engine.RunStoppedError("x").code == "run_stopped"
    assert isinstance(engine.AuthenticationError("x"), engine.FatalError)
