"""Settings as widgets: each field labelled, bounded and explained from the settings
schema, its error from the last submission shown beside it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import annotated_types
import streamlit as st

from pipeline.core.errors import SettingsError
from pipeline.settings.messages import field_info
from pipeline.settings.model import Settings
from pipeline.settings.sources import env_overridden, with_values

WIDGET_PREFIX = "setting:"
ERRORS = "settings_errors"


def field(path: str, current: Settings, widget, **options) -> Any:
    """One setting's widget. Its value lives in ``st.session_state`` under
    ``setting:<path>`` until the form is submitted or :func:`forget_widgets` runs."""
    info = field_info(path)
    for meta in info.metadata:
        if isinstance(meta, annotated_types.Ge):
            options.setdefault("min_value", meta.ge)
        elif isinstance(meta, annotated_types.Le):
            options.setdefault("max_value", meta.le)
    if widget not in (st.number_input, st.slider):
        options.pop("min_value", None)
        options.pop("max_value", None)
    help_text = info.description or None
    if path in env_overridden():
        help_text = f"{help_text or ''} 環境変数が設定されているため、保存してもそちらが優先されます。".strip()
    key = WIDGET_PREFIX + path
    if key not in st.session_state:
        st.session_state[key] = current.value(path)
    result = widget(info.title or path, key=key, help=help_text, **options)
    error = st.session_state.get(ERRORS, {}).get(path)
    if error:
        st.error(error)
    return result


def labelled_choice(path: str, current: Settings, labels: Mapping[str, str], **options) -> Any:
    """A drop-down of ``labels``' keys, each shown by its Japanese label."""
    return field(path, current, st.selectbox, options=list(labels), format_func=labels.__getitem__, **options)


def submitted(paths: Iterable[str]) -> dict[str, Any]:
    """The widgets' values for these settings."""
    return {path: st.session_state[WIDGET_PREFIX + path] for path in paths}


def apply(base: Settings, values: dict[str, Any]) -> Settings | None:
    """Validated new settings, or None after keeping each field's error for the next run."""
    try:
        settings = with_values(base, values)
    except SettingsError as exc:
        st.session_state[ERRORS] = {problem.field: problem.ja for problem in exc.problems}
        return None
    st.session_state.pop(ERRORS, None)
    return settings


def forget_widgets(paths: Iterable[str]) -> None:
    for path in paths:
        st.session_state.pop(WIDGET_PREFIX + path, None)
