"""A compiled decoder for the hottest contract models: msgspec checks the same types and bounds as the pydantic
model, about three times faster, and whatever it does not accept outright goes to pydantic, which stays the judge.

The pydantic model is the contract; nothing here re-declares it. `FastDecoder(Model)` reads the model's fields
(types, bounds, defaults, extra-field policy) and builds msgspec Structs from them, refusing at build time any
field it cannot mirror exactly. msgspec is never laxer than pydantic's JSON mode (it coerces nothing: no "12" as a
number, no 1 as a bool, no NaN), so a message it accepts is one pydantic accepts too, with the same values —
tests/unit/test_fastdecode.py holds both to that on generated and hostile input. Anything msgspec refuses is
handed to `model_validate_json`, which either accepts it (a lax form pydantic allows) or raises the usual
ValidationError, so error messages stay the contract's own.
"""

from __future__ import annotations

import inspect
import re
import types
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar, Union, get_args, get_origin

import annotated_types as at
import msgspec
from pydantic import AfterValidator, BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from services.schemas.base import _aware_utc

M = TypeVar("M", bound=BaseModel)


class UnsupportedField(TypeError):
    """The model has a field the compiled decoder cannot mirror exactly (use model_validate_json for it)."""


# Timestamps travel as strings in the one plain form agents write (RFC 3339, at most microseconds, an offset) and
# are parsed by datetime.fromisoformat: msgspec's own datetime rounds a 7th fractional digit where pydantic
# truncates it. Any other spelling (or an impossible date) goes to pydantic. The samples of a batch share one
# timestamp: each distinct string is checked and parsed once, then served from a small cache (datetimes are
# immutable, so sharing one is safe).
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)").fullmatch
_PARSED: dict[str, datetime] = {}


def _utc(text: str) -> datetime:
    value = _PARSED.get(text)
    if value is None:
        if not _TIMESTAMP(text):
            raise ValueError("not the plain timestamp form")
        value = datetime.fromisoformat(text)  # ValueError (a 13th month, a leap second): pydantic decides
        if value.tzinfo is not UTC:
            value = value.astimezone(UTC)
        if len(_PARSED) >= 4096:
            _PARSED.clear()
        _PARSED[text] = value
    return value


_asdict = msgspec.structs.asdict
_new = object.__new__
_set = object.__setattr__


# After-validators of the contract that the decoder reproduces: the validator, and the parse-and-convert that
# stands for the datetime type and it together (an offset is required, as _aware_utc requires one).
_KNOWN_AFTER = {_aware_utc: _utc}


class _Plan:
    """How to turn one model's Struct into the model: its class, the fields to convert on the way."""

    __slots__ = ("model", "struct", "fields_set", "utc", "fixes", "after")

    def __init__(self, model: type[BaseModel]) -> None:
        self.model = model
        self.struct: type[msgspec.Struct] | None = None
        # Every field is set (msgspec fills defaults itself): one shared set, never mutated by pydantic for a
        # field already in it, saves building one per instance.
        self.fields_set = set(model.model_fields)
        self.utc: list[str] = []  # timestamp fields, converted inline (the common case: already UTC)
        self.fixes: list[tuple[str, Callable[[Any], Any]]] = []  # nested models, lists of them
        # Model-level after-validators that take only the instance (e.g. "samples belong to the batch's node").
        self.after: list[Callable[[Any], Any]] = []


