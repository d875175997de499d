"""Japanese Wikipedia question answering: `streamlit run streamlit_app.py`.

`streamlit run streamlit_app.py -- --api-url http://127.0.0.1:8000` (or RAG_API_URL)
makes this UI a client of a RAG API (`python -m pipeline.api`) instead of running
retrieval and the LLM itself; `--api_mode URL` is accepted as the seed spelled it.
The frame (that argument, the login, the navigation) is `ui/frame.py`; each page is a
short script under pages/ that composes pipeline/.
"""

from ui.frame import run_app

run_app()
