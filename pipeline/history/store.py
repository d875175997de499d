"""The conversation store: each user's conversations in one SQL database.

SQLite (a file under the cache dir, nothing to install) by default; PostgreSQL (or any
SQLAlchemy URL) through ``db.url`` / ``RAG_DB_URL`` when several UI replicas share it.
The schema is created or upgraded by Alembic when the store opens.

Every call names the owner and touches only that owner's rows. Every database failure
becomes a :class:`HistoryUnavailableError` whose Japanese message names the file or
server, so the page can go on answering and say that history is not being saved; the
store keeps no state between calls, so it works again as soon as the database does, and
:meth:`ConversationStore.put_turn` writes what was asked and answered meanwhile. A
SQLite file deleted (or replaced) under a running app is noticed at the next call:
SQLite would go on writing into the deleted file, losing everything; the store starts a
new file instead, says so once (:class:`HistoryVanishedError`) and counts it in
:attr:`ConversationStore.epoch` (the file's identity), so that every session writes its
conversation again.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, inspect, select, text
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from pipeline.core.errors import HistoryBusyError, HistoryUnavailableError, HistoryVanishedError
from pipeline.core.schema import Answer, Conversation, ConversationSummary, Feedback, StoredTurn
from pipeline.core.secrets import masked, url_password
from pipeline.history.tables import ConversationRow, TurnRow
from pipeline.settings.model import Settings

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
#: The newest migration (tests check it against Alembic's own head): a database already
#: there is opened without importing Alembic, a quarter of a second of the app's first answer.
HEAD_REVISION = "0001"
SQLITE_FILE = "history.sqlite3"
TITLE_CHARS = 40
#: Serialises schema upgrades of replicas that start together on one PostgreSQL.
MIGRATION_LOCK_ID = 0x6A617769  # "jawi"


def database_url(settings: Settings) -> str:
    """``db.url``, or the SQLite file under the cache dir."""
    return settings.db.url.get_secret_value() or f"sqlite:///{settings.resolved_cache_dir / SQLITE_FILE}"


class ConversationStore:
    """Conversations, turns and feedback of each owner."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        sqlite = engine.url.get_backend_name() == "sqlite"
        #: Where the history is, for messages: the file, or the URL without its password.
        self.location = engine.url.database if sqlite else engine.url.render_as_string(hide_password=True)
        #: The SQLite file and its identity when opened (None for a server).
        self._file = Path(engine.url.database) if sqlite and engine.url.database else None
        self._identity: tuple[int, int] | None = None
        self._file_lock = threading.Lock()
        #: Which database this is: a SQLite file's identity (device and inode), which a
        #: file started anew changes; one value for a server.
        self.epoch = "server"

    @classmethod
    def open(cls, url: str, busy_timeout_s: float = 5.0) -> ConversationStore:
        """Open (creating or upgrading the schema) the database at ``url``."""
        try:
            engine = _engine(url, busy_timeout_s)
        except (ArgumentError, ValueError, ImportError) as exc:  # a malformed URL, a driver not installed
            reason = masked(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, [url_password(url) or ""])
            raise unusable(
                f"history database URL (db.url) unusable: {reason}",
                f"会話履歴のデータベースの URL（db.url / RAG_DB_URL）を使えません（{reason}）。",
            ) from None
        store = cls(engine)
        with store._guard("open"), engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
            if _revision(connection) != HEAD_REVISION:
                _upgrade(connection)
        store._identity = _identity(store._file)  # the file as it now exists
        store.epoch = str(store._identity or "server")
        return store

    def close(self) -> None:
        self.engine.dispose()

    # -- conversations ------------------------------------------------------------

    def conversations(self, owner: str, limit: int = 200) -> list[ConversationSummary]:
        """The owner's conversations, most recently used first."""
        with self._session("list") as session:
            rows = session.scalars(
                select(ConversationRow)
                .where(ConversationRow.owner == owner)
                .order_by(ConversationRow.updated_at.desc(), ConversationRow.created_at.desc())
                .limit(limit)
            )
            return [_summary(row) for row in rows]

    def conversation(self, owner: str, conversation_id: str) -> Conversation | None:
        """One conversation with all its turns, or None if the owner has none by that id."""
        with self._session("read") as session:
            row = self._owned(session, owner, conversation_id)
            if row is None:
                return None
            turns = session.scalars(select(TurnRow).where(TurnRow.conversation_id == row.id).order_by(TurnRow.id))
            return Conversation(**_summary(row).model_dump(), turns=[_turn(turn) for turn in turns])

    def create(self, owner: str, first_question: str) -> ConversationSummary:
        """A new conversation titled after its first question."""
        now = _now()
        row = ConversationRow(
            id=new_conversation_id(), owner=owner, title=_title(first_question), created_at=now, updated_at=now
        )
        with self._session("create") as session:
            session.add(row)
        return _summary(row)

    def rename(self, owner: str, conversation_id: str, title: str) -> bool:
        with self._session("rename") as session:
            row = self._owned(session, owner, conversation_id)
            if row is None:
                return False
            row.title = _title(title) or row.title
            return True

    def delete(self, owner: str, conversation_id: str) -> bool:
        with self._session("delete") as session:
            row = self._owned(session, owner, conversation_id)
            if row is None:
                return False
            session.delete(row)  # its turns go with it (ON DELETE CASCADE)
            return True

    # -- turns ----------------------------------------------------------------------

    def put_turn(self, owner: str, conversation_id: str, turn: StoredTurn) -> int:
        """Store a turn as it stands now (its question before generation, its answer as it
        streams and when it ends) and return its id. The conversation is created under
        this id when the store lacks it (asked while the database was away, or after its
        file was lost), titled after the turn's question; a turn id the conversation does
        not hold is written as a new turn."""
        now = _now()
        with self._session("write") as session:
            conversation = session.get(ConversationRow, conversation_id)
            if conversation is None:
                conversation = ConversationRow(
                    id=conversation_id,
                    owner=owner,
                    title=_title(turn.answer.question),
                    created_at=turn.created_at,
                    updated_at=now,
                )
                session.add(conversation)
            elif conversation.owner != owner:
                raise self._unavailable("write", PermissionError(f"conversation {conversation_id} is not {owner}'s"))
            row = None
            if turn.id is not None:
                row = session.scalars(
                    select(TurnRow).where(TurnRow.id == turn.id, TurnRow.conversation_id == conversation_id)
                ).first()
            if row is None:
                row = TurnRow(
                    conversation_id=conversation_id,
                    settings=turn.settings,
                    created_at=turn.created_at,
                    rating=turn.feedback.rating,
                    comment=turn.feedback.comment,
                )
                session.add(row)
            _fill(row, turn.answer, now)
            conversation.updated_at = now
            session.flush()
            return row.id

    def delete_turn(self, owner: str, turn_id: int) -> bool:
        """Remove one turn (the answer a user asked to regenerate)."""
        with self._session("delete") as session:
            turn = self._owned_turn(session, owner, turn_id)
            if turn is None:
                return False
            session.delete(turn)
            return True

    def set_feedback(self, owner: str, turn_id: int, feedback: Feedback) -> bool:
        with self._session("write") as session:
            turn = self._owned_turn(session, owner, turn_id)
            if turn is None:
                return False
            turn.rating, turn.comment = feedback.rating, feedback.comment
            return True

    # -- internals ----------------------------------------------------------------

    @staticmethod
    def _owned(session: Session, owner: str, conversation_id: str) -> ConversationRow | None:
        row = session.get(ConversationRow, conversation_id)
        return row if row is not None and row.owner == owner else None

    @staticmethod
    def _owned_turn(session: Session, owner: str, turn_id: int) -> TurnRow | None:
        return session.scalars(
            select(TurnRow)
            .join(ConversationRow, ConversationRow.id == TurnRow.conversation_id)
            .where(TurnRow.id == turn_id, ConversationRow.owner == owner)
        ).first()

    @contextmanager
    def _session(self, action: str) -> Iterator[Session]:
        self._check_file()
        with self._guard(action), self._sessions.begin() as session:
            yield session

    def _check_file(self) -> None:
        """A SQLite file deleted or replaced since it was opened: start a new one (with its
        schema) and say so once; the next call writes into the new file."""
        if self._file is None or self._identity is None or _identity(self._file) == self._identity:
            return
        with self._file_lock:
            if _identity(self._file) == self._identity:  # another thread already did
                return
            log.warning("history database %s vanished while in use: starting a new one", self.location)
            self.engine.dispose()
            with self._guard("recreate"), self.engine.begin() as connection:
                _upgrade(connection)
            self._identity = _identity(self._file)
            self.epoch = f"{self._identity}:{uuid.uuid4().hex}"  # a new file may reuse the old one's inode
        raise HistoryVanishedError(
            en=f"history database {self.location} was deleted while the app ran; a new one was started",
            ja=f"会話履歴のファイル（{self.location}）が実行中に削除されました。それまでに保存した会話は失われました。"
            "画面に出ている会話は新しいファイルに保存し直します。",
        )

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        try:
            yield
        except OperationalError as exc:
            if "locked" in str(exc.orig).lower() or "busy" in str(exc.orig).lower():
                log.warning("history database %s busy during %s", self.location, action)
                raise HistoryBusyError(
                    en=f"history database {self.location} is locked by another process ({action})",
                    ja=f"会話履歴のデータベース（{self.location}）を別の処理が使用中のため、保存できませんでした。"
                    "しばらくしてからもう一度お試しください。",
                ) from None
            raise self._unavailable(action, exc) from None
        except (DBAPIError, SQLAlchemyError) as exc:
            raise self._unavailable(action, exc) from None

    def _unavailable(self, action: str, exc: Exception) -> HistoryUnavailableError:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        return unusable(
            f"history database {self.location} unavailable ({action}): {reason}",
            f"会話履歴のデータベース（{self.location}）を使えません（{reason}）。",
        )


