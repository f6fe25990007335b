"""aiogram's Telegram types and methods (about 600 pydantic models), each built when first used.

Importing `aiogram.types` builds the validator and serializer of every type it has, in a loop that
rebuilds each with the namespace its forward references resolve in. That costs each process about
2.4 s of CPU and 90 MB, while a bot meets a few dozen of the models. `defer_aiogram_builds` (run when
the `aisha` package is imported, before anything of ours imports aiogram) turns that loop into
remembering the namespace; pydantic then builds each model the first time it is used, as it does
for any model with `defer_build` (aiogram's own setting), resolving names in that namespace.
`tests/unit/test_aiogram_models.py` builds every one of them this way.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

_build = BaseModel.model_rebuild.__func__  # type: ignore[attr-defined]
_aiogram_names: dict[str, Any] = {}  # the namespace aiogram.types rebuilds its models in


def _model_rebuild(cls: type[BaseModel], /, **options: Any) -> bool | None:
    if not cls.__module__.startswith("aiogram."):
        return _build(cls, **options)  # type: ignore[no-any-return]
    names = options.get("_types_namespace")
    if names is not None and not options.get("force"):  # aiogram.types' loop, at import
        _aiogram_names.update(names)
        return None
    if names is None and _aiogram_names:  # a first use: the names aiogram would have given
        options["_types_namespace"] = _aiogram_names
    return _build(cls, **options)  # type: ignore[no-any-return]


def defer_aiogram_builds() -> None:
    """Idempotent; has no effect on an aiogram imported before it (that one is built already)."""
    BaseModel.model_rebuild = classmethod(_model_rebuild)  # type: ignore[method-assign,assignment]
