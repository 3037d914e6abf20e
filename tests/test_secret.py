from __future__ import annotations

import copy
import logging
import pickle

import pytest
from credbridge.core import Secret, SecretDocument


def test_secret_is_masked_everywhere() -> None:
    secret = Secret(b"hunter2")
    for text in (
        repr(secret),
        str(secret),
        f"{secret}",
        f"{secret!r}",
        "%s" % secret,
        repr([secret]),
        repr({"k": secret}),
    ):
        assert "hunter2" not in text
    assert secret.reveal() == b"hunter2"
    assert "hunter2" not in repr(SecretDocument({"password": "hunter2"}))


def test_secret_not_in_logs_or_exceptions(caplog: pytest.LogCaptureFixture) -> None:
    secret = Secret(b"hunter2")
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("t").debug("value %s %r", secret, secret)
    assert "hunter2" not in caplog.text
    try:
        raise ValueError(secret)
    except ValueError as error:
        assert "hunter2" not in str(error)


def test_secret_cannot_be_pickled_and_wipes() -> None:
    secret = Secret(b"hunter2")
    with pytest.raises(TypeError):
        pickle.dumps(secret)
    twin = copy.deepcopy(secret)
    assert twin == secret
    secret.wipe()
    with pytest.raises(ValueError, match="wiped"):
        secret.reveal()
    assert twin.reveal() == b"hunter2"


def test_equality_is_by_value_and_unhashable() -> None:
    assert Secret(b"a") == Secret(b"a")
    assert Secret(b"a") != Secret(b"b")
    with pytest.raises(TypeError):
        hash(Secret(b"a"))
