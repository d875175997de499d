"""Where settings values come from, and where they are saved.

Values are layered, later wins: field defaults < the profile's preset (``demo`` or
``jawiki``) < the TOML settings file < the secrets file (``.streamlit/secrets.toml``:
``[llm] api_key``, ``base_url``, ``[api] token``, ``admin_token``, ``[db] url``,
``[admin] password`` and ``users`` only) < ``RAG_*`` environment variables < explicit
overrides (CLI flags). Variables follow one rule: ``RAG_<FIELD>`` for top-level fields
and ``RAG_<SECTION>_<FIELD>`` for the others, e.g. ``RAG_PROFILE``,
``RAG_RETRIEVAL_TOP_K``, ``RAG_LLM_BASE_URL``. ``RAG_SETTINGS_FILE`` names the TOML file.

The layering is pydantic-settings': each layer is a settings source and
:class:`~pipeline.settings.model.Settings` (a ``BaseSettings``) merges them. The sources
differ from the stock ones only where the product needs it, each saying why; they hook
into ``_build_sources``, ``_load_env_vars`` and ``_read_file``, which pydantic-settings
documents for this but marks private, so tests/test_config.py covers each. Saving
writes the file layer alone (:func:`save_file_values`).
"""

from __future__ import annotations

import json
import logging
import os
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import (
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    TomlConfigSettingsSource,
)

from pipeline.core.errors import FieldProblem, SettingsError
from pipeline.settings.messages import describe_errors
from pipeline.settings.model import SESSION_FIELDS, IndexSettings, Settings, is_session_field, section_model

logger = logging.getLogger(__name__)
SETTINGS_FILE_ENV = "RAG_SETTINGS_FILE"
SECRETS_FILE_ENV = "RAG_SECRETS_FILE"
#: The product's variables that name files, not settings.
FILE_VARIABLES = (SETTINGS_FILE_ENV, SECRETS_FILE_ENV)
DEFAULT_SECRETS_FILE = Path(".streamlit/secrets.toml")
DEFAULT_SETTINGS_FILE = Path("~/.config/jawiki-rag/settings.toml")
#: What may come from the secrets file (Streamlit's, git-ignored): credentials only.
SECRET_FIELDS = {
    "llm": ("api_key", "base_url"),
    "api": ("token", "admin_token"),
    "db": ("url",),
    "admin": ("password", "users"),
}
#: Never written to the settings file.
SECRET_PATHS = (("llm", "api_key"), ("api", "token"), ("api", "admin_token"), ("db", "url"), ("admin", "password"))

#: The record ``python -m pipeline.build`` writes beside a corpus it built.
MANIFEST_NAME = "manifest.json"
#: What each profile changes from the field defaults (the jawiki profile is the defaults;
#: the custom profile's comes from its build's manifest, :func:`built_corpus_preset`).
PROFILE_PRESETS: dict[str, dict[str, Any]] = {
    "jawiki": {},
    "demo": {
        "corpus": {"repo": "bundled:jsquad-valid-v1.3", "config": "default"},
        "index": {"repo": "", "file": ""},
    },
}


