"""The frame every page runs in: the command line's API URL, the page config, the login
and the navigation (``streamlit_app.py`` runs it; each page enters it with :func:`enter_page`).

Why pages enter the frame themselves: with a ``pages/`` folder beside the entry script
(the project's fixed layout), Streamlit serves its legacy multipage mode until some
session calls ``st.navigation`` ("as soon as any session executes st.navigation, your app
will ignore the pages/ directory"). Until then, opening a page's URL, such as ``/settings``
as a freshly started server's first request, runs ``pages/settings.py`` by itself: no
login asked, no ``--api-url``, the sidebar listing file names. :func:`enter_page` notices
that the frame is not around it and runs the whole app instead, which reaches the same
page through ``st.navigation``.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextvars import ContextVar

import streamlit as st

from ui.auth import login_pending, require_login

#: True while the frame runs a page (on that script run's thread).
_IN_FRAME: ContextVar[bool] = ContextVar("in_frame", default=False)


def use_api_url_argument() -> None:
    """``streamlit run streamlit_app.py -- --api-url URL`` (or RAG_API_URL) makes the UI a
    client of a RAG API; ``--api_mode URL`` is accepted as the seed spelled it."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--api-url", "--api_mode", dest="api_url")
    arguments, _ = parser.parse_known_args(sys.argv[1:])
    if arguments.api_url:
        os.environ["RAG_API_URL"] = arguments.api_url


def run_app() -> None:
    use_api_url_argument()
    st.set_page_config(page_title="日本語 Wikipedia QA", page_icon="📚", layout="wide")
    # st.navigation first, even before a login (hidden then): it ends Streamlit's legacy
    # pages/ mode for every session, and replaces that mode's list of file names.
    page = st.navigation(
        [
            st.Page("pages/chat.py", title="質問する", icon="💬", default=True),
            st.Page("pages/sources.py", title="出典を調べる", icon="🔎"),
            st.Page("pages/settings.py", title="設定", icon="⚙️"),
            st.Page("pages/status.py", title="状態", icon="📊"),
        ],
        position="hidden" if login_pending() else "sidebar",
    )
    require_login()
    inside = _IN_FRAME.set(True)
    try:
        page.run()
    finally:
        _IN_FRAME.reset(inside)


def enter_page() -> None:
    """First line of every page: outside the frame (Streamlit's legacy mode ran the page's
    script by itself), run the app instead, and end this run once it has."""
    if not _IN_FRAME.get():
        run_app()
        st.stop()
