"""Who is using the app, and whether they may change what every user shares.

Trust comes from a login or from the operator's own settings, never from the address
the server listens on (docs/security.md):

- With Streamlit's OIDC login configured (``[auth]`` in ``.streamlit/secrets.toml``),
  every page asks for a login; a user owns their conversations, and only the emails in
  ``admin.users`` (``RAG_ADMIN_USERS``) are admins.
- Without a login, the **local operator** — a browser on this machine connected to
  Streamlit directly, not through a proxy — is the admin and keeps today's single-user
  history (``admin.local_operator``, on by default). A session run in-process with no
  browser connection at all (Streamlit's ``AppTest``) is the operator too: whoever runs
  it already runs code on the host.
- Everyone else is an **anonymous visitor**: their conversation lives in their browser
  session only (never in the shared store, so no visitor sees another's), and they
  become an admin only by entering the admin password (``admin.password``), for that
  session.

A connection is direct and local by :mod:`pipeline.serving.access`'s rule: a loopback
peer, this machine's own name in ``Host`` and in the browser's ``Origin``, no proxy's
forwarding header (``X-Forwarded-For``, ``Forwarded``, ``X-Real-IP``). A reverse proxy on
this machine would otherwise make every visitor look local; one that passes on none of
these clues must be paired with ``admin.local_operator = false``, as must a host shared
with people who should not be admins (they reach 127.0.0.1 too, as does anyone with an
SSH tunnel to it).
"""

from __future__ import annotations

import hmac
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import streamlit as st
from streamlit import runtime

from pipeline.serving import access
from ui.markdown import escape_markdown

if TYPE_CHECKING:  # the entry script imports this module before the chat box is drawn
    from pipeline.settings.model import Settings

LOCAL_OWNER = "local"
#: A wrong admin password answers this much later, and the tries of every session take
#: turns: one guess a second for the whole server, however many sessions guess.
WRONG_PASSWORD_DELAY_S = 1.0
_PASSWORD_TRIES = threading.Lock()
#: When the next try's turn comes (time.monotonic()).
_NEXT_TRY = [0.0]
#: Longest wait for a turn: beyond it (many sessions guessing at once) a try is refused.
PASSWORD_QUEUE_S = 30.0
UNLOCKED = "admin_unlocked"
ANONYMOUS_OWNER = "anonymous_owner"
HOW_TO_ENABLE = (
    "有効にするには、`.streamlit/secrets.toml` に `[auth]`（OIDC ログイン）と管理者のメールアドレス"
    "（`RAG_ADMIN_USERS`）を設定するか、`[admin] password` を設定してください。"
)
ViewerKind = Literal["login", "operator", "anonymous"]


def classify(ip_address: object, headers: Iterable[tuple[str, str]]) -> access.Connection:
    """A served session's connection from what ``st.context`` says of it: its peer
    address (Streamlit gives None for a loopback peer) and its WebSocket handshake's
    headers, by :func:`pipeline.serving.access.classify`'s rule."""
    return access.classify(ip_address is None or access.is_loopback(str(ip_address)), headers, browser=True)


def this_connection() -> access.Connection:
    """This session's connection; a script run in this process with no server at all
    (Streamlit's AppTest mocks the runtime) has none."""
    if not runtime.exists() or type(runtime.get_instance()) is not runtime.Runtime:
        return access.Connection(served=False)
    return classify(st.context.ip_address, st.context.headers.items())


@dataclass(frozen=True)
class Viewer:
    #: Whose conversations these are: the login's email (or subject), "local" for the
    #: operator, a per-session name for an anonymous visitor.
    owner: str
    #: May change server-wide settings, restart the engine, start downloads.
    admin: bool
    kind: ViewerKind = "operator"
    #: Why not, in Japanese, when not.
    read_only_ja: str = ""
    #: Who is logged in, as the user menu says it (the login's email).
    shown_as: str = ""

    @property
    def logged_in(self) -> bool:
        return self.kind == "login"

    @property
    def keeps_history(self) -> bool:
        """Conversations go to the shared store (login, operator) or stay in the session."""
        return self.kind != "anonymous"


def login_configured() -> bool:
    """Streamlit marks ``st.user`` with ``is_logged_in`` when ``[auth]`` is configured."""
    return "is_logged_in" in st.user


def login_pending() -> bool:
    """A login is configured and this user has not logged in yet."""
    return login_configured() and not st.user.is_logged_in


