"""open_store: URL forms and errors."""

from __future__ import annotations

import pytest

from gbatch_flows.store import Store, StoreError, open_store


def test_local_url_forms(tmp_path) -> None:
    plain = open_store(str(tmp_path / "t"))
    m = plain.commit(plain.load(), {"x": 1})
    via_file = open_store(f"file://{tmp_path / 't'}")
    assert isinstance(via_file, Store) and via_file.url == plain.url == str(tmp_path / "t")
    assert via_file.load() == m


def test_memory_urls_are_separate() -> None:
    a, b = open_store("memory://open-a"), open_store("memory://open-b")
    a.commit(a.load(), {"x": 1})
    assert b.load().generation == 0 and open_store("memory://open-a").load().get("x") == 1


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("gs://bucket/x", "unsupported store URL scheme 'gs'"),
        ("", "non-empty"),
        ("memory://", "need a name"),
        ("s3://", "no bucket"),
    ],
)
def test_bad_urls(url: str, words: str) -> None:
    with pytest.raises(StoreError, match=words):
        open_store(url)
