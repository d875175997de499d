"""The conversation history in the UI: the process's store (``store``), the conversation
on screen and in the URL (``chat``: ``?c=<id>``, so a reload or a bookmark opens it
again), the sidebar to open, rename, delete, export and start conversations
(``sidebar``), and the feedback on answers (``feedback``).

History never stands between a user and an answer, and what the user saw is what is
stored: the conversation on screen is this session's; each turn is written to the store
as it is asked and as its answer streams, and a turn the store could not take (the
database away, its file deleted) stays pending and is written at the next page run
that finds the store working. Meanwhile the page says which turns are not saved yet.
The store's copy of a conversation never replaces turns on screen that it lacks.

An anonymous visitor's conversation (``Viewer.keeps_history`` false) is never stored:
it lives in their browser session only, so no visitor sees another's.
"""
