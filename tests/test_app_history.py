"""Conversations, feedback, users and admins in the pages, through Streamlit's AppTest
(with ``AppTest.user`` standing in for an OIDC login); the reload in a real browser is
in test_browser.py."""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from pipeline.history.store import open_store
from pipeline.serving import access
from pipeline.settings.sources import load_settings
from tests.conftest import ROOT, postgres_or_skip
from tests.helpers import QUESTION, ask_app, markdown_texts
from ui import auth
from ui.history.sidebar import ANONYMOUS_NOTE

ALICE = {"is_logged_in": True, "email": "alice@example.com", "name": "Alice"}
BOB = {"is_logged_in": True, "email": "bob@example.com", "name": "Bob"}


@pytest.fixture
def app_env(demo_cache, isolated_env, fresh_app_process, monkeypatch):
    monkeypatch.setenv("RAG_CACHE_DIR", str(demo_cache))
    monkeypatch.setenv("RAG_LLM_BACKEND", "none")
    monkeypatch.chdir(ROOT)
    return isolated_env


def start(page: str | None = None, user: dict | None = None, **query: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=300)
    if user is not None:
        at.user = user
    for name, value in query.items():
        at.query_params[name] = value
    at.run()
    assert not at.exception, at.exception
    if page:
        at.switch_page(page).run()
        assert not at.exception, at.exception
    return at


def stored_conversations(owner: str):
    store = open_store(load_settings())
    try:
        return [store.conversation(owner, c.id) for c in store.conversations(owner)]
    finally:
        store.close()


def test_a_conversation_comes_back_after_a_reload_with_its_citations(app_env):
    at = ask_app(start(), QUESTION)
    conversation_id = at.query_params["c"]
    [conversation] = stored_conversations("local")
    assert conversation.id == conversation_id and conversation.title == QUESTION
    assert conversation.turns[0].answer.complete and conversation.turns[0].answer.sources
    assert conversation.turns[0].settings["retrieval.top_k"] == 5

    reloaded = start(c=conversation_id)  # a new session: what a reload or a restart gives
    assert any(QUESTION in text for text in markdown_texts(reloaded))
    assert reloaded.subheader[0].value == "\\[1\\] 梅雨"  # the source cards are back
    assert any(b.label == QUESTION and b.proto.type == "primary" for b in reloaded.sidebar.button)
    assert [b.label for b in reloaded.download_button] == ["Markdown で書き出す", "JSON で書き出す"]

    next(b for b in reloaded.sidebar.button if b.label == "新しい会話").click().run()
    assert "c" not in reloaded.query_params and not any(QUESTION in t for t in markdown_texts(reloaded))
    next(b for b in reloaded.sidebar.button if b.label == QUESTION).click().run()  # open it from the list
    assert reloaded.query_params["c"] == conversation_id
    assert any(QUESTION in text for text in markdown_texts(reloaded))


def test_follow_up_questions_join_the_same_conversation_and_rename_delete_work(app_env):
    at = ask_app(start(), QUESTION)
    ask_app(at, "ではラオスの首都はどこか。")
    [conversation] = stored_conversations("local")
    assert [t.answer.question for t in conversation.turns] == [QUESTION, "ではラオスの首都はどこか。"]

    at.text_input(key="rename-title").set_value("梅雨の話")
    next(b for b in at.button if b.label == "名前を変更").click().run()
    assert stored_conversations("local")[0].title == "梅雨の話"
    at.checkbox(key="confirm-delete").check().run()
    next(b for b in at.button if b.label == "この会話を削除").click().run()
    assert not at.exception and stored_conversations("local") == []
    assert "c" not in at.query_params


def test_feedback_and_a_comment_with_markup_are_stored_and_shown_as_text(app_env):
    at = ask_app(start(), QUESTION)
    at.feedback[0].set_value(1).run()  # 👍
    turn_id = stored_conversations("local")[0].turns[0].id
    comment = "<b>太字</b> **強調** :red[赤]"
    at.text_area(key=f"comment-text-{turn_id}").set_value(comment)
    next(b for b in at.button if b.label == "保存").click().run()
    feedback = stored_conversations("local")[0].turns[0].feedback
    assert feedback.rating == 1 and feedback.comment == comment
    reloaded = start(c=at.query_params["c"])
    assert reloaded.feedback[0].value == 1
    shown = [c.value for c in reloaded.caption if c.value.startswith("コメント")]
    assert shown == ["コメント: \\<b\\>太字\\<\\/b\\> \\*\\*強調\\*\\* \\:red\\[赤\\]"]