def _setting_variables() -> frozenset[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        section = section_model(field.annotation)
        subs = section.model_fields if section else [""]
        names.update(f"RAG_{name}_{sub}".rstrip("_").upper() for sub in subs)
    return frozenset(names)


#: Every variable the naming rule gives a setting, exactly as spelled (upper case).
SETTING_VARIABLES = _setting_variables()
_unknown_seen: set[str] = set()


class EnvironSource(EnvSettingsSource):
    """``RAG_*`` variables of the given mapping rather than always ``os.environ`` (a
    build's manifest records the variables it was built with, and the same rule reads
    them), and only those that name a setting, spelled as the rule spells them. Another
    ``RAG_`` variable (a typo such as ``RAG_LLM_BASEURL``, a lower-case spelling, or a
    whole section such as ``RAG_LLM``, which pydantic-settings would parse as JSON) is
    ignored with a warning, once per process, rather than refusing to start."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(Settings, case_sensitive=False)  # names are checked exactly here

    def _load_env_vars(self) -> Mapping[str, str | None]:
        kept = {}
        for name, value in self._environ.items():
            if name in SETTING_VARIABLES:
                kept[name.lower()] = value
            elif name.upper().startswith("RAG_") and name not in FILE_VARIABLES and name not in _unknown_seen:
                _unknown_seen.add(name)
                logger.warning("%s names no setting; ignored", name)
        return kept


class TomlFileSource(TomlConfigSettingsSource):
    """A TOML file read the product's way: an unreadable or invalid file, or a folder
    where it should be (a container's bind mount leaves one for a missing file), is a
    :class:`SettingsError` that names it in Japanese and English, never a traceback and
    never silently skipped. A device such as ``os.devnull`` reads as no file: that is how
    a caller asks for defaults."""

    def __init__(self, path: Path) -> None:
        if path.is_dir():
            raise _file_problem(
                path,
                f"settings file {path} is a folder",
                f"設定ファイル {path} がフォルダーになっています。ファイルを置いてください。",
            )
        super().__init__(Settings, toml_file=path)

    def _read_file(self, file_path: Path) -> dict[str, Any]:
        return self.kept(read_settings_file(Path(file_path)))

    def kept(self, values: dict[str, Any]) -> dict[str, Any]:
        return values


class SettingsFileSource(TomlFileSource):
    """The settings file without secrets, which belong in the secrets file or the
    environment: one found there is ignored with a warning."""

    def kept(self, values: dict[str, Any]) -> dict[str, Any]:
        return without_secrets(values)


class SecretsFileSource(TomlFileSource):
    """Streamlit's secrets file, of which only the credentials are the product's
    (:data:`SECRET_FIELDS`); anything else there belongs to someone else."""

    def kept(self, values: dict[str, Any]) -> dict[str, Any]:
        kept: dict[str, Any] = {}
        for section, names in SECRET_FIELDS.items():
            table = values.get(section)
            if isinstance(table, dict) and (picked := {name: table[name] for name in names if name in table}):
                kept[section] = picked
        return kept


class ProfilePresetSource(PydanticBaseSettingsSource):
    """The chosen profile's preset, under every other layer. Which profile is chosen is
    known only once the layers above are merged, so this source reads their merged state
    (``current_state``) instead of a place of its own."""

    def __init__(self) -> None:
        super().__init__(Settings)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        profile = self.current_state.get("profile", Settings.model_fields["profile"].default)
        if profile == "custom":
            return built_corpus_preset(str((self.current_state.get("corpus") or {}).get("build", "")))
        return PROFILE_PRESETS.get(profile, {}) if isinstance(profile, str) else {}


def load_settings(
    path: Path | str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Build the settings from the TOML file, the environment and explicit overrides.

    ``path`` defaults to ``$RAG_SETTINGS_FILE`` or ``~/.config/jawiki-rag/settings.toml``;
    a missing file is not an error. ``overrides`` (nested dicts) win over everything.
    """
    environ = os.environ if environ is None else environ
    return _merged(_layers(SettingsFileSource(settings_file_path(path, environ)), environ, overrides or {}))


def _layers(
    file_layer: PydanticBaseSettingsSource, environ: Mapping[str, str], overrides: dict[str, Any]
) -> tuple[PydanticBaseSettingsSource, ...]:
    """Every layer above the preset, highest first, with ``file_layer`` for the settings file."""
    secrets = Path(environ.get(SECRETS_FILE_ENV) or DEFAULT_SECRETS_FILE).expanduser()
    return (InitSettingsSource(Settings, overrides), EnvironSource(environ), SecretsFileSource(secrets), file_layer)


def _merged(layers: tuple[PydanticBaseSettingsSource, ...]) -> Settings:
    """The layers merged over the profile's preset and validated; an invalid value is a
    :class:`SettingsError` with the field's message in Japanese and English."""
    try:
        return Settings(_build_sources=((*layers, ProfilePresetSource()), {}))
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc.errors())) from None


