"""Japanese Wikipedia question answering: `streamlit run streamlit_app.py`."""

import streamlit as st

st.set_page_config(page_title="日本語 Wikipedia QA", page_icon="📚", layout="wide")
st.navigation([st.Page("pages/search.py", title="検索", icon="🔎", default=True)]).run()
