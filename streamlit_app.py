"""Japanese Wikipedia question answering: `streamlit run streamlit_app.py`.

Navigation only; each page is a short script under pages/ that composes pipeline/.
"""

import streamlit as st

st.set_page_config(page_title="日本語 Wikipedia QA", page_icon="📚", layout="wide")
navigation = st.navigation(
    [
        st.Page("pages/chat.py", title="質問する", icon="💬", default=True),
        st.Page("pages/sources.py", title="出典を調べる", icon="🔎"),
        st.Page("pages/settings.py", title="設定", icon="⚙️"),
        st.Page("pages/status.py", title="状態", icon="📊"),
    ]
)
navigation.run()
