"""Invalid settings values explained: the field's label, the value and what is allowed,
in Japanese for the UI and English for logs, derived from the schema's own bounds."""

from __future__ import annotations

import types
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from pipeline.core.errors import FieldProblem
from pipeline.settings.model import Settings, section_model

#: Messages of the validators' own error types: (English, Japanese) templates.
CUSTOM_MESSAGES = {
    "missing_placeholder": ("{path} must contain {missing}", "「{label}」({path}) には {missing} を含めてください。"),
    "invalid_base_url": (
        "{path}={value!r} is invalid: expected an http(s) URL ending in /v1",
        "「{label}」({path}) の値 {value!r} は無効です。http:// または https:// で始まり /v1 で終わる URL"
        "（例: http://127.0.0.1:8000/v1）を指定してください。",
    ),
    # no value in these: it may hold a secret (--api-key)
    "invalid_command_line": (
        "{path} does not split as a command line (an unclosed quote?)",
        "「{label}」({path}) をコマンドラインとして分割できません。引用符が閉じているか確認してください。",
    ),
}


def field_info(path: str) -> FieldInfo:
    """The pydantic field for a dotted path such as ``retrieval.top_k``."""
    model: type[BaseModel] = Settings
    parts = path.split(".")
    for part in parts[:-1]:
        section = section_model(model.model_fields[part].annotation) if part in model.model_fields else None
        if section is None:
            raise KeyError(path)
        model = section
    if parts[-1] not in model.model_fields:
        raise KeyError(path)
    return model.model_fields[parts[-1]]


def allowed_values(info: FieldInfo) -> tuple[str, str]:
    """What a field accepts, as (English, Japanese) text for messages and help."""
    annotation = info.annotation
    if get_origin(annotation) in (Union, types.UnionType):  # e.g. 'auto' or a bounded number
        parts = [allowed_values(FieldInfo.from_annotation(arg)) for arg in get_args(annotation)]
        return " or ".join(en for en, _ in parts), " または ".join(ja for _, ja in parts)
    if get_origin(annotation) is Literal:
        choices = ", ".join(repr(c) for c in get_args(annotation))
        return f"one of {choices}", f"{choices} のいずれか"
    bounds_en, bounds_ja = [], []
    for meta in info.metadata:
        for attr, en, ja in (
            ("ge", ">= {}", "{} 以上"),
            ("gt", "> {}", "{} 超"),
            ("le", "<= {}", "{} 以下"),
            ("lt", "< {}", "{} 未満"),
        ):
            if isinstance(meta, getattr(annotated_types, attr.capitalize())):
                bound = getattr(meta, attr)
                bounds_en.append(en.format(bound))
                bounds_ja.append(ja.format(bound))
    kind_en, kind_ja = {
        int: ("an integer", "整数"),
        float: ("a number", "数値"),
        bool: ("true or false", "true または false"),
    }.get(annotation, ("a string", "文字列"))
    if bounds_en:
        return f"{kind_en} {' and '.join(bounds_en)}", f"{' '.join(bounds_ja)}の{kind_ja}"
    return kind_en, kind_ja


def describe_errors(errors: list[dict[str, Any]]) -> list[FieldProblem]:
    """Pydantic's validation errors as one :class:`FieldProblem` per field (a field with
    several allowed forms, such as 'auto' or a number, fails once per form)."""
    problems: dict[str, FieldProblem] = {}
    for error in errors:
        problem = describe(error)
        problems.setdefault(problem.field, problem)
    return list(problems.values())


def _field_path(loc: tuple) -> str:
    """The settings path in an error location (without the union member's name)."""
    parts = [str(p) for p in loc]
    for end in range(len(parts), 0, -1):
        try:
            info = field_info(".".join(parts[:end]))
        except KeyError:
            continue
        if end == len(parts) or section_model(info.annotation) is None:
            return ".".join(parts[:end])
    return ".".join(parts)


def describe(error: dict[str, Any]) -> FieldProblem:
    """A pydantic validation error as a :class:`FieldProblem` in both languages."""
    path = _field_path(error["loc"])
    value = error.get("input")
    try:
        info = field_info(path)
    except KeyError:
        return FieldProblem(path, value, en=f"{path}: unknown setting", ja=f"{path}: 不明な設定項目です。")
    label = info.title or path
    if error["type"] in CUSTOM_MESSAGES:
        en, ja = CUSTOM_MESSAGES[error["type"]]
        context = {"path": path, "label": label, "value": value, **error.get("ctx", {})}
        return FieldProblem(path, value, en=en.format(**context), ja=ja.format(**context))
    allowed_en, allowed_ja = allowed_values(info)
    return FieldProblem(
        path,
        value,
        en=f"{path}={value!r} is invalid: expected {allowed_en}",
        ja=f"「{label}」({path}) の値 {value!r} は無効です。{allowed_ja} を指定してください。",
    )