def settings_file_path(path: Path | str | None = None, environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    chosen = path or environ.get(SETTINGS_FILE_ENV) or DEFAULT_SETTINGS_FILE
    return Path(chosen).expanduser()


def read_settings_file(path: Path) -> dict[str, Any]:
    """The raw values of a TOML settings file; {} when it does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise _file_problem(
            path, f"cannot read settings file {path}: {exc}", f"設定ファイル {path} を読めません（{exc}）。"
        ) from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _file_problem(
            path,
            f"settings file {path} is not valid TOML: {exc}",
            f"設定ファイル {path} は TOML として正しくありません（{exc}）。",
        ) from exc


def _file_problem(path: Path, en: str, ja: str) -> SettingsError:
    return SettingsError([FieldProblem("settings_file", str(path), en=en, ja=ja)])


def without_secrets(file_values: dict[str, Any]) -> dict[str, Any]:
    """A settings file's values less any secret, each dropped with a warning."""
    kept = {key: dict(value) if isinstance(value, dict) else value for key, value in file_values.items()}
    for section, name in SECRET_PATHS:
        if isinstance(kept.get(section), dict) and kept[section].pop(name, None) is not None:
            logger.warning(
                "%s.%s in the settings file is ignored: secrets come from %s or RAG_* variables",
                section,
                name,
                DEFAULT_SECRETS_FILE,
            )
    return kept


def env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """Nested raw values from ``RAG_*`` variables, following the naming rule above."""
    return EnvironSource(environ)()


def settings_from_values(values: dict[str, Any]) -> Settings:
    """Validate raw nested values on top of their profile's preset."""
    return _merged((InitSettingsSource(Settings, values),))


def built_corpus_manifest(build: str) -> Path:
    """The manifest a ``corpus.build`` value names: the file itself, or in a build's output
    folder the one of its newest dump."""
    path = Path(build).expanduser()
    if path.is_file():
        return path
    found = sorted(path.glob(f"*/*/*/{MANIFEST_NAME}")) if path.is_dir() else []
    if not found:
        raise _build_problem(
            build,
            f"no {MANIFEST_NAME} of `python -m pipeline.build` under {path}",
            f"{path} に `python -m pipeline.build` の出力（{MANIFEST_NAME}）が見つかりません。",
        )
    return max(found, key=lambda manifest: json.loads(manifest.read_text(encoding="utf-8")).get("dump_date") or "")


def built_corpus_preset(build: str) -> dict[str, Any]:
    """The custom profile's preset: the built corpus and index as local folders (the repos'
    folders in the build's output), and the index file and embedding model the build's
    manifest recorded. Models still come from the hub cache or ``hub_mirror``."""
    if not build:
        raise _build_problem(
            build,
            "the custom profile needs corpus.build (RAG_CORPUS_BUILD)",
            "custom プロファイルには、ビルドしたコーパス（corpus.build / RAG_CORPUS_BUILD）の指定が必要です。",
        )
    path = built_corpus_manifest(build)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        recorded = {name: str(value) for name, value in manifest["settings"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise _build_problem(
            build, f"cannot read the build's manifest {path}: {exc}", f"ビルドの記録 {path} を読めません（{exc}）。"
        ) from exc
    corpus_repo = path.parent.parent  # <out>/<corpus repo>/<config>/manifest.json
    out = corpus_repo.parent.parent
    preset = env_values({name: value for name, value in recorded.items() if name not in BUILD_LOCATION})
    preset.setdefault("corpus", {}).update(repo=str(corpus_repo), config=path.parent.name)
    index_repo = recorded.get("RAG_INDEX_REPO", IndexSettings.model_fields["repo"].default)
    preset.setdefault("index", {})["repo"] = str(out / index_repo)
    return preset


#: What a build's recorded settings say of where it lies: the preset names the folders.
BUILD_LOCATION = ("RAG_PROFILE", "RAG_HUB_MIRROR", "RAG_CORPUS_REPO", "RAG_CORPUS_CONFIG", "RAG_INDEX_REPO")


def _build_problem(value: str, en: str, ja: str) -> SettingsError:
    return SettingsError([FieldProblem("corpus.build", value, en=en, ja=ja)])


def changed_values(settings: Settings, *, secrets: bool = False) -> dict[str, Any]:
    """The values that differ from the profile's own defaults (the raw values that make
    these settings again); secrets (API key, API token) only when ``secrets`` is true."""
    current = settings.model_dump(mode="json")
    profile: dict[str, Any] = {"profile": settings.profile}
    if settings.profile == "custom":  # its preset comes from the build it names
        profile["corpus"] = {"build": settings.corpus.build}
    defaults = settings_from_values(profile).model_dump(mode="json")
    changed: dict[str, Any] = {"profile": settings.profile}
    for key, value in current.items():
        if isinstance(value, dict):
            diff = {k: v for k, v in value.items() if defaults[key].get(k) != v}
            if diff:
                changed[key] = diff
        elif value != defaults[key] and value is not None:
            changed[key] = value
    if settings.profile == "custom":  # what its preset is made from
        changed.setdefault("corpus", {})["build"] = settings.corpus.build
    for section, name in SECRET_PATHS:
        changed.get(section, {}).pop(name, None)
        value = getattr(getattr(settings, section), name).get_secret_value()
        if secrets and value:
            changed.setdefault(section, {})[name] = value
    return {key: value for key, value in changed.items() if value != {}}


def with_values(settings: Settings, values: dict[str, Any]) -> Settings:
    """These settings with some dotted-path values replaced, validated. A new profile
    brings its own preset under the values that were customised."""
    raw = changed_values(settings, secrets=True)
    for path, value in values.items():
        section, _, name = path.rpartition(".")
        (raw.setdefault(section, {}) if section else raw)[name] = value
    return settings_from_values(raw)


def session_changes(settings: Settings, base: Settings) -> dict[str, Any]:
    """The session fields where ``settings`` differ from ``base``, as JSON values."""
    current, defaults = settings.model_dump(mode="json"), base.model_dump(mode="json")
    changes = {}
    for path in SESSION_FIELDS:
        section, name = path.split(".")
        if current[section][name] != defaults[section][name]:
            changes[path] = current[section][name]
    return changes


def with_session_values(settings: Settings, values: dict[str, Any]) -> Settings:
    """``settings`` with one session's (or request's) own values; anything that is not a
    session field is refused, naming it."""
    foreign = [path for path in values if not is_session_field(path)]
    if foreign:
        raise SettingsError(
            [
                FieldProblem(
                    path,
                    values[path],
                    en=f"{path} is a server-wide setting; a request cannot change it",
                    ja=f"{path} はサーバー全体の設定のため、ここでは変更できません。",
                )
                for path in foreign
            ]
        )
    return with_values(settings, values) if values else settings


def with_retrieval(settings: Settings, **values: Any) -> Settings:
    """``settings`` with some of the request's retrieval fields changed, by name
    (``mode="bm25", top_k=3``)."""
    return with_session_values(settings, {f"retrieval.{name}": value for name, value in values.items()})


def save_file_values(
    values: dict[str, Any],
    remove: Iterable[str] = (),
    path: Path | str | None = None,
    environ: Mapping[str, str] | None = None,
    before_writing: Callable[[Settings], object] | None = None,
) -> SavedFile:
    """Write these dotted-path values into the settings file and drop the ``remove``
    paths from it, leaving everything else in the file as it was: the file holds only
    what was saved in it, never a value that came from the environment or a secret.

    The file is validated with the other layers before it is written (an invalid value
    raises :class:`SettingsError` and nothing changes), then ``before_writing`` gets the
    settings it will make, to apply them: if that raises, the file stays as it was. A
    file that cannot be read is kept as ``<name>.bad-<time>`` first, never overwritten
    silently."""
    environ = os.environ if environ is None else environ
    target = settings_file_path(path, environ)
    backup = None
    try:
        raw = read_settings_file(target)
    except SettingsError:
        raw, backup = {}, target.with_name(f"{target.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}")
    removed = [p for p in remove if _pop_path(raw, p)]
    for dotted, value in values.items():
        section, _, name = dotted.rpartition(".")
        (raw.setdefault(section, {}) if section else raw)[name] = value
    raw = {key: value for key, value in raw.items() if value != {}}
    pending = InitSettingsSource(Settings, without_secrets(raw))
    settings = _merged(_layers(pending, environ, {}))  # raises before anything is written
    if before_writing is not None:
        before_writing(settings)
    if backup is not None:
        target.replace(backup)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.tmp")
    staging.write_text(tomli_w.dumps(raw), encoding="utf-8")
    staging.replace(target)
    return SavedFile(target, settings, dict(values), removed, backup)


@dataclass
class SavedFile:
    """What a save wrote: the file, the settings now in effect, the values written, the
    paths removed, and where an unreadable old file was kept."""

    path: Path
    settings: Settings
    written: dict[str, Any]
    removed: list[str]
    backup: Path | None


def _pop_path(raw: dict[str, Any], dotted: str) -> bool:
    section, _, name = dotted.rpartition(".")
    table = raw.get(section) if section else raw
    return isinstance(table, dict) and table.pop(name, _MISSING) is not _MISSING


_MISSING = object()


def env_overridden(environ: Mapping[str, str] | None = None) -> set[str]:
    """Dotted paths of the fields set by ``RAG_*`` variables (they win over the file)."""
    paths = set()
    for key, value in env_values(os.environ if environ is None else environ).items():
        if isinstance(value, dict):
            paths.update(f"{key}.{name}" for name in value)
        else:
            paths.add(key)
    return paths