def unusable(en: str, ja: str) -> HistoryUnavailableError:
    """The store cannot be used: logged, and said in Japanese with what it means for answers."""
    log.warning("%s", en)
    return HistoryUnavailableError(en=en, ja=ja + "回答は続けられますが、会話履歴は保存されません。")


def open_store(settings: Settings) -> ConversationStore:
    """The store the settings name (``db.url``, else SQLite under the cache dir)."""
    url = database_url(settings)
    if url.startswith("sqlite:///"):
        folder = Path(url.removeprefix("sqlite:///")).expanduser().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except (OSError, ValueError) as exc:  # not writable, a file in the way, a NUL in the name
            raise unusable(
                f"history database folder {folder} unusable: {exc}",
                f"会話履歴のデータベース（db.url）のフォルダー（{folder}）を作れません（{exc}）。",
            ) from None
    return ConversationStore.open(url, settings.db.busy_timeout_s)


def new_conversation_id() -> str:
    return uuid.uuid4().hex


def _identity(path: Path | None) -> tuple[int, int] | None:
    """A file's device and inode (None when it does not exist)."""
    try:
        stat = os.stat(path) if path is not None else None
    except FileNotFoundError:
        return None
    return (stat.st_dev, stat.st_ino) if stat is not None else None


def _engine(url: str, busy_timeout_s: float) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": busy_timeout_s})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection, _record) -> None:
            # WAL: readers never wait for a writer (two tabs, several sessions);
            # foreign keys: deleting a conversation deletes its turns.
            cursor = connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.close()

        return engine
    connect_args = {"connect_timeout": max(1, round(busy_timeout_s))} if url.startswith("postgresql") else {}
    # pre-ping: a pooled connection that died with the server is replaced, not used
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(moment: datetime) -> datetime:
    """SQLite gives back naive datetimes; they were stored in UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _title(question: str) -> str:
    line = " ".join(question.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1] + "…"


def _fill(turn: TurnRow, answer: Answer, now: datetime) -> None:
    turn.question = answer.question
    turn.answer_text = answer.text
    turn.complete = answer.complete
    turn.mode = answer.mode
    turn.answer = answer.model_dump(mode="json")
    turn.updated_at = now


def _summary(row: ConversationRow) -> ConversationSummary:
    return ConversationSummary(
        id=row.id, title=row.title, created_at=_utc(row.created_at), updated_at=_utc(row.updated_at)
    )


def _turn(row: TurnRow) -> StoredTurn:
    return StoredTurn(
        id=row.id,
        answer=Answer.model_validate(row.answer),
        settings=row.settings,
        feedback=Feedback(rating=row.rating, comment=row.comment),
        created_at=_utc(row.created_at),
        updated_at=_utc(row.updated_at),
    )


def _revision(connection: Connection) -> str | None:
    """The schema's Alembic revision, None for a database without one."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def _upgrade(connection: Connection) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
