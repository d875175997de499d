"""A request's settings in the API: validated from the server's, once per combination of
values, and made again from the new server settings after a save."""

import pytest

from pipeline.api.errors import RequestError
from pipeline.api.service import VALIDATED_SETTINGS_KEPT, ApiService
from pipeline.settings.sources import load_settings, with_values


@pytest.fixture
def service(isolated_env):
    return ApiService(load_settings(overrides={"generation": {"max_new_tokens": 512}}))


def test_the_same_values_give_the_settings_validated_the_first_time(service):
    first = service.request_settings({"max_tokens": 200, "temperature": None}, {"retrieval.top_k": 3})
    assert first.generation.max_new_tokens == 200 and first.retrieval.top_k == 3
    assert service.request_settings({"max_tokens": 200}, {"retrieval.top_k": 3}) is first
    other = service.request_settings({"max_tokens": 100}, {"retrieval.top_k": 3})
    assert other.generation.max_new_tokens == 100 and other is not first
    assert service.request_settings({}, {}) is service.settings


def test_invalid_values_are_refused_every_time(service):
    for _ in range(2):
        with pytest.raises(RequestError) as refused:
            service.request_settings({"top_k": 0}, {"retrieval.top_k": 0})
        assert refused.value.status == 422


def test_a_save_makes_the_requests_settings_again_from_the_new_server_settings(service):
    before = service.request_settings({"max_tokens": 200}, {})
    service.runtime.reload(with_values(service.settings, {"retrieval.top_k": 7}))
    after = service.request_settings({"max_tokens": 200}, {})
    assert after is not before and after.retrieval.top_k == 7 and after.generation.max_new_tokens == 200


def test_the_kept_settings_are_bounded_and_the_least_recently_asked_for_go_first(service):
    often = service.request_settings({"max_tokens": 1}, {})
    for tokens in range(2, VALIDATED_SETTINGS_KEPT + 10):
        assert service.request_settings({"max_tokens": tokens}, {}).generation.max_new_tokens == tokens
        assert service.request_settings({"max_tokens": 1}, {}) is often  # asked for all along: kept
    assert len(service._validated[1]) == VALIDATED_SETTINGS_KEPT
    assert service.request_settings({"max_tokens": 2}, {}).generation.max_new_tokens == 2  # made again
