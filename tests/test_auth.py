"""Who counts as the local operator, from what Streamlit says of a session's connection
(the whole app behind a real proxy is tests/test_proxy.py)."""

import threading
import time

import pytest

from pipeline.serving import access
from ui import auth
from ui.auth import classify

LOCAL_PAGE = {"Origin": "http://localhost:8501"}


@pytest.mark.parametrize(
    ("peer", "headers", "local", "proxied"),
    [
        (None, {"Host": "127.0.0.1:8501", **LOCAL_PAGE}, True, False),  # a browser on this machine, directly
        (None, {"Host": "localhost:8501", "Origin": "http://localhost:8501"}, True, False),
        (None, {"Host": "[::1]:8501", "Origin": "http://[::1]:8501"}, True, False),
        (None, {"Host": "127.0.0.1", "X-Forwarded-For": "203.0.113.7", **LOCAL_PAGE}, True, True),  # nginx here
        (None, {"Host": "qa.example.com", "Forwarded": "for=203.0.113.7"}, False, True),
        (None, {"Host": "127.0.0.1", "X-Real-IP": "203.0.113.7", **LOCAL_PAGE}, True, True),
        (None, {"Host": "attacker.example:8501", **LOCAL_PAGE}, False, False),  # a page that rebound its name
        ("203.0.113.7", {"Host": "localhost", **LOCAL_PAGE}, False, False),  # another machine, bound to 0.0.0.0
        ("::1", {"Host": "localhost", **LOCAL_PAGE}, True, False),
        (None, {}, False, False),  # the browser went away: no handshake left to trust
        # nginx with only proxy_pass: Host is the upstream's, no X-Forwarded-For, but the
        # browser's Origin is the site's public name
        (None, {"Host": "127.0.0.1:8501", "Origin": "https://qa.example.com"}, False, False),
        (None, {"Host": "127.0.0.1:8501", "Origin": "null"}, False, False),  # a sandboxed or file page
        (None, {"Host": "127.0.0.1:8501"}, False, False),  # no Origin: no browser's handshake
    ],
)
def test_only_a_direct_browser_on_this_machine_is_the_local_operator(peer, headers, local, proxied):
    connection = classify(peer, headers.items())
    assert connection.served and (connection.local, connection.proxied) == (local, proxied)
    assert connection.direct_local is (local and not proxied)


def test_wrong_admin_passwords_wait_their_turn_across_sessions(monkeypatch):
    """Guessing from many sessions at once is no faster than from one, and the right
    password waits only for the tries before it, first come, first served."""
    delay = 0.5
    monkeypatch.setattr(auth, "WRONG_PASSWORD_DELAY_S", delay)
    answered: dict[str, float] = {}
    started = time.monotonic()

    def attempt(password: str) -> None:
        auth.password_matches(password, "right")
        answered[password] = time.monotonic() - started

    guesses = [threading.Thread(target=attempt, args=(f"guess-{n}",)) for n in range(4)]
    for guess in guesses:
        guess.start()
        time.sleep(0.01)  # in this order
    attempt("right")
    for guess in guesses:
        guess.join()
    assert max(answered[f"guess-{n}"] for n in range(4)) >= 4 * delay  # one after another
    assert 4 * delay - 0.05 <= answered["right"] < 5 * delay - 0.1  # at its turn, not a delay after it


def test_a_program_on_this_machine_needs_no_origin_but_a_browser_does():
    """The API's rule: curl sends no Origin; a browser's WebSocket handshake always does."""
    assert access.classify(True, [("Host", "127.0.0.1:8000")]).direct_local
    assert not access.classify(True, [("Host", "127.0.0.1:8501")], browser=True).direct_local
    assert not access.classify(True, [("Host", "127.0.0.1:8000"), ("Origin", "https://qa.example.com")]).direct_local
