"""Where a model comes from, and what a user is told when it cannot be found."""
import pytest
from huggingface_hub import errors

from pagedserve.engine import loader


@pytest.fixture
def failing_hub(monkeypatch, tmp_path):
    """snapshot_download that finds nothing in the cache, then raises `error` online."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def install(error: BaseException) -> None:
        def snapshot_download(repo_id, local_files_only=False, **kwargs):
            if local_files_only:
                raise errors.LocalEntryNotFoundError("not cached")
            raise error
        monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    return install


def test_bundled_model_answers_to_its_served_name():
    assert loader.resolve_model_path("stories260K") == loader.default_model()


def test_missing_local_path_names_it():
    with pytest.raises(ValueError, match="'/no/such/dir' does not exist"):
        loader.resolve_model_path("/no/such/dir")


def test_offline_mode_says_how_to_get_the_model(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError) as e:
        loader.resolve_model_path("acme/not-cached")
    assert "HF_HUB_OFFLINE" in str(e.value)
    assert "huggingface-cli download acme/not-cached" in str(e.value)


def test_no_network_is_named(failing_hub):
    failing_hub(errors.LocalEntryNotFoundError("cannot reach the hub"))
    with pytest.raises(ValueError, match="cannot be reached.*huggingface-cli download acme/x"):
        loader.resolve_model_path("acme/x")


def test_gated_repo_asks_for_a_token(failing_hub):
    failing_hub(errors.GatedRepoError("gated", response=_response(401)))
    with pytest.raises(ValueError, match="gated repository.*HF_TOKEN"):
        loader.resolve_model_path("meta-llama/Meta-Llama-3-70B-Instruct")


def test_unknown_repo_is_named(failing_hub):
    failing_hub(errors.RepositoryNotFoundError("nope", response=_response(404)))
    with pytest.raises(ValueError, match="no repository of that name"):
        loader.resolve_model_path("acme/typo")


def _response(status: int):
    """A response of the HTTP library this huggingface_hub's errors are typed against."""
    try:
        import httpx2 as http  # huggingface_hub >= 1.x
    except ImportError:
        import httpx as http
    return http.Response(status, request=http.Request("GET", "https://huggingface.co/api/x"))
