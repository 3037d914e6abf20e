"""The setting parsers every plugin uses (core/settings.py): what each accepts, at its
boundaries, and the one line it gives for anything else."""

from __future__ import annotations

import math
import os
import pwd
from pathlib import Path
from typing import Any

import pytest
from credbridge.core.errors import ConfigError
from credbridge.core.settings import (
    Setting,
    expand_user,
    int_setting,
    name_setting,
    number_setting,
    path_setting,
    refuse_unknown,
    seconds_setting,
)

ROOT_HOME = pwd.getpwuid(0).pw_dir


def test_expand_user_expands_a_leading_tilde_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/op")
    assert expand_user("~/x/y") == Path("/home/op/x/y")
    assert expand_user("~") == Path("/home/op")
    assert expand_user("~root/x") == Path(ROOT_HOME) / "x"
    assert expand_user("a/~/b") == Path("a/~/b")
    assert expand_user("/abs/~x") == Path("/abs/~x")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "~nosuchuser42/x",
            "cannot expand '~nosuchuser42': no user 'nosuchuser42' on this machine",
        ),
        ("~nosuchuser42", "cannot expand '~nosuchuser42': no user 'nosuchuser42' on this machine"),
    ],
)
def test_an_unknown_user_is_named(text: str, message: str) -> None:
    with pytest.raises(ValueError) as error:
        expand_user(text)
    assert str(error.value) == message


def test_a_home_that_cannot_be_found_is_said_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOME")
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: (_ for _ in ()).throw(KeyError(uid)))
    with pytest.raises(ValueError) as error:
        expand_user("~/x")
    assert str(error.value) == (
        "cannot expand '~': $HOME is not set and the user has no home directory"
    )


@pytest.mark.parametrize("value", ["", 5, None, ["x"]])
def test_paths_and_names_must_be_non_empty_strings(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"c\.toml: a\.b: must be a non-empty path string"):
        path_setting(value, base=Path("/base"), file="c.toml", key="a.b")
    with pytest.raises(ConfigError, match=r"c\.toml: a\.b: must be a non-empty string"):
        name_setting(value, file="c.toml", key="a.b")


def test_relative_paths_are_taken_from_the_config_directory() -> None:
    assert path_setting("x/y", base=Path("/etc/cb"), file=None, key="k") == Path("/etc/cb/x/y")
    assert path_setting("/x", base=Path("/etc/cb"), file=None, key="k") == Path("/x")
    assert name_setting("sops", file=None, key="k") == "sops"


@pytest.mark.parametrize("value", [1e-9, 1, 86400, 86400.0])
def test_seconds_up_to_a_day_are_accepted(value: float) -> None:
    assert seconds_setting(value, file=None, key="t") == float(value)


@pytest.mark.parametrize("value", [0, -1, 86400.001, 86401, math.nan, math.inf, True, "5"])
def test_seconds_outside_a_day_are_refused(value: Any) -> None:
    with pytest.raises(ConfigError, match="t: must be a positive number of seconds, at most 86400"):
        seconds_setting(value, file=None, key="t")


def test_a_duration_declared_up_to_an_hour_is_at_most_an_hour() -> None:
    timeout = Setting("t", "duration", maximum=3600)
    assert timeout.parse(3600, base=Path("/"), file=None, key="sources.x.t") == 3600.0
    with pytest.raises(
        ConfigError, match=r"sources\.x\.t: must be a positive number of seconds, at most 3600"
    ):
        timeout.parse(3601, base=Path("/"), file=None, key="sources.x.t")


@pytest.mark.parametrize(
    ("value", "ok"),
    [(0, True), (2.5, True), (-0.1, False), (math.nan, False), (False, False), ("1", False)],
)
def test_numbers_from_their_minimum(value: Any, ok: bool) -> None:
    number = Setting("n", "number")
    if ok:
        assert number.parse(value, base=Path("/"), file=None, key="s.n") == value
    else:
        with pytest.raises(ConfigError, match=r"s\.n: must be a number from 0 to inf"):
            number.parse(value, base=Path("/"), file=None, key="s.n")


def test_home_is_read_from_the_environment_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", os.path.join("/", "elsewhere"))
    assert expand_user("~") == Path("/elsewhere")


@pytest.mark.parametrize(
    ("parse", "low", "high", "outside", "refusal"),
    [
        (number_setting, 0, 2, (2.0001, -0.0001), "must be a number from 0 to 2"),
        (int_setting, 1, 64, (0, 65), "must be an integer from 1 to 64"),
    ],
    ids=["number", "int"],
)
def test_ranged_settings_include_both_ends(
    parse: Any, low: float, high: float, outside: tuple[float, float], refusal: str
) -> None:
    for value in (low, high):
        assert parse(value, file=None, key="n", minimum=low, maximum=high) == value
    for value in outside:
        with pytest.raises(ConfigError, match=f"n: {refusal}"):
            parse(value, file=None, key="n", minimum=low, maximum=high)


def test_of_several_unknown_settings_the_first_in_order_is_named() -> None:
    with pytest.raises(ConfigError, match=r"s\.alpha: unknown setting 'alpha' for this table \(known: b\)"):
        refuse_unknown({"zulu": 1, "b": 2, "alpha": 3}, ["b"], what="this table", file=None, where="s")
