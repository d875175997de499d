"""Japanese Wikipedia question answering: `streamlit run streamlit_app.py`.

`streamlit run streamlit_app.py -- --api-url http://127.0.0.1:8000` (or RAG_API_URL)
makes this UI a client of a RAG API (`python -m pipeline.api`) instead of running
retrieval and the LLM itself; `--api_mode URL` is accepted as the seed spelled it.
Navigation and the login (when one is configured); each page is a short script under pages/ that composes pipeline/.
"""

import argparse
import os
import sys

import streamlit as st

from ui.auth import require_login

parser = argparse.ArgumentParser(add_help=False)
parser.add_argument("--api-url", "--api_mode", dest="api_url")
arguments, _ = parser.parse_known_args(sys.argv[1:])
if arguments.api_url:
    os.environ["RAG_API_URL"] = arguments.api_url

st.set_page_config(page_title="日本語 Wikipedia QA", page_icon="📚", layout="wide")
require_login()
navigation = st.navigation(
    [
        st.Page("pages/chat.py", title="質問する", icon="💬", default=True),
        st.Page("pages/sources.py", title="出典を調べる", icon="🔎"),
        st.Page("pages/settings.py", title="設定", icon="⚙️"),
        st.Page("pages/status.py", title="状態", icon="📊"),
    ]
)
navigation.run()
