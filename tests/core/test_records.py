"""``credbridge.core.records`` behaves as ``dataclasses`` does on the same declarations.

Every class below is declared twice by one function, once with ``dataclasses.dataclass`` and
``dataclasses.field`` and once with ``record`` and ``records.field``; each test does the same
thing to both and compares what comes out (the reference is the standard library, not our
reading of it).
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
from credbridge.core import records

Makers = tuple[Callable[..., Any], Callable[..., Any]]
MAKERS: dict[str, Makers] = {
    "dataclasses": (dataclasses.dataclass, dataclasses.field),
    "records": (records.record, records.field),
}


def declare(make: Callable[..., Any], field: Callable[..., Any]) -> dict[str, type]:
    """The shapes the core's records use, declared with ``make`` and ``field``."""

    @make(frozen=True, order=True, slots=True)
    class Locator:
        scheme: str
        path: str
        options: tuple[tuple[str, str], ...] = ()

    @make(frozen=True, order=True, slots=True)
    class Reference:
        locator: Locator
        selector: str | None = None
        text: str = field(default="", compare=False)
        cached: str | None = field(default=None, init=False, repr=False, compare=False)

        def rendered(self) -> str:
            return f"{self.locator.scheme}:{self.locator.path}"

    @make(frozen=True, eq=False, kw_only=True)
    class Base:
        summary: str = ""
        settings: Any = None
        calls: ClassVar[list[str]] = []

        def __post_init__(self) -> None:
            object.__setattr__(self, "settings", tuple(self.settings or ()))

    @make(frozen=True, eq=False, kw_only=True)
    class Derived(Base):
        scheme: str
        options: Any = None

        def __post_init__(self) -> None:
            object.__setattr__(self, "options", frozenset(self.options or ()))
            super().__post_init__()

    @make(frozen=True)
    class Target:
        name: str
        credentials: tuple[str, ...]
        settings: dict[str, Any] = field(default_factory=dict)
        by_name: dict[str, int] = field(init=False, repr=False, compare=False, default_factory=dict)
        tags: tuple[str, ...] = field(default=(), hash=False)

        def __post_init__(self) -> None:
            object.__setattr__(self, "by_name", {c: i for i, c in enumerate(self.credentials)})

    @make
    class Mutable:
        name: str
        items: list[str] = field(default_factory=list)
        error: str | None = None

    @make(frozen=True, slots=True)
    class Entry:
        credential: str
        change: str
        detail: str = ""

    return {
        "Locator": Locator,
        "Reference": Reference,
        "Base": Base,
        "Derived": Derived,
        "Target": Target,
        "Mutable": Mutable,
        "Entry": Entry,
    }


CLASSES = {kind: declare(*makers) for kind, makers in MAKERS.items()}

CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("Locator", ("vault", "secret/app"), {}),
    ("Locator", ("vault",), {"path": "p", "options": (("a", "1"),)}),
    ("Locator", (), {"scheme": "env", "path": "HOME"}),
    ("Locator", ("a", "b", (), "extra"), {}),
    ("Locator", ("a",), {}),
    ("Locator", ("a", "b"), {"scheme": "twice"}),
    ("Locator", ("a", "b"), {"nope": 1}),
    ("Reference", (), {"locator": "L", "selector": "k", "text": "vault:x#k"}),
    ("Reference", ("L",), {"cached": "no"}),
    ("Base", (), {"summary": "s", "settings": ["a"]}),
    ("Base", ("s",), {}),
    ("Derived", (), {"scheme": "file", "options": ["x"], "summary": "doc"}),
    ("Derived", (), {"summary": "doc"}),
    ("Target", ("t", ("a", "b")), {}),
    ("Target", ("t", ("a",), {"k": 1}, ("x",)), {}),
    ("Mutable", ("m",), {}),
    ("Mutable", (), {"name": "m", "items": ["x"], "error": "bad"}),
    ("Entry", ("c", "add"), {}),
]


