"""Finding what ``pipeloom run TARGET`` names and turning ``--arg key=value`` into arguments.

TARGET is ``package.module:function`` or ``path/to/file.py:function`` (the file's folder is
put first on ``sys.path``, as ``python file.py`` would, so it may import its neighbours).
Values arrive as text; a parameter's type hint (or its default's type) says what to make of
them, and a value that does not fit is a usage error naming the argument.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from pipeloom_cli._errors import UsageError

__all__ = ["Target", "accepts", "bind_arguments", "is_pipeline", "load_target", "parse_arg_pairs"]

log = logging.getLogger("pipeloom.cli")

_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})
_FORMS = "use module:function or path/to/file.py:function"


@dataclass(frozen=True)
class Target:
    """The object TARGET names, with the text to call it by in messages."""

    obj: Any
    """A function or a declarative pipeline object."""
    label: str
    """TARGET as the user typed it."""


def is_pipeline(obj: object) -> bool:
    """Tell a declarative pipeline object (it sets ``__pipeloom_pipeline__``) from a function."""
    return getattr(obj, "__pipeloom_pipeline__", False) is True


def _split(spec: str) -> tuple[str, str]:
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr:
        raise UsageError(f"TARGET {spec!r}: no function named; {_FORMS} (e.g. {spec}:main)")
    if not all(part.isidentifier() for part in attr.split(".")):
        raise UsageError(f"TARGET {spec!r}: {attr!r} is not a Python name; {_FORMS}")
    return where, attr


def _looks_like_file(where: str) -> bool:
    return where.endswith(".py") or "/" in where or os.sep in where


def _module_name_for(path: Path) -> str:
    stem = path.stem if path.stem.isidentifier() else "target"
    return f"pipeloom_target_{stem}"


def _import_file(path: Path, spec_text: str) -> types.ModuleType:
    if not path.is_file():
        where = "is a directory" if path.is_dir() else "does not exist"
        raise UsageError(
            f"TARGET {spec_text!r}: {path} {where}; check the path (relative to {Path.cwd()})"
        )
    name = _module_name_for(path)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"TARGET {spec_text!r}: {path} cannot be imported as Python; {_FORMS}")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _import_module(name: str, spec_text: str) -> types.ModuleType:
    # A console script does not put the working folder on sys.path; `python -m` does.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (name == missing or name.startswith(missing + ".")):
            raise UsageError(
                f"TARGET {spec_text!r}: no module named {missing!r}; run from the folder that "
                f"holds it, install it, or pass a file path ({_FORMS})"
            ) from exc
        raise


def _defined_names(module: types.ModuleType) -> list[str]:
    names = []
    for key, value in vars(module).items():
        if key.startswith("_"):
            continue
        is_own_function = inspect.isfunction(value) and value.__module__ == module.__name__
        if is_own_function or is_pipeline(value):
            names.append(key)
    return sorted(names)


def load_target(spec_text: str) -> Target:
    """Import TARGET and return the function or pipeline it names.

    Raises:
        UsageError: malformed TARGET, file or module missing, the import raised, or the
            module has no such callable.
    """
    where, attr = _split(spec_text)
    try:
        if _looks_like_file(where):
            module = _import_file(Path(where), spec_text)
        else:
            module = _import_module(where, spec_text)
    except UsageError:
        raise
    except Exception as exc:  # anything the user's module raises while importing
        raise UsageError(
            f"TARGET {spec_text!r}: importing {where} raised {_describe(exc)}; fix it "
            "(-vv shows the traceback)"
        ) from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            known = _defined_names(module)
            shown = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
            choices = f"; it defines: {shown}" if known else ""
            raise UsageError(f"TARGET {spec_text!r}: {where} has no {attr!r}{choices}")
        obj = getattr(obj, part)
    kind = "pipeline" if is_pipeline(obj) else type(obj).__name__
    log.debug("TARGET %s: %s %s from %s", spec_text, kind, attr, getattr(module, "__file__", where))
    if not (is_pipeline(obj) or callable(obj)):
        raise UsageError(
            f"TARGET {spec_text!r}: {attr} is a {type(obj).__name__}, not a function or pipeline"
        )
    return Target(obj, spec_text)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} ({exc.filename}, line {exc.lineno})"
    return f"{type(exc).__name__}: {exc}"


def parse_arg_pairs(pairs: Sequence[str], option: str = "--arg") -> dict[str, str]:
    """Split repeated ``--arg key=value`` (or ``--param``) into a dict of text values.

    Raises:
        UsageError: a pair without ``=``, a key that is not a Python name, or a repeated key.
    """
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep:
            raise UsageError(f"{option} {pair!r}: expected key=value, e.g. {option} n=4")
        if not key.isidentifier():
            raise UsageError(f"{option} {pair!r}: {key!r} is not a parameter name; use key=value")
        if key in out:
            raise UsageError(f"{option} {key}: given twice ({out[key]!r} and {value!r}); keep one")
        out[key] = value
    return out


def _type_hints(fn: Callable[..., Any]) -> Mapping[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception as exc:  # unresolvable string annotations: fall back to none
        log.debug("type hints of %r not resolvable (%s); passing text values", fn, exc)
        return {}


def _unwrap_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _coerce(key: str, value: str, hint: Any, label: str) -> Any:
    hint = _unwrap_optional(hint)
    try:
        if hint is bool:
            lowered = value.strip().lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError(value)
        if hint is int:
            return int(value)
        if hint is float:
            return float(value)
        if isinstance(hint, type) and issubclass(hint, PurePath):
            return hint(value)
    except ValueError:
        name = getattr(hint, "__name__", str(hint))
        example = {"bool": "true", "int": "4", "float": "0.5"}.get(name, "VALUE")
        raise UsageError(
            f"--arg {key}={value}: {value!r} is not a valid {name} (parameter {key}: {name} of "
            f"{label}); pass e.g. --arg {key}={example}"
        ) from None
    if hint not in (str, inspect.Parameter.empty, Any):
        log.debug("--arg %s: no conversion for %r; passing the text", key, hint)
    return value


def bind_arguments(
    fn: Callable[..., Any],
    raw: Mapping[str, str],
    label: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Turn text ``--arg`` values into keyword arguments ``fn`` accepts.

    Args:
        fn: the target function.
        raw: ``--arg`` values by name.
        label: TARGET as typed, for messages.
        extra: already-typed keyword arguments (``--db``, ``--workers``).

    Raises:
        UsageError: an unknown name, a value that does not fit its hint, or a missing
            required parameter.
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        log.debug("no signature for %r; passing --arg values as text", fn)
        return {**raw, **(extra or {})}
    params = signature.parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    hints = _type_hints(fn)
    kwargs: dict[str, Any] = dict(extra or {})
    for key, value in raw.items():
        param = params.get(key)
        if param is None or param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            if takes_any:
                kwargs[key] = value
                continue
            accepted = ", ".join(named) or "no arguments"
            raise UsageError(f"--arg {key}: {label} has no parameter {key!r}; it takes: {accepted}")
        hint = hints.get(key, param.annotation)
        if hint is inspect.Parameter.empty and param.default is not inspect.Parameter.empty:
            default = param.default
            hint = type(default) if isinstance(default, bool | int | float | PurePath) else hint
        kwargs[key] = _coerce(key, value, hint, label)
    missing = [
        n
        for n, p in params.items()
        if p.default is p.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.POSITIONAL_ONLY)
        and n not in kwargs
    ]
    if missing:
        needed = " ".join(f"--arg {n}=VALUE" for n in missing)
        raise UsageError(
            f"{label}: missing required argument(s) {', '.join(missing)}; pass {needed}"
        )
    return kwargs


def accepts(fn: Callable[..., Any], name: str) -> bool:
    """Tell whether ``fn`` can take ``name`` as a keyword argument."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    param = params.get(name)
    if param is not None:
        return param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)
    return any(p.kind is p.VAR_KEYWORD for p in params.values())