def test_an_over_long_question_is_kept_whole(app_env):
    """Search uses the first retrieval.max_query_chars characters (and says so); the
    conversation keeps the question as it was asked."""
    question = QUESTION + "梅雨" * 1500
    at = ask_app(start(), question)
    assert any("先頭の 2,000 文字だけを使いました" in shown.value for shown in [*at.info, *at.warning])
    stored = stored_conversations("local")[0].turns[0].answer
    assert stored.question == question and any(n.code == "query_truncated" for n in stored.notices)


def test_a_conversation_title_with_markup_is_listed_as_text(app_env):
    """A sidebar button's label is Markdown: a title with an image would load it from
    wherever it points; the list shows the question's characters instead."""
    question = "**梅雨** ![](http://127.0.0.1:9/beacon)"
    at = ask_app(start(), question)
    labels = [b.label for b in at.sidebar.button if "梅雨" in b.label]
    assert labels == ["\\*\\*梅雨\\*\\* \\!\\[\\]\\(http\\:\\/\\/127\\.0\\.0\\.1\\:9\\/beacon\\)"]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("postgresql+psycopg://rag:s3cret@db.internal:54x2/jawiki", "54x2"),  # a typo in the port
        ("mysql://rag:s3cret@127.0.0.1/jawiki", "MySQLdb"),  # a driver that is not installed
        ("rag:s3cret@db.internal:5432/jawiki", "Could not parse"),  # no scheme
        ("sqlite:////proc/no-such-process/history.sqlite3", "/proc/no-such-process"),  # a folder that cannot be made
    ],
)
def test_answers_go_on_when_the_history_url_is_unusable(app_env, monkeypatch, url, reason):
    monkeypatch.setenv("RAG_DB_URL", url)
    at = ask_app(start(), QUESTION)
    assert at.subheader[0].value == "\\[1\\] 梅雨"
    warning = next(w.value for w in at.warning if "会話履歴は保存されません" in w.value)
    assert "db.url" in warning and reason in warning and "s3cret" not in warning


def test_answers_go_on_when_the_history_database_cannot_be_opened(app_env, tmp_path, monkeypatch):
    unusable = tmp_path / "history-is-a-folder"
    unusable.mkdir()
    monkeypatch.setenv("RAG_DB_URL", f"sqlite:///{unusable}")
    at = ask_app(start(), QUESTION)
    assert at.subheader[0].value == "\\[1\\] 梅雨"  # the answer and its sources are shown
    assert any(str(unusable) in w.value and "会話履歴は保存されません" in w.value for w in at.warning)
    assert any("会話履歴は保存されていません" in c.value for c in at.sidebar.caption)
    ask_app(at, "梅雨前線とは何か。")
    assert sum(QUESTION in text for text in markdown_texts(at)) == 1  # the session still holds the conversation
    assert len(at.session_state["chat"].turns) == 2


def test_each_user_sees_only_their_own_conversations(app_env):
    alice = ask_app(start(user=ALICE), QUESTION)
    conversation_id = alice.query_params["c"]
    assert [c.title for c in stored_conversations("alice@example.com")] == [QUESTION]
    bob = start(user=BOB, c=conversation_id)  # Bob opens Alice's link
    assert not any(QUESTION in text for text in markdown_texts(bob))
    assert not any(b.label == QUESTION for b in bob.sidebar.button)
    assert any("ログイン中: bob\\@example\\.com" in c.value for c in bob.sidebar.caption)


def test_a_login_is_required_when_oidc_is_configured():
    at = start(user={"is_logged_in": False})
    assert [b.label for b in at.button] == ["ログイン"]
    assert not at.chat_input  # no page runs before the login


