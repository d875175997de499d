"""Who is using the app, and whether they may change what every user shares.

With Streamlit's OIDC login configured (``[auth]`` in ``.streamlit/secrets.toml``),
every page asks for a login; a user owns their conversations, and only the emails in
``admin.users`` (``RAG_ADMIN_USERS``) may change server-wide settings, restart the
engine or start downloads. Without a login the app is single-user: on 127.0.0.1 that
user is the admin, as before; bound to another address, server-wide settings are
read-only unless the admin password (a secret) is entered on the settings page.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING

import streamlit as st

from ui.markdown import escape_markdown

if TYPE_CHECKING:  # the entry script imports this module before the chat box is drawn
    from pipeline.core.settings import Settings

LOCAL_OWNER = "local"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
UNLOCKED = "admin_unlocked"
HOW_TO_ENABLE = (
    "有効にするには、`.streamlit/secrets.toml` に `[auth]`（OIDC ログイン）と管理者のメールアドレス"
    "（`RAG_ADMIN_USERS`）を設定するか、`[admin] password` を設定してください。"
)


@dataclass(frozen=True)
class Viewer:
    #: Whose conversations these are: the login's email (or subject), else "local".
    owner: str
    #: May change server-wide settings, restart the engine, start downloads.
    admin: bool
    #: Why not, in Japanese, when not.
    read_only_ja: str = ""
    logged_in: bool = False


def login_configured() -> bool:
    """Streamlit marks ``st.user`` with ``is_logged_in`` when ``[auth]`` is configured."""
    return "is_logged_in" in st.user


def serves_loopback_only() -> bool:
    return (st.get_option("server.address") or "") in LOOPBACK


def require_login() -> None:
    """With a login configured, stop every page until the user has logged in."""
    if login_configured() and not st.user.is_logged_in:
        st.title("日本語 Wikipedia QA")
        st.write("このアプリを使うにはログインしてください。")
        st.button("ログイン", on_click=st.login, type="primary", icon="🔑")
        st.stop()


def current_viewer(settings: Settings) -> Viewer:
    if login_configured():
        owner = str(st.user.get("email") or st.user.get("sub") or "")
        admins = {name.lower() for name in settings.admin.users}
        admin = owner.lower() in admins
        reason = "" if admin else "サーバー全体の設定は管理者だけが変更できます（表示のみ）。"
        return Viewer(owner=owner, admin=admin, read_only_ja=reason, logged_in=True)
    if serves_loopback_only():
        return Viewer(owner=LOCAL_OWNER, admin=True)
    if settings.admin.password.get_secret_value() and st.session_state.get(UNLOCKED):
        return Viewer(owner=LOCAL_OWNER, admin=True)
    if settings.admin.password.get_secret_value():
        reason = "サーバー全体の設定を変更するには、管理者パスワードを入力してください。"
    else:
        reason = (
            "このサーバーは 127.0.0.1 以外でも公開されていて、ログインも管理者パスワードも設定されていないため、"
            "サーバー全体の設定は表示のみです。" + HOW_TO_ENABLE
        )
    return Viewer(owner=LOCAL_OWNER, admin=False, read_only_ja=reason)


def admin_password_form(settings: Settings) -> None:
    """The admin password prompt (no login, not loopback-only, a password configured)."""
    expected = settings.admin.password.get_secret_value()
    if login_configured() or serves_loopback_only() or not expected or st.session_state.get(UNLOCKED):
        return
    with st.form("admin-password"):
        password = st.text_input("管理者パスワード", type="password", key="admin-password")
        if st.form_submit_button("管理者として変更する"):
            from pipeline.core import audit

            if hmac.compare_digest(password.encode(), expected.encode()):
                st.session_state[UNLOCKED] = True
                audit.record(settings, "admin (password)", "admin unlocked")
                st.rerun()
            audit.record(settings, "anonymous", "admin password refused")
            st.error("パスワードが違います。")


def user_menu(viewer: Viewer) -> None:
    """Who is logged in, and the logout button, in the sidebar."""
    if viewer.logged_in:
        with st.sidebar:
            st.caption(f"ログイン中: {escape_markdown(viewer.owner)}" + ("（管理者）" if viewer.admin else ""))
            st.button("ログアウト", on_click=st.logout, icon="🚪")