def build(kind: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        return CLASSES[kind][name](*args, **kwargs)
    except TypeError as error:
        del error  # the messages differ in wording; that both refuse is what counts
        return TypeError


@pytest.mark.parametrize(("name", "args", "kwargs"), CALLS)
def test_construction_repr_and_fields_agree(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    reference = build("dataclasses", name, args, kwargs)
    ours = build("records", name, args, kwargs)
    if reference is TypeError:
        assert ours is TypeError
        return
    assert repr(ours) == repr(reference)
    names = [f.name for f in dataclasses.fields(reference)]
    assert [f.name for f in records.fields(ours)] == names
    assert [getattr(ours, n) for n in names] == [getattr(reference, n) for n in names]
    assert type(ours).__match_args__ == type(reference).__match_args__


def instances(kind: str) -> list[Any]:
    made = [build(kind, name, args, kwargs) for name, args, kwargs in CALLS]
    return [thing for thing in made if thing is not TypeError]


def hashes(thing: Any) -> bool:
    try:
        hash(thing)
    except TypeError:
        return False
    return True


def test_equality_and_hashing_agree() -> None:
    ours, reference = instances("records"), instances("dataclasses")
    # Built twice from the same calls: equal where dataclasses say equal, hashable alike.
    again_ours, again_reference = instances("records"), instances("dataclasses")
    for a, b, c, d in zip(ours, again_ours, reference, again_reference, strict=True):
        assert (a == b) == (c == d)
        assert (a != b) == (c != d)
        hashable = type(c).__hash__ is not None
        assert (type(a).__hash__ is not None) == hashable
        if hashable and c == d and hashes(c):
            assert hash(a) == hash(b)
    for left, right, ref_left, ref_right in zip(
        ours, ours[1:], reference, reference[1:], strict=False
    ):
        assert (left == right) == (ref_left == ref_right)


def test_fields_excluded_from_comparison_or_hash_agree() -> None:
    for kind in MAKERS:
        target = CLASSES[kind]["Target"]
        a, b = target("t", ("a",), {}, ("x",)), target("t", ("a",), {}, ("y",))
        assert a != b  # tags are compared
        reference = CLASSES["dataclasses"]["Target"]
        assert (a == b) == (
            reference("t", ("a",), {}, ("x",)) == reference("t", ("a",), {}, ("y",))
        )
        ref = CLASSES[kind]["Reference"]
        loc = CLASSES[kind]["Locator"]("v", "p")
        assert ref(loc, "k", "one text") == ref(loc, "k", "other text")
        assert hash(ref(loc, "k", "one")) == hash(ref(loc, "k", "two"))


def test_ordering_agrees() -> None:
    rows = [("b", "x"), ("a", "z"), ("a", "y", (("o", "1"),)), ("a", "y")]
    for kind in MAKERS:
        locator = CLASSES[kind]["Locator"]
        made = sorted(locator(*row) for row in rows)
        assert [(x.scheme, x.path, x.options) for x in made] == sorted(
            (r[0], r[1], r[2] if len(r) > 2 else ()) for r in rows
        )
        assert locator("a", "b") < locator("a", "c") <= locator("a", "c")
        assert locator("b", "a") > locator("a", "z") >= locator("a", "z")
        with pytest.raises(TypeError):
            _ = locator("a", "b") < CLASSES[kind]["Entry"]("a", "b")


@pytest.mark.parametrize("kind", list(MAKERS))
def test_frozen_records_refuse_assignment_and_deletion(kind: str) -> None:
    for name in ("Locator", "Base", "Target", "Entry"):
        made = instances(kind)
        thing = next(x for x in made if type(x).__name__ == name)
        first = dataclasses.fields(thing)[0] if kind == "dataclasses" else records.fields(thing)[0]
        with pytest.raises(AttributeError):
            setattr(thing, first.name, "changed")
        with pytest.raises(AttributeError):
            delattr(thing, first.name)
        assert getattr(thing, first.name) != "changed"
    mutable = CLASSES[kind]["Mutable"]("m")
    mutable.name = "changed"
    assert mutable.name == "changed"


@pytest.mark.parametrize("kind", list(MAKERS))
def test_post_init_runs_along_the_inheritance_chain(kind: str) -> None:
    derived = CLASSES[kind]["Derived"](scheme="s", options=["a", "a"], settings=["x"])
    assert derived.options == frozenset({"a"})
    assert derived.settings == ("x",)
    with pytest.raises(TypeError):
        CLASSES[kind]["Derived"]("s")  # keyword-only
    target = CLASSES[kind]["Target"]("t", ("a", "b"))
    assert target.by_name == {"a": 0, "b": 1}


@pytest.mark.parametrize("kind", list(MAKERS))
def test_default_factories_make_a_new_value_per_instance(kind: str) -> None:
    mutable = CLASSES[kind]["Mutable"]
    first, second = mutable("a"), mutable("b")
    first.items.append("x")
    assert second.items == []


@pytest.mark.parametrize("kind", list(MAKERS))
def test_slots_copy_pickle_and_super(kind: str) -> None:
    entry = CLASSES[kind]["Entry"]("c", "add", "why")
    assert not hasattr(entry, "__dict__")
    assert copy.copy(entry) == entry
    assert copy.deepcopy(entry) == entry
    # Pickling needs the class importable by name: round-trip the state instead.
    state = entry.__getstate__()
    fresh = object.__new__(type(entry))
    fresh.__setstate__(state)
    assert fresh == entry


def test_pickle_round_trips_a_module_level_record() -> None:
    spec = records.record(frozen=True, slots=True)(
        type(
            "Pickled",
            (),
            {"__annotations__": {"a": "int"}, "__module__": __name__, "__qualname__": "Pickled"},
        )
    )
    globals()["Pickled"] = spec
    try:
        assert pickle.loads(pickle.dumps(spec(1))) == spec(1)  # noqa: S301 - our own bytes
    finally:
        del globals()["Pickled"]


@pytest.mark.parametrize("kind", list(MAKERS))
def test_class_level_defaults_and_class_vars(kind: str) -> None:
    base: Any = CLASSES[kind]["Base"]
    assert base.summary == ""
    assert base.calls == []
    assert "calls" not in [
        f.name for f in (dataclasses.fields if kind == "dataclasses" else records.fields)(base)
    ]


def test_replace_agrees_with_dataclasses() -> None:
    ours = CLASSES["records"]["Target"]("t", ("a",), {"k": 1})
    reference = CLASSES["dataclasses"]["Target"]("t", ("a",), {"k": 1})
    assert repr(records.replace(ours, name="u", credentials=("b", "c"))) == repr(
        dataclasses.replace(reference, name="u", credentials=("b", "c"))
    )
    assert records.replace(ours, name="u").by_name == {"a": 0}
    with pytest.raises(ValueError, match="by_name"):
        records.replace(ours, by_name={})


def test_a_non_default_field_after_a_default_is_refused_like_dataclasses() -> None:
    for make, _field in MAKERS.values():
        with pytest.raises(TypeError):

            @make
            class Bad:
                a: int = 1
                b: int


def test_a_mutable_default_is_refused_like_dataclasses() -> None:
    for make, _field in MAKERS.values():
        with pytest.raises(ValueError, match="default_factory"):

            @make
            class Shared:
                items: list[str] = []  # noqa: RUF012 - the mistake under test


def test_fields_refuses_what_is_not_a_record() -> None:
    with pytest.raises(TypeError):
        records.fields(object())
