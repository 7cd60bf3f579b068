import pytest

from pipeline.store import LocalStore, NotFoundError, StoreError, open_store


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(str(tmp_path / "st"))
    bucket = request.getfixturevalue("s3_bucket")
    return open_store(f"s3://{bucket}/some/prefix")


def test_put_get_exists_list(store):
    assert store.list() == [] and not store.exists("a/b.json")
    store.put("a/b.json", b"1")
    store.put("a/bc/d", b"2")
    store.put("z", b"3")
    assert store.get("a/b.json") == b"1" and store.exists("a/bc/d")
    assert store.list() == ["a/b.json", "a/bc/d", "z"]
    assert store.list("a/bc") == ["a/bc/d"]  # a directory, not a name prefix
    assert store.list("a/b") == []
    store.put("z", b"whole new object")
    assert store.get("z") == b"whole new object"
    store.delete("z")
    store.delete("z")  # already gone is fine
    assert not store.exists("z") and store.list() == ["a/b.json", "a/bc/d"]


def test_json_and_missing(store):
    store.put_json("x/obj.json", {"version": 1, "v": 0.1 + 0.2})
    assert store.get_json("x/obj.json") == {"version": 1, "v": 0.1 + 0.2}
    with pytest.raises(NotFoundError, match="missing/key: not found"):
        store.get("missing/key")
    store.put("x/bad.json", b"{no")
    with pytest.raises(StoreError, match="bad.json: not valid JSON"):
        store.get_json("x/bad.json")


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "a/./b", "a/.tmp-x"])
def test_bad_keys(store, key):
    with pytest.raises(StoreError):
        store.put(key, b"x")


def test_local_write_is_atomic_and_leaves_no_temp(tmp_path, monkeypatch):
    st = LocalStore(tmp_path)
    st.put("k", b"old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        st.put("k", b"new")
    monkeypatch.undo()
    assert st.get("k") == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["k"]
    (tmp_path / ".tmp-abandoned").write_bytes(b"half")  # a writer killed mid-put
    assert st.list() == ["k"]


def test_open_store_schemes(tmp_path):
    assert isinstance(open_store(f"file://{tmp_path}"), LocalStore)
    with pytest.raises(StoreError, match="unsupported store scheme"):
        open_store("gs://bucket/x")
    with pytest.raises(StoreError, match="needs a bucket"):
        open_store("s3://")
