"""Record encoders generated from the event models: the wire form, defined by the model.

A hot producer (the decider writes one ``DecisionMade`` per request) cannot afford a
pydantic model and ``model_dump`` per record, yet a dict written by hand beside the
model is a second definition of the record that drifts when a field is added.
:func:`record_encoder` derives the encoder from the model instead: one keyword-only
function whose parameters are the model's fields, which fills defaults exactly as the
model does (its ``default`` values and ``default_factory`` callables), writes the
``Literal`` type tag as a constant and encodes the fields in the model's order, so
its bytes equal :func:`schemas.codec.encode` of the same event. It is generated as
source once at import, the way ``dataclasses`` builds ``__init__``, because a generic
loop over the fields per call would cost more than the dict it builds.

Optional fields declared with ``exclude_if=is_absent`` (the unit, assignment and
exposure fields of a decision) are left out when ``None``, as the model leaves them
out: a per_request decision is written byte for byte as before they existed. They are
tested inline (``is not None``), one comparison each; any other ``exclude_if`` is
refused when the encoder is generated, so the two encodings cannot drift apart.

It does not validate: callers pass values this process derived from a validated
config (a field missing or unknown is still a ``TypeError``). ``tests/unit/
test_decider_hot_path.py`` pins the bytes to the model's own encoding and checks that
:func:`schemas.codec.decode` accepts them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Literal, get_args, get_origin

import orjson
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from schemas.events import DecisionMade, is_absent

RecordEncoder = Callable[..., bytes]


def record_encoder(model: type[BaseModel]) -> RecordEncoder:
    """A keyword-only encoder of ``model``'s JSON record (see the module docstring).

    Values may be anything ``orjson`` writes, including an ``orjson.Fragment`` holding
    pre-encoded JSON (the decider keeps each experiment's params encoded once).
    """
    missing = object()
    namespace: dict[str, Any] = {"_dumps": orjson.dumps, "_missing": missing}
    required: list[str] = []
    optional: list[str] = []
    fill: list[str] = []
    items: list[str] = []  # the dict literal: every field up to the first omittable one
    tail: list[str] = []  # statements adding the rest, in the model's order
    for name, info in model.model_fields.items():
        exclude_if = info.exclude_if
        if exclude_if is not None and exclude_if is not is_absent:
            raise TypeError(f"{model.__name__}.{name}: only exclude_if=is_absent is encodable")
        if get_origin(info.annotation) is Literal:
            (tag,) = get_args(info.annotation)
            value = repr(tag)
        else:
            value = name
            if info.default_factory is not None:
                namespace[f"_factory_{name}"] = info.default_factory
                optional.append(f"{name}=_missing")
                fill.append(f"    if {name} is _missing:\n        {name} = _factory_{name}()\n")
            elif info.default is not PydanticUndefined:
                namespace[f"_default_{name}"] = info.default
                optional.append(f"{name}=_default_{name}")
            else:
                required.append(name)
        if exclude_if is not None:
            tail.append(f"    if {value} is not None:\n        _r[{name!r}] = {value}\n")
        elif tail:
            tail.append(f"    _r[{name!r}] = {value}\n")
        else:
            items.append(f"{name!r}: {value}")
    literal = f"{{{', '.join(items)}}}"
    body = (
        f"    _r = {literal}\n" + "".join(tail) + "    return _dumps(_r)\n"
        if tail
        else f"    return _dumps({literal})\n"
    )
    source = (
        f"def encode_{model.__name__}(*, {', '.join(required + optional)}):\n"
        + "".join(fill)
        + body
    )
    exec(compile(source, f"<record encoder of {model.__name__}>", "exec"), namespace)  # noqa: S102
    encoder: RecordEncoder = namespace[f"encode_{model.__name__}"]
    encoder.__doc__ = f"The JSON record of a :class:`{model.__qualname__}` (see schemas.wire)."
    return encoder


#: The ``decision_made`` record the decider writes per request.
encode_decision_made: Final = record_encoder(DecisionMade)
