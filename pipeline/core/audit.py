"""Who changed what server-wide, and when: one JSON line per change in
``<cache>/logs/audit.log`` and on the ``jawiki_rag.audit`` logger.

Changes are recorded as dotted setting paths with their new values; secrets (API key,
API token, database URL, admin password) are recorded as changed, never with a value.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.core.settings import Settings
from pipeline.core.settings_files import SECRET_PATHS

log = logging.getLogger("jawiki_rag.audit")
AUDIT_FILE = Path("logs") / "audit.log"
SECRET_DOTTED = {f"{section}.{name}" for section, name in SECRET_PATHS}
HIDDEN = "(secret)"


def changed_paths(before: Settings, after: Settings) -> dict[str, Any]:
    """Dotted path -> new JSON value of each field that differs; secrets hidden."""
    old, new = before.model_dump(mode="json"), after.model_dump(mode="json")
    changes: dict[str, Any] = {}
    for key, value in new.items():
        if isinstance(value, dict):
            for name, sub in value.items():
                path = f"{key}.{name}"
                secret_changed = path in SECRET_DOTTED and _secret(before, path) != _secret(after, path)
                if secret_changed or (path not in SECRET_DOTTED and old[key].get(name) != sub):
                    changes[path] = HIDDEN if path in SECRET_DOTTED else sub
        elif old.get(key) != value:
            changes[key] = value
    return changes


def record(settings: Settings, who: str, action: str, changes: dict[str, Any] | None = None) -> None:
    """Append one server-wide change; a log that cannot be written is itself logged."""
    entry = {"time": datetime.now(UTC).isoformat(timespec="seconds"), "user": who, "action": action}
    if changes is not None:
        entry["changes"] = changes
    line = json.dumps(entry, ensure_ascii=False)
    log.info("server-wide change: %s", line)
    path = settings.resolved_cache_dir / AUDIT_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as out:
            out.write(line + "\n")
    except OSError as exc:
        log.error("cannot write the audit log %s: %s", path, exc)


def _secret(settings: Settings, path: str) -> str:
    return settings.value(path).get_secret_value()