@pytest.mark.parametrize("verified", [False, "false"])  # some providers send the claim as a string
def test_an_address_the_provider_has_not_verified_owns_nothing_of_its_holders(app_env, verified):
    """Someone signs up at the identity provider with Alice's address, unverified: they are
    neither Alice's conversations' owner nor an admin (their own subject owns what they ask,
    with its issuer: the same subject at another provider is someone else)."""
    ask_app(start(user=ALICE), QUESTION)
    subject = "provider-subject-of-the-impostor"
    impostor = {**ALICE, "email_verified": verified, "iss": "https://idp.example.com", "sub": subject}
    at = start("pages/settings.py", user=impostor)
    assert at.number_input(key="setting:llm.timeout_s").disabled
    at.switch_page("pages/chat.py").run()
    assert not any(b.label == QUESTION for b in at.sidebar.button)
    assert not any(QUESTION in text for text in markdown_texts(at))
    ask_app(at, "ラオスの首都はどこか。")
    assert [c.title for c in stored_conversations(f"https://idp.example.com|{subject}")] == ["ラオスの首都はどこか。"]
    assert [c.title for c in stored_conversations("alice@example.com")] == [QUESTION]
    elsewhere = start(user={**impostor, "iss": "https://other-idp.example.org"})
    assert not any(b.label == "ラオスの首都はどこか。" for b in elsewhere.sidebar.button)


@pytest.mark.parametrize(("user", "admin"), [(ALICE, True), (BOB, False)])
def test_only_admins_change_server_wide_settings(app_env, audit_log, monkeypatch, tmp_path, user, admin):
    monkeypatch.setenv("RAG_ADMIN_USERS", "Alice@Example.com, carol@example.com")
    at = start("pages/settings.py", user=user)
    assert at.number_input(key="setting:llm.timeout_s").disabled is not admin
    assert at.selectbox(key="setting:llm.model").disabled is not admin
    assert any("管理者だけが変更できます" in i.value for i in at.info) is not admin
    if admin:
        at.number_input(key="setting:llm.timeout_s").set_value(30.0)
    else:  # a value sent for a disabled field anyway: Streamlit drops it
        forged(at.number_input(key="setting:llm.timeout_s")).set_value(30.0)
    next(b for b in at.button if b.label == "保存").click().run()  # the buttons are live for everyone
    settings_file = tmp_path / "settings.toml"
    if admin:
        assert settings_file.read_text(encoding="utf-8") == "[llm]\ntimeout_s = 30.0\n"
        [entry] = audit_log()
        assert entry["user"] == "alice@example.com" and entry["action"] == "save server settings"
        assert entry["written"] == {"llm.timeout_s": 30.0} and entry["file"] == str(settings_file)
    else:  # the guard behind the button refused, said so, and recorded the attempt
        assert not settings_file.exists()
        assert any("管理者だけが行えます" in e.value for e in at.error)
        [entry] = audit_log()
        assert entry["user"] == "bob@example.com" and entry["action"] == "refused: save server settings"
        next(b for b in at.button if b.label == "サーバー全体の設定を既定値に戻す").click().run()
        next(b for b in at.button if b.label == "サーバーの既定値として保存").click().run()
        assert [e["action"] for e in audit_log()][1:] == ["refused: reset server settings",
                                                          "refused: save server settings"]  # fmt: skip
        assert not settings_file.exists()


def forged(widget):
    """A widget a non-admin sees disabled, used anyway, as a request forged past the
    browser would (AppTest itself refuses to touch a disabled widget)."""
    if widget.disabled:
        widget.proto.disabled = False
    return widget


@pytest.fixture
def audit_log(app_env):
    """The audit log's entries written during the test (the demo cache is shared)."""
    path = load_settings().resolved_cache_dir / "logs" / "audit.log"
    seen = len(path.read_text(encoding="utf-8").splitlines()) if path.exists() else 0
    return lambda: [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[seen:]]


@pytest.fixture
def through_a_proxy(monkeypatch):
    """Every session arrives as through a reverse proxy (AppTest has no connection of its
    own to classify; the real proxy and browser are in test_proxy.py)."""
    monkeypatch.setattr(auth, "this_connection", lambda: access.Connection(served=True, local=True, proxied=True))


