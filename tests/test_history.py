"""The conversation store on real databases: SQLite files and a real PostgreSQL server
(the same cases on both), and the faults a user can meet (docs/reliability.md)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import pytest
import sqlalchemy
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, select

from pipeline.core.errors import HistoryBusyError, HistoryUnavailableError, HistoryVanishedError
from pipeline.core.schema import Answer, Citations, Conversation, Feedback, Notice, Source, StoredTurn
from pipeline.history.export import as_json, as_markdown
from pipeline.history.store import HEAD_REVISION, MIGRATIONS, ConversationStore
from pipeline.history.tables import Base, TurnRow
from tests.conftest import postgres_or_skip

QUESTION = "ラオスの首都はどこか。"
SETTINGS_USED = {"profile": "demo", "llm.model": "elyza/ELYZA-japanese-Llama-2-13b-instruct", "retrieval.top_k": 5}


def answer(question: str = QUESTION, text: str = "", complete: bool = False, sources: int = 2) -> Answer:
    return Answer(
        question=question,
        standalone_question=question,
        retriever="bm25",
        sources=[
            Source(
                row=10 + n,
                id=100 + n,
                title=f"ラオス {n}",
                section="首都",
                text="ラオスの首都はビエンチャン。" * 3,
                n=n,
                score=0.9 - n / 10,
                highlight=(0, 14),
            )
            for n in range(1, sources + 1)
        ],
        notices=[Notice(code="truncated", en="question truncated", ja="質問を切り詰めました")],
        timings={"search": 3.5, "ttft": 120.0},
        mode="demo",
        prompt="[INST] ... [/INST]",
        text=text,
        complete=complete,
        citations=Citations(used=[1]) if complete else Citations(),
    )


def put(store: ConversationStore, owner: str, conversation_id: str, stored: Answer, turn_id: int | None = None) -> int:
    """Write a turn as the page does: new (``turn_id`` None), or its answer as it stands."""
    now = datetime.now(UTC)
    turn = StoredTurn(id=turn_id, answer=stored, settings=SETTINGS_USED, created_at=now, updated_at=now)
    return store.put_turn(owner, conversation_id, turn)


@pytest.fixture
def store(database_url):
    opened = ConversationStore.open(database_url, busy_timeout_s=0.5)
    yield opened
    opened.close()


def test_migrations_create_the_schema_the_tables_describe(store, database_url):
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection)
        assert context.get_current_revision() == head == HEAD_REVISION  # the store skips Alembic at its head
        assert compare_metadata(context, Base.metadata) == []  # no drift between tables.py and migrations
    ConversationStore.open(database_url).close()  # opening again upgrades nothing and loses nothing


def test_an_older_schema_is_upgraded_when_the_store_opens(database_url):
    """A database one revision behind (here: none applied, the table empty) is upgraded."""
    ConversationStore.open(database_url).close()
    engine = sqlalchemy.create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("DELETE FROM alembic_version"))
        for table in ("turns", "conversations"):
            connection.execute(sqlalchemy.text(f"DROP TABLE {table}"))
    engine.dispose()
    store = ConversationStore.open(database_url)
    assert store.create("alice@example.com", "梅雨") is not None
    store.close()


def test_conversations_belong_to_their_owner_newest_first(store, database_url):
    first = store.create("alice@example.com", "最初の質問 " + "長い" * 40)
    second = store.create("alice@example.com", "二つ目の質問")
    store.create("bob@example.com", "ボブの質問")
    assert [c.id for c in store.conversations("alice@example.com")] == [second.id, first.id]
    assert first.title.endswith("…") and len(first.title) == 40
    assert store.conversation("bob@example.com", first.id) is None
    assert not store.rename("bob@example.com", first.id, "乗っ取り")
    assert not store.delete("bob@example.com", first.id)
    with pytest.raises(HistoryUnavailableError):
        put(store, "bob@example.com", first.id, answer())  # Bob cannot write into Alice's conversation
    assert store.rename("alice@example.com", first.id, "  ラオスについて \n ")
    reopened = ConversationStore.open(database_url)
    assert reopened.conversation("alice@example.com", first.id).title == "ラオスについて"
    assert [c.title for c in reopened.conversations("bob@example.com")] == ["ボブの質問"]
    reopened.close()


def test_a_turn_is_written_before_generation_and_updated_as_it_streams(store, database_url):
    conversation = store.create("alice", QUESTION)
    turn_id = put(store, "alice", conversation.id, answer())
    stored = store.conversation("alice", conversation.id).turns[0]
    assert stored.answer.question == QUESTION and stored.answer.text == "" and not stored.answer.complete
    assert put(store, "alice", conversation.id, answer(text="ラオスの首都は"), turn_id) == turn_id
    assert store.conversation("alice", conversation.id).turns[0].answer.text == "ラオスの首都は"
    final = answer(text="ラオスの首都はビエンチャンです[1]。", complete=True)
    put(store, "alice", conversation.id, final, turn_id)

    reopened = ConversationStore.open(database_url)  # an app restart
    stored = reopened.conversation("alice", conversation.id).turns[0]
    assert stored.answer == final  # sources (row, title, url, score, highlight), notices, timings, prompt
    assert stored.answer.sources[0].url.startswith("https://ja.wikipedia.org/wiki/")
    assert stored.settings == SETTINGS_USED and stored.updated_at >= stored.created_at
    with reopened.engine.connect() as connection:
        row = connection.execute(select(TurnRow.complete, TurnRow.mode, TurnRow.answer_text)).one()
    assert tuple(row) == (True, "demo", final.text)
    reopened.close()


def test_feedback_and_a_comment_with_markup_are_kept_as_text(store):
    conversation = store.create("alice", QUESTION)
    turn_id = put(store, "alice", conversation.id, answer(text="答え", complete=True))
    comment = "<script>alert(1)</script> **太字** [link](javascript:x) $x$"
    assert store.set_feedback("alice", turn_id, Feedback(rating=-1, comment=comment))
    assert not store.set_feedback("bob", turn_id, Feedback(rating=1))
    stored = store.conversation("alice", conversation.id)
    assert stored.turns[0].feedback == Feedback(rating=-1, comment=comment)
    markdown = as_markdown(stored)
    assert "\\<script\\>" in markdown and "<script>" not in markdown and "\\*\\*太字\\*\\*" in markdown
    assert "👎" in markdown


def test_deleting_a_conversation_deletes_its_turns(store):
    kept, removed = store.create("alice", "残す"), store.create("alice", "消す")
    for conversation in (kept, removed):
        put(store, "alice", conversation.id, answer())
    assert store.delete("alice", removed.id)
    with store.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(TurnRow)).scalar() == 1
    turn_id = store.conversation("alice", kept.id).turns[0].id
    assert store.delete_turn("alice", turn_id) and store.conversation("alice", kept.id).turns == []


def test_two_tabs_writing_at_once_lose_nothing(store, database_url):
    conversation = store.create("alice", QUESTION)
    other_tab = ConversationStore.open(database_url, busy_timeout_s=5)
    errors = []

    def write(tab: ConversationStore, name: str) -> None:
        try:
            for n in range(15):
                turn_id = put(tab, "alice", conversation.id, answer(f"{name} {n}"))
                put(tab, "alice", conversation.id, answer(f"{name} {n}", text=f"{name} {n} の答え", complete=True),
                    turn_id)  # fmt: skip
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(tab, name)) for tab, name in ((store, "A"), (other_tab, "B"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    turns = store.conversation("alice", conversation.id).turns
    assert len(turns) == 30 and all(t.answer.complete for t in turns)
    assert {t.answer.question for t in turns} == {f"{name} {n}" for name in "AB" for n in range(15)}
    other_tab.close()


def test_a_huge_conversation_exports_whole(store):
    conversation = store.create("alice", QUESTION)
    for n in range(200):
        put(store, "alice", conversation.id, answer(f"質問 {n}", text=f"答え {n} " * 200, complete=True, sources=5))
    stored = store.conversation("alice", conversation.id)
    markdown, exported = as_markdown(stored), as_json(stored)
    assert markdown.count("## 質問 ") == 200 and markdown.count("### 出典") == 200
    assert "答え 199 答え 199" in markdown and markdown.rstrip().endswith("スコア 0.400")
    assert Conversation.model_validate(json.loads(exported)) == stored


# -- SQLite faults ------------------------------------------------------------------------


def test_a_missing_sqlite_file_is_created_again(tmp_path):
    path = tmp_path / "history.sqlite3"
    ConversationStore.open(f"sqlite:///{path}").close()
    path.unlink()
    store = ConversationStore.open(f"sqlite:///{path}")
    assert path.exists() and store.conversations("alice") == []
    store.close()


def test_a_sqlite_file_deleted_while_in_use_is_noticed_said_and_started_anew(tmp_path):
    path = tmp_path / "history.sqlite3"
    store = ConversationStore.open(f"sqlite:///{path}")
    conversation = store.create("alice", QUESTION)
    put(store, "alice", conversation.id, answer(text="答え", complete=True))
    epoch = store.epoch
    for leftover in tmp_path.glob("history.sqlite3*"):  # the file, its WAL and shared memory
        leftover.unlink()
    with pytest.raises(HistoryVanishedError) as raised:
        store.conversations("alice")
    assert "実行中に削除されました" in raised.value.ja and str(path) in raised.value.ja and store.epoch != epoch
    assert path.exists() and store.conversations("alice") == []  # a new file, with its schema, says so once
    put(store, "alice", conversation.id, answer(text="答え", complete=True))  # the page writes it again
    assert [
        t.answer.text for t in ConversationStore.open(f"sqlite:///{path}").conversation("alice", conversation.id).turns
    ] == ["答え"]
    store.close()


@pytest.mark.parametrize("damage", ["corrupt", "a folder"])
def test_a_corrupt_or_unopenable_sqlite_file_is_reported_by_name(tmp_path, damage):
    path = tmp_path / "history.sqlite3"
    if damage == "corrupt":
        path.write_bytes(b"this is not a SQLite database" * 100)
    else:
        path.mkdir()
    with pytest.raises(HistoryUnavailableError) as raised:
        ConversationStore.open(f"sqlite:///{path}")
    assert str(path) in raised.value.ja and "会話履歴は保存されません" in raised.value.ja


LOCKER = """
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
connection.execute("COMMIT")
"""


def test_a_database_locked_by_another_process_waits_then_says_so(tmp_path):
    path = tmp_path / "history.sqlite3"
    store = ConversationStore.open(f"sqlite:///{path}", busy_timeout_s=0.5)
    conversation = store.create("alice", QUESTION)
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        assert locker.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with pytest.raises(HistoryBusyError) as raised:
            put(store, "alice", conversation.id, answer())
        assert time.monotonic() - started >= 0.4  # it waited for the other process first
        assert "別の処理が使用中" in raised.value.ja and str(path) in raised.value.ja
        assert [c.id for c in store.conversations("alice")] == [conversation.id]  # reading still works (WAL)
    finally:
        locker.communicate("\n", timeout=10)
    assert put(store, "alice", conversation.id, answer()) is not None
    store.close()


def test_sqlite_runs_in_wal_mode_and_its_foreign_keys_cascade(tmp_path):
    path = tmp_path / "history.sqlite3"
    store = ConversationStore.open(f"sqlite:///{path}")
    conversation = store.create("alice", QUESTION)
    put(store, "alice", conversation.id, answer())
    with store.engine.begin() as connection:  # the store's own connection, with its pragmas
        assert connection.execute(sqlalchemy.text("PRAGMA foreign_keys")).scalar() == 1
        connection.execute(sqlalchemy.text("DELETE FROM conversations"))  # no ORM: the database itself cascades
        assert connection.execute(select(func.count()).select_from(TurnRow)).scalar() == 0
    store.close()
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# -- PostgreSQL faults --------------------------------------------------------------------


def test_postgresql_down_at_start_is_reported_without_the_password():
    server = postgres_or_skip()  # initialised, never started: nothing listens on its port
    try:
        with pytest.raises(HistoryUnavailableError) as raised:
            ConversationStore.open(server.url(password="s3cret-pass"), busy_timeout_s=1)
        assert f"127.0.0.1:{server.port}" in raised.value.ja and "s3cret-pass" not in raised.value.ja + raised.value.en
        assert "会話履歴は保存されません" in raised.value.ja
    finally:
        server.remove()


def test_postgresql_down_mid_session_loses_nothing_already_stored():
    server = postgres_or_skip()
    server.start()
    try:
        store = ConversationStore.open(server.new_database(), busy_timeout_s=1)
        conversation = store.create("alice", QUESTION)
        put(store, "alice", conversation.id, answer(text="前の答え", complete=True))
        server.stop()
        with pytest.raises(HistoryUnavailableError):
            put(store, "alice", conversation.id, answer("次の質問"))
        with pytest.raises(HistoryUnavailableError):
            store.conversations("alice")
        server.start()
        turns = store.conversation("alice", conversation.id).turns  # the same store reconnects
        assert [t.answer.text for t in turns] == ["前の答え"]
        assert put(store, "alice", conversation.id, answer("次の質問")) is not None
        store.close()
    finally:
        server.stop()
        server.remove()


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config
