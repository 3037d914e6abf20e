"""Record classes for the core, built without compiling code at import.

The core declares ~35 small records (plugin records, contexts, the config, references, plan
entries). ``dataclasses`` builds each by compiling four to ten methods from source text with
``exec``, ~0.9 ms a class on a 2-core machine, and the 22 records on every command's path are
made before click parses the arguments: 13 ms of a 90 ms ``credbridge get``. :func:`record`
builds the same classes from methods shared by every record, ~0.13 ms a class
(bench/bench_records.py, docs/performance.md). Instances cost ~1 µs more to make.

It does what the core's records use, with the meaning ``dataclasses`` gives it: fields from
the class's annotations (base classes' first, a redefined field keeps its place), defaults and
``field(default_factory=...)``, keyword-only fields, ``init=False``/``repr=False``/
``compare=False``/``hash=False`` fields, ``__post_init__``, ``frozen``, ``eq``, ``order``,
``slots``, ``__match_args__``, ``copy``/``pickle`` of frozen slotted records, :func:`fields`
and :func:`replace`. ``tests/core/test_records.py`` checks each of these against
``dataclasses`` on the same declarations. Not supported (the core uses none of them):
``InitVar``, ``KW_ONLY``, zero-argument ``super()`` in a slotted record's methods (it fails
with ``dataclasses`` too), ``unsafe_hash``, ``match_args=False``, ``weakref_slot``, string
annotations of ``ClassVar`` through an alias. Type checkers read :func:`record` as a
dataclass maker (PEP 681 ``dataclass_transform``).
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, dataclass_transform, overload

__all__ = ["Field", "FrozenRecordError", "field", "fields", "record", "replace"]

T = TypeVar("T")


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
"""No default (a required field)."""


class FrozenRecordError(AttributeError):
    """Assigning to or deleting a field of a frozen record."""


class Field:
    """One field of a record, as :func:`fields` returns it."""

    __slots__ = ("compare", "default", "default_factory", "hash", "init", "kw_only", "name", "repr")

    def __init__(
        self,
        default: Any = MISSING,
        default_factory: Callable[[], Any] | None = None,
        init: bool = True,
        repr: bool = True,
        compare: bool = True,
        hash: bool | None = None,
        kw_only: bool | None = None,
    ) -> None:
        if default is not MISSING and default_factory is not None:
            raise ValueError("a field cannot have both a default and a default_factory")
        self.name = ""
        self.default = default
        self.default_factory = default_factory
        self.init = init
        self.repr = repr
        self.compare = compare
        self.hash = hash
        self.kw_only = kw_only

    def __repr__(self) -> str:
        return f"Field(name={self.name!r}, default={self.default!r}, init={self.init})"


def field(
    *,
    default: Any = MISSING,
    default_factory: Callable[[], Any] | None = None,
    init: bool = True,
    repr: bool = True,
    compare: bool = True,
    hash: bool | None = None,
    kw_only: bool | None = None,
) -> Any:
    """Declare a field with options, like :func:`dataclasses.field`."""
    return Field(default, default_factory, init, repr, compare, hash, kw_only)


class _Plan:
    """What a record class's shared methods need, worked out once when the class is made."""

    __slots__ = (
        "by_position",
        "compared",
        "defaults",
        "factories",
        "fields",
        "hashed",
        "init_names",
        "later_fields",
        "positional",
        "positional_defaults",
        "post_init",
        "required",
        "shown",
        "simple",
    )

    def __init__(self, all_fields: tuple[Field, ...], post_init: bool) -> None:
        self.fields = all_fields
        self.post_init = post_init
        init = [f for f in all_fields if f.init]
        self.positional = tuple(f.name for f in init if not f.kw_only)
        self.init_names = frozenset(f.name for f in init)
        # A factory's field is in the defaults too (its value replaced per instance), so that
        # one comparison of key sets finds a missing or unexpected argument.
        self.defaults = {
            f.name: f.default if f.default_factory is None else MISSING
            for f in init
            if f.default is not MISSING or f.default_factory is not None
        }
        self.factories = tuple(
            (f.name, f.default_factory) for f in init if f.default_factory is not None
        )
        self.later_fields = tuple(
            (f.name, f.default, f.default_factory)
            for f in all_fields
            if not f.init and (f.default is not MISSING or f.default_factory is not None)
        )
        self.shown = tuple(f.name for f in all_fields if f.repr)
        self.simple = not (self.factories or self.later_fields or post_init)
        # Records whose every field is positional, with plain defaults and nothing to run
        # after: a call giving the first fields in order needs no argument matching.
        self.by_position = self.simple and len(self.positional) == len(init)
        self.required = sum(name not in self.defaults for name in self.positional)
        self.positional_defaults = tuple(
            (name, self.defaults.get(name)) for name in self.positional
        )
        self.compared = _getter(tuple(f.name for f in all_fields if f.compare))
        self.hashed = _getter(
            tuple(f.name for f in all_fields if (f.compare if f.hash is None else f.hash))
        )