def test_a_visitor_through_a_proxy_is_not_the_admin_and_keeps_nothing_in_the_store(app_env, through_a_proxy):
    at = ask_app(start(), QUESTION)
    assert any(ANONYMOUS_NOTE in c.value for c in at.sidebar.caption)
    assert "c" not in at.query_params and stored_conversations("local") == []  # the tab holds it, nobody else
    assert any(QUESTION in text for text in markdown_texts(at))
    at.switch_page("pages/settings.py").run()
    assert at.number_input(key="setting:llm.timeout_s").disabled
    assert any("[auth]" in i.value and "[admin] password" in i.value for i in at.info)


def test_through_a_proxy_the_admin_password_unlocks_server_settings(app_env, audit_log, through_a_proxy, monkeypatch):
    monkeypatch.setenv("RAG_ADMIN_PASSWORD", "correct horse")
    at = start("pages/settings.py")
    at.text_input(key="admin-password").set_value("wrong")
    next(b for b in at.button if b.label == "管理者として変更する").click().run()
    assert any("パスワードが違います" in e.value for e in at.error)
    assert at.number_input(key="setting:llm.timeout_s").disabled
    at.text_input(key="admin-password").set_value("correct horse")
    next(b for b in at.button if b.label == "管理者として変更する").click().run()
    assert not at.number_input(key="setting:llm.timeout_s").disabled
    entries = audit_log()
    assert [e["action"] for e in entries] == ["admin password refused", "admin unlocked"]
    assert "correct horse" not in json.dumps(entries) and "wrong" not in json.dumps(entries)


@pytest.fixture
def postgres_history(app_env, monkeypatch):
    """A real PostgreSQL server as the history store; the test stops and starts it."""
    server = postgres_or_skip()
    server.start()
    monkeypatch.setenv("RAG_DB_URL", server.new_database())
    monkeypatch.setenv("RAG_DB_BUSY_TIMEOUT_S", "1")
    yield server
    server.stop()
    server.remove()


def test_questions_asked_while_postgresql_is_down_are_kept_and_written_when_it_returns(postgres_history):
    at = ask_app(start(), QUESTION)
    conversation_id = at.query_params["c"]
    postgres_history.stop()  # the database goes away mid-session: two questions are asked meanwhile
    ask_app(at, "ラオスの首都はどこか。")
    ask_app(at, "グスタフ・マーラーが作曲した交響曲はいくつあるか。")
    assert any("2 件のやりとりはまだ保存されていません" in w.value for w in at.warning)
    shown = [turn.answer for turn in at.session_state["chat"].turns]
    assert len(shown) == 3 and all(a.complete and a.text for a in shown)
    postgres_history.start()
    at.run()  # the next page run finds the database back
    assert not at.exception and not any("まだ保存されていません" in w.value for w in at.warning)
    assert [t.answer for t in at.session_state["chat"].turns] == shown  # the screen kept what it showed
    [stored] = stored_conversations("local")
    assert stored.id == conversation_id and [t.answer for t in stored.turns] == shown  # whole, not partial


def test_an_answer_asked_again_while_postgresql_is_down_is_replaced_not_doubled(postgres_history):
    """The old turn could not be deleted then: it is, once the database is back, before
    the new one is written; a reload shows the question once."""
    at = ask_app(start(), QUESTION)
    conversation_id = at.query_params["c"]
    postgres_history.stop()
    next(b for b in at.button if b.label == "最後の回答を再生成").click().run()
    assert not at.exception and len(at.session_state["chat"].turns) == 1
    postgres_history.start()
    at.run()
    [stored] = stored_conversations("local")
    assert stored.id == conversation_id and [t.answer.question for t in stored.turns] == [QUESTION]
    assert stored.turns[0].id == at.session_state["chat"].turns[0].id


def test_a_history_file_deleted_while_the_app_runs_is_said_and_the_conversation_written_again(app_env, tmp_path):
    at = ask_app(start(), QUESTION)
    for leftover in tmp_path.glob("history.sqlite3*"):  # RAG_DB_URL of isolated_env, with its WAL
        leftover.unlink()
    ask_app(at, "ラオスの首都はどこか。")
    assert any("実行中に削除されました" in w.value for w in at.warning)
    [stored] = stored_conversations("local")  # the new file holds the whole conversation on screen
    assert [t.answer.question for t in stored.turns] == [QUESTION, "ラオスの首都はどこか。"]
    assert all(t.answer.complete for t in stored.turns)
