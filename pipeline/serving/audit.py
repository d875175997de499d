"""Who changed what server-wide, and when: one JSON line per change in
``<cache>/logs/audit.log`` and on the ``jawiki_rag.audit`` logger.

Changes are recorded as what was written to the settings file (dotted paths with their
values) and what was removed from it; secrets (API key, API token, database URL, admin
password) are never recorded with a value.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.settings.model import Settings
from pipeline.settings.sources import SECRET_PATHS

log = logging.getLogger("jawiki_rag.audit")
AUDIT_FILE = Path("logs") / "audit.log"
SECRET_DOTTED = {f"{section}.{name}" for section, name in SECRET_PATHS}
HIDDEN = "(secret)"


def without_secrets(values: dict[str, Any]) -> dict[str, Any]:
    """Dotted path -> value, with each secret's value replaced by a marker."""
    return {path: HIDDEN if path in SECRET_DOTTED else value for path, value in values.items()}


def record(settings: Settings, who: str, action: str, **details: Any) -> None:
    """Append one server-wide change (or a refused attempt) with its details, e.g. what
    was written to the settings file; a log that cannot be written is itself logged."""
    entry = {"time": datetime.now(UTC).isoformat(timespec="seconds"), "user": who, "action": action, **details}
    line = json.dumps(entry, ensure_ascii=False, default=str)
    log.info("server-wide change: %s", line)
    path = settings.resolved_cache_dir / AUDIT_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as out:
            out.write(line + "\n")
    except OSError as exc:
        log.error("cannot write the audit log %s: %s", path, exc)