def _no_values(record: object) -> tuple[()]:
    return ()


def _getter(names: tuple[str, ...]) -> Callable[[object], Any]:
    """The values of ``names`` of a record as a tuple, read in C (a hot path: requests key
    dicts, and each kept credential is compared)."""
    if not names:
        return _no_values
    if len(names) == 1:
        one = operator.attrgetter(names[0])
        return lambda record: (one(record),)
    return operator.attrgetter(*names)


def _record_init(self: Any, *args: Any, **kwargs: Any) -> None:
    plan: _Plan = type(self).__record_plan__
    if not kwargs and plan.by_position and plan.required <= len(args) <= len(plan.positional):
        # The everyday call (PlanEntry(name, Change.KEEP)), made per credential several times
        # a run: the fields in order, the rest by their defaults.
        assign = object.__setattr__
        for name, value in zip(plan.positional, args, strict=False):
            assign(self, name, value)
        for name, default in plan.positional_defaults[len(args) :]:
            assign(self, name, default)
        return
    if args:
        if len(args) > len(plan.positional) or (
            kwargs and not kwargs.keys().isdisjoint(plan.positional[: len(args)])
        ):
            _refuse_positional(type(self), plan, args, kwargs)
        kwargs.update(zip(plan.positional, args, strict=False))
    values = plan.defaults | kwargs
    if values.keys() != plan.init_names:
        _refuse_arguments(type(self), plan, kwargs)
    assign = object.__setattr__
    if plan.simple:
        for name, value in values.items():
            assign(self, name, value)
        return
    for name, make in plan.factories:
        if name not in kwargs:
            values[name] = make()
    for name, value in values.items():
        assign(self, name, value)
    for name, default, factory in plan.later_fields:
        assign(self, name, default if factory is None else factory())
    if plan.post_init:
        self.__post_init__()


def _refuse_positional(
    cls: type, plan: _Plan, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    if len(args) > len(plan.positional):
        raise TypeError(
            f"{cls.__qualname__}() takes {len(plan.positional)} positional arguments "
            f"but {len(args)} were given"
        )
    twice = next(name for name in plan.positional[: len(args)] if name in kwargs)
    raise TypeError(f"{cls.__qualname__}() got multiple values for argument {twice!r}")


def _refuse_arguments(cls: type, plan: _Plan, kwargs: dict[str, Any]) -> None:
    unexpected = [name for name in kwargs if name not in plan.init_names]
    if unexpected:
        names = ", ".join(repr(name) for name in unexpected)
        raise TypeError(f"{cls.__qualname__}() got an unexpected keyword argument {names}")
    missing = [name for name in plan.init_names if name not in plan.defaults and name not in kwargs]
    names = ", ".join(repr(name) for name in missing)
    raise TypeError(f"{cls.__qualname__}() missing required argument {names}")


def _record_repr(self: Any) -> str:
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__record_plan__.shown)
    return f"{type(self).__qualname__}({shown})"


def _comparison(compare: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """A method comparing two records of the same class field by field (compared fields)."""

    def method(self: Any, other: Any) -> Any:
        if other.__class__ is not self.__class__:
            return NotImplemented
        values = self.__record_plan__.compared
        return compare(values(self), values(other))

    return method


_EQ = _comparison(operator.eq)
_ORDER = {
    "__lt__": _comparison(operator.lt),
    "__le__": _comparison(operator.le),
    "__gt__": _comparison(operator.gt),
    "__ge__": _comparison(operator.ge),
}


def _record_hash(self: Any) -> int:
    return hash(self.__record_plan__.hashed(self))


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    raise FrozenRecordError(f"cannot assign to field {name!r} of a frozen {type(self).__name__}")


def _frozen_delattr(self: Any, name: str) -> None:
    raise FrozenRecordError(f"cannot delete field {name!r} of a frozen {type(self).__name__}")


def _slots_getstate(self: Any) -> tuple[Any, ...]:
    return tuple(getattr(self, f.name) for f in self.__record_plan__.fields)


def _slots_setstate(self: Any, state: tuple[Any, ...]) -> None:
    for f, value in zip(self.__record_plan__.fields, state, strict=True):
        object.__setattr__(self, f.name, value)


def _is_class_var(annotation: object) -> bool:
    if isinstance(annotation, str):
        return annotation.startswith(("ClassVar", "typing.ClassVar"))
    return annotation is ClassVar or getattr(annotation, "__origin__", None) is ClassVar


def _collect(cls: type, kw_only: bool) -> tuple[Field, ...]:
    collected: dict[str, Field] = {}
    for base in reversed(cls.__mro__[1:]):
        plan = base.__dict__.get("__record_plan__")
        if plan is not None:
            collected.update((f.name, f) for f in plan.fields)
    for name, annotation in inspect.get_annotations(cls).items():
        if _is_class_var(annotation):
            continue
        declared = cls.__dict__.get(name, MISSING)
        spec = declared if isinstance(declared, Field) else Field(default=declared)
        spec.name = name
        if isinstance(spec.default, list | dict | set):
            # Shared by every instance: dataclasses refuse it for the same reason.
            raise ValueError(  # noqa: TRY004 - the exception dataclasses raise here
                f"{cls.__qualname__}.{name}: mutable default, use field(default_factory=...)"
            )
        if spec.kw_only is None:
            spec.kw_only = kw_only
        collected[name] = spec
        if isinstance(declared, Field):
            if spec.default is MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, spec.default)
    all_fields = tuple(collected.values())
    seen_default = False
    for spec in all_fields:
        if not spec.init or spec.kw_only:
            continue
        if spec.default is not MISSING or spec.default_factory is not None:
            seen_default = True
        elif seen_default:
            raise TypeError(
                f"{cls.__qualname__}: non-default field {spec.name!r} follows a default"
            )
    return all_fields


