"""Conversations kept per user in a SQL database (SQLite by default, PostgreSQL by URL).

The store lives with the UI: the RAG API stays stateless. ``tables`` maps the rows,
``migrations`` creates and upgrades them (Alembic, run when the store opens), ``store``
is the interface the pages use, ``export`` writes a conversation as Markdown or JSON.
"""
