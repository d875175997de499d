"""The floor under `python -m bench.startup`: Streamlit alone with this project's
.streamlit/config.toml, the chat page's title and chat box, and the question echoed as a
"search-only" answer, without the library. The product's start is this plus its own work."""

import streamlit as st

st.title("日本語 Wikipedia に質問する")
if question := st.chat_input("質問を入力してください"):
    with st.chat_message("assistant"):
        st.text(f"{question}（検索のみ）")