def _slotted(cls: type, all_fields: tuple[Field, ...]) -> type:
    namespace = dict(cls.__dict__)
    inherited = {name for base in cls.__mro__[1:] for name in base.__dict__.get("__slots__", ())}
    own = tuple(f.name for f in all_fields if f.name not in inherited)
    for name in own:
        namespace.pop(name, None)
    namespace.pop("__dict__", None)
    namespace.pop("__weakref__", None)
    namespace["__slots__"] = own
    slotted = type(cls)(cls.__name__, cls.__bases__, namespace)
    slotted.__qualname__ = cls.__qualname__
    return slotted


def _build(cls: type, frozen: bool, eq: bool, order: bool, kw_only: bool, slots: bool) -> type:
    if order and not eq:
        raise ValueError("order=True needs eq=True")
    all_fields = _collect(cls, kw_only)
    own = cls.__dict__
    explicit_hash = "__hash__" in own and not (own["__hash__"] is None and "__eq__" in own)
    methods: dict[str, Any] = {"__init__": _record_init, "__repr__": _record_repr}
    if eq:
        methods["__eq__"] = _EQ
    if order:
        methods.update(_ORDER)
    if frozen:
        methods["__setattr__"] = _frozen_setattr
        methods["__delattr__"] = _frozen_delattr
    if frozen and ("__setattr__" in own or "__delattr__" in own):
        raise TypeError(
            f"{cls.__qualname__}: a frozen record cannot define __setattr__/__delattr__"
        )
    for name, method in methods.items():
        if name not in own:
            setattr(cls, name, method)
    if eq and not explicit_hash:
        # dataclasses' rule: equal frozen records hash alike; mutable ones are unhashable.
        setattr(cls, "__hash__", _record_hash if frozen else None)  # noqa: B010
    setattr(cls, "__match_args__", tuple(f.name for f in all_fields if f.init and not f.kw_only))  # noqa: B010
    if slots:
        cls = _slotted(cls, all_fields)
        if frozen:
            # Without these, copy and pickle restore the slots through the refusing __setattr__.
            setattr(cls, "__getstate__", _slots_getstate)  # noqa: B010
            setattr(cls, "__setstate__", _slots_setstate)  # noqa: B010
    setattr(cls, "__record_plan__", _Plan(all_fields, hasattr(cls, "__post_init__")))  # noqa: B010
    return cls


@overload
def record(cls: type[T], /) -> type[T]: ...


@overload
def record(
    *,
    frozen: bool = False,
    eq: bool = True,
    order: bool = False,
    kw_only: bool = False,
    slots: bool = False,
) -> Callable[[type[T]], type[T]]: ...


@dataclass_transform(field_specifiers=(field, Field))
def record(
    cls: type[T] | None = None,
    /,
    *,
    frozen: bool = False,
    eq: bool = True,
    order: bool = False,
    kw_only: bool = False,
    slots: bool = False,
) -> type[T] | Callable[[type[T]], type[T]]:
    """Make ``cls`` a record: ``@record(frozen=True)`` means ``@dataclass(frozen=True)``."""

    def make(target: type[T]) -> type[T]:
        return _build(target, frozen, eq, order, kw_only, slots)

    return make if cls is None else make(cls)


def _plan_of(thing: object) -> _Plan:
    plan = getattr(thing, "__record_plan__", None)
    if not isinstance(plan, _Plan):
        raise TypeError(f"{thing!r} is not a record or a record class")
    return plan


def fields(thing: object) -> tuple[Field, ...]:
    """The fields of a record or record class, in order (``init=False`` ones included)."""
    return _plan_of(thing).fields


def replace(instance: T, /, **changes: Any) -> T:
    """A copy of ``instance`` with ``changes``, made through its ``__init__`` (and
    ``__post_init__``), like :func:`dataclasses.replace`."""
    for spec in _plan_of(instance).fields:
        if not spec.init:
            if spec.name in changes:
                raise ValueError(
                    f"field {spec.name!r} is not set by __init__: it cannot be replaced"
                )
            continue
        changes.setdefault(spec.name, getattr(instance, spec.name))
    return type(instance)(**changes)