class FastDecoder(Generic[M]):
    """`decode(data)` -> an instance of `model`, as `model.model_validate_json(data)` would return it."""

    def __init__(self, model: type[M]) -> None:
        self.model = model
        self._plans: dict[type[BaseModel], _Plan] = {}
        self._plan = self._compile(model)
        self._decoder = msgspec.json.Decoder(self._plan.struct)
        self._by_struct = {p.struct: p for p in self._plans.values()}
        self._exact = not any(p.utc or p.after for p in self._plans.values())
        self.fast = 0  # messages the compiled path took (tests and benchmarks read these)
        self.slow = 0

    @property
    def errors(self) -> tuple[type[Exception], ...]:
        """What `decode_struct` raises for input msgspec does not accept outright (pydantic must judge it)."""
        return (msgspec.ValidationError, msgspec.DecodeError)

    def decode_struct(self, data: bytes | str) -> msgspec.Struct:
        """The message as the compiled Struct, checked but not turned into models: for a reader that wants columns
        (thousands of placement candidates), not objects. Only for models whose values need no conversion
        (no timestamps, no model validators), where the Struct holds exactly what the model would."""
        if not self._exact:
            raise UnsupportedField(f"{self.model.__name__}: timestamps or model validators need the full decode")
        return self._decoder.decode(data)

    def to_model(self, struct: msgspec.Struct) -> BaseModel:
        """A Struct from `decode_struct` (or a nested one) as its pydantic model."""
        return self._build(self._by_struct[type(struct)], struct)

    def decode(self, data: bytes | str) -> M:
        try:
            obj = self._build(self._plan, self._decoder.decode(data))
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError, TypeError):
            self.slow += 1
            return self.model.model_validate_json(data)
        self.fast += 1
        return obj

    # -- building instances -------------------------------------------------------------------------------------

    def _build(self, plan: _Plan, struct: msgspec.Struct) -> Any:
        d = _asdict(struct)
        for name in plan.utc:
            v = d[name]
            if v is not None:
                d[name] = _utc(v)
        for name, fix in plan.fixes:
            v = d[name]
            if v is not None:
                d[name] = fix(v)
        obj = _new(plan.model)
        # What pydantic's own model_construct sets, without its per-field Python loop: the values are already valid.
        _set(obj, "__dict__", d)
        _set(obj, "__pydantic_fields_set__", plan.fields_set)
        _set(obj, "__pydantic_extra__", None)
        _set(obj, "__pydantic_private__", None)
        for check in plan.after:
            check(obj)  # raises ValueError -> pydantic decides, with its own message
        return obj

    # -- compiling ------------------------------------------------------------------------------------------------

    def _compile(self, model: type[BaseModel]) -> _Plan:
        plan = self._plans.get(model)
        if plan is not None:
            return plan
        plan = self._plans[model] = _Plan(model)
        cfg = model.model_config
        extra = cfg.get("extra") or "ignore"
        if extra not in ("ignore", "forbid"):
            raise UnsupportedField(f"{model.__name__}: extra={extra!r}")
        if model.__private_attributes__:
            raise UnsupportedField(f"{model.__name__}: private attributes")
        if cfg.get("alias_generator") or cfg.get("populate_by_name"):
            raise UnsupportedField(f"{model.__name__}: aliases")
        decs = model.__pydantic_decorators__
        if decs.field_validators or decs.root_validators or decs.validators:
            raise UnsupportedField(f"{model.__name__}: field validators")
        for name, dec in decs.model_validators.items():
            if dec.info.mode != "after" or len(inspect.signature(dec.func).parameters) != 1:
                raise UnsupportedField(f"{model.__name__}.{name}: only after-validators taking the instance")
            plan.after.append(dec.func)
        fields = []
        for name, fi in model.model_fields.items():
            if fi.alias is not None or fi.validation_alias is not None:
                raise UnsupportedField(f"{model.__name__}.{name}: alias")
            tp, fix = self._field_type(f"{model.__name__}.{name}", fi.annotation, list(fi.metadata))
            if fix is _utc:
                plan.utc.append(name)
            elif fix is not None:
                plan.fixes.append((name, fix))
            if fi.default_factory is not None:
                default = msgspec.field(default_factory=fi.default_factory)
            elif fi.default is PydanticUndefined:
                default = msgspec.NODEFAULT
            else:
                default = fi.default
                if isinstance(default, (list, dict, set)):
                    raise UnsupportedField(f"{model.__name__}.{name}: mutable default")
            fields.append((name, tp, default))
        plan.struct = msgspec.defstruct(f"_{model.__name__}Wire", fields, forbid_unknown_fields=extra == "forbid",
                                        kw_only=True, gc=False)
        return plan

    def _field_type(self, where: str, tp: Any, metadata: list[Any]) -> tuple[Any, Callable[[Any], Any] | None]:
        """The msgspec type for a pydantic annotation with its constraints, and a conversion applied afterwards."""
        origin = get_origin(tp)
        if origin is Annotated:
            base, *extra = get_args(tp)
            return self._field_type(where, base, [*extra, *metadata])
        if origin in (Union, types.UnionType):
            args = get_args(tp)
            if len(args) != 2 or type(None) not in args:
                raise UnsupportedField(f"{where}: union {tp!r}")
            inner, fix = self._field_type(where, next(a for a in args if a is not type(None)), metadata)
            return inner | None, fix
        meta, fix = _constraints(where, metadata)
        if origin is list:
            (item,) = get_args(tp)
            itp, ifix = self._field_type(f"{where}[]", item, [])
            out: Any = list[itp]
            if ifix is not None:
                fix = (lambda f: lambda vs: [f(v) for v in vs])(ifix)
        elif origin is Literal:
            if not all(isinstance(a, int | str) and not isinstance(a, bool) for a in get_args(tp)):
                raise UnsupportedField(f"{where}: literal {tp!r}")
            out = tp
        elif tp in (int, float, str, bool):
            out = tp
        elif tp is datetime:
            if fix is not _utc or meta:
                raise UnsupportedField(f"{where}: a datetime without the UTC validator")
            out = str
        elif isinstance(tp, type) and issubclass(tp, BaseModel):
            if meta:
                raise UnsupportedField(f"{where}: constraints on a model")
            plan = self._compile(tp)
            out = plan.struct
            fix = (lambda p: lambda v: self._build(p, v))(plan)
        else:
            raise UnsupportedField(f"{where}: type {tp!r}")
        if meta:
            out = Annotated[out, msgspec.Meta(**meta)]
        return out, fix


def _constraints(where: str, metadata: list[Any]) -> tuple[dict[str, Any], Callable[[Any], Any] | None]:
    """msgspec.Meta arguments for a field's pydantic metadata, and the known after-validator's conversion."""
    meta: dict[str, Any] = {}
    fix = None
    pending = list(metadata)
    while pending:
        m = pending.pop()
        if isinstance(m, FieldInfo):  # Annotated[float, Field(ge=..)] nested in a union: its constraints
            if m.alias or m.validation_alias:
                raise UnsupportedField(f"{where}: alias")
            pending.extend(m.metadata)
        elif isinstance(m, AfterValidator) and m.func in _KNOWN_AFTER:
            fix = _KNOWN_AFTER[m.func]
        elif isinstance(m, at.Ge | at.Gt | at.Le | at.Lt):
            # Several bounds of one kind (a shared Annotated type narrowed by a Field): keep the strictest, so
            # msgspec never accepts what pydantic refuses.
            key = type(m).__name__.lower()
            val = getattr(m, key)
            if key in meta:
                val = max(meta[key], val) if key in ("ge", "gt") else min(meta[key], val)
            meta[key] = val
        elif isinstance(m, at.MinLen):
            meta["min_length"] = max(meta.get("min_length", 0), m.min_length)
        elif isinstance(m, at.MaxLen):
            meta["max_length"] = min(meta.get("max_length", m.max_length), m.max_length)
        else:  # patterns (another regex dialect), strict flags, multiple_of...: not mirrored
            raise UnsupportedField(f"{where}: constraint {m!r}")
    return meta, fix