def require_login() -> None:
    """With a login configured, stop every page until the user has logged in."""
    if login_pending():
        st.title("日本語 Wikipedia QA")
        st.write("このアプリを使うにはログインしてください。")
        st.button("ログイン", on_click=st.login, type="primary", icon="🔑")
        st.stop()


def current_viewer(settings: Settings) -> Viewer:
    if login_configured():
        email = str(st.user.get("email") or "")
        # a provider that says no (some say it as a string): not trusted
        verified = str(st.user.get("email_verified", True)).lower() not in {"false", "0"}
        # An address the provider has not verified may be anyone's: it names neither an
        # admin nor whose conversations these are. The provider's subject does, with the
        # issuer: a subject is unique only within its provider, and several may be set up.
        subject = str(st.user.get("sub") or "")
        issued = f"{st.user.get('iss') or ''}|{subject}" if subject else ""
        owner = email if email and verified else issued or anonymous_owner()
        admin = bool(email) and verified and email.lower() in {name.lower() for name in settings.admin.users}
        reason = "" if admin else "サーバー全体の設定は管理者だけが変更できます（表示のみ）。"
        return Viewer(owner=owner, admin=admin, kind="login", read_only_ja=reason, shown_as=email or owner)
    if settings.admin.local_operator and this_connection().direct_local:
        return Viewer(owner=LOCAL_OWNER, admin=True, kind="operator")
    owner = anonymous_owner()
    unlocked = bool(settings.admin.password.get_secret_value() and st.session_state.get(UNLOCKED))
    if unlocked:
        reason = ""
    elif settings.admin.password.get_secret_value():
        reason = "サーバー全体の設定を変更するには、管理者パスワードを入力してください。"
    else:
        reason = (
            "ログインも管理者パスワードも設定されておらず、この端末から直接開いてもいないため、"
            "サーバー全体の設定は表示のみです。" + HOW_TO_ENABLE
        )
    return Viewer(owner=owner, admin=unlocked, kind="anonymous", read_only_ja=reason)


def anonymous_owner() -> str:
    """This browser session's own name for what it keeps (nobody else's)."""
    return st.session_state.setdefault(ANONYMOUS_OWNER, f"anonymous:{uuid.uuid4().hex}")


def password_matches(given: str, expected: str) -> bool | None:
    """In constant time, in turn: each try, from whichever session, takes the next slot of
    :data:`WRONG_PASSWORD_DELAY_S` (first come, first served), and a wrong one answers at
    its slot's end. One guess a second for the whole server; the right password waits only
    for the tries queued before it, and when those would keep it more than
    :data:`PASSWORD_QUEUE_S` the try is refused at once (None), untried."""
    with _PASSWORD_TRIES:
        now = time.monotonic()
        turn = max(now, _NEXT_TRY[0])
        if turn - now > PASSWORD_QUEUE_S:
            return None
        _NEXT_TRY[0] = turn + WRONG_PASSWORD_DELAY_S
    time.sleep(turn - now)
    if hmac.compare_digest(given.encode(), expected.encode()):
        return True
    time.sleep(WRONG_PASSWORD_DELAY_S)
    return False


def admin_password_form(settings: Settings, viewer: Viewer) -> None:
    """The admin password prompt, for an anonymous visitor when a password is configured."""
    expected = settings.admin.password.get_secret_value()
    if viewer.kind != "anonymous" or viewer.admin or not expected:
        return
    with st.form("admin-password"):
        password = st.text_input("管理者パスワード", type="password", key="admin-password")
        if st.form_submit_button("管理者として変更する"):
            from pipeline.serving import audit

            matched = password_matches(password, expected)
            if matched:
                st.session_state[UNLOCKED] = True
                audit.record(settings, f"admin (password, {viewer.owner})", "admin unlocked")
                st.rerun()
            if matched is None:
                audit.record(settings, viewer.owner, "admin password not tried: too many tries at once")
                st.error(
                    "管理者パスワードの入力が集中しているため、確認できませんでした。しばらくしてからもう一度お試しください。"
                )
                return
            audit.record(settings, viewer.owner, "admin password refused")
            st.error("パスワードが違います。")


def user_menu(viewer: Viewer) -> None:
    """Who is logged in, and the logout button, in the sidebar."""
    if viewer.logged_in:
        with st.sidebar:
            st.caption(f"ログイン中: {escape_markdown(viewer.shown_as)}" + ("（管理者）" if viewer.admin else ""))
            st.button("ログアウト", on_click=st.logout, icon="🚪")
