import os
import re
import time

import pytest

from pipeline.store import Layout, LocalStore, NotFoundError, StoreError, newest, newest_first, open_store


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


def test_list_after_a_key_lists_only_what_sorts_after_it(store):
    for k in ("ev/0001.json", "ev/0002.json", "ev/0003.json", "other/0009"):
        store.put(k, b"x")
    assert store.list("ev", start_after=None) == store.list("ev") == ["ev/0001.json", "ev/0002.json", "ev/0003.json"]
    assert store.list("ev", start_after="ev/0001.json") == ["ev/0002.json", "ev/0003.json"]
    assert store.list("ev", start_after="ev/0002") == ["ev/0002.json", "ev/0003.json"]  # any string, not only a key
    assert store.list("ev", start_after="ev/0003.json") == []
    assert store.list("ev", start_after="a") == store.list("ev")  # before the prefix: all of it
    assert store.list(start_after="ev/0003.json") == ["other/0009"]


def test_s3_list_after_a_key_at_the_bucket_root(s3_bucket):
    st = open_store(f"s3://{s3_bucket}")
    for k in ("ev/1", "ev/2", "z"):
        st.put(k, b"x")
    assert st.list("ev", start_after="ev/1") == ["ev/2"] and st.list(start_after="ev/2") == ["z"]


def test_newest_takes_the_largest_value_and_of_equal_values_the_later_key(store):
    for k in ("d/step-2-b", "d/step-10-a", "d/step-10-c", "d/notes.txt"):
        store.put(k, b"x")

    def step(key: str) -> int | None:
        m = re.search(r"/step-(\d+)-", key)
        return int(m.group(1)) if m else None

    assert newest(store, "d", step) == (10, "d/step-10-c")
    assert newest_first(store, "d", step) == [(10, "d/step-10-c"), (10, "d/step-10-a"), (2, "d/step-2-b")]
    assert newest(store, "empty", step) is None and newest_first(store, "empty", step) == []


def test_layout_reads_back_the_names_it_writes():
    layout = Layout("camp")
    ckpt = layout.train_ckpt(3, 1200, "ab12cd34ef56")
    assert Layout.ckpt_file(f"{ckpt}/rank-1.pt") == (1200, ckpt) and Layout.ckpt_file(f"{ckpt}/commit.json") == (1200, ckpt)
    assert Layout.ckpt_commit(f"{ckpt}/commit.json") == 1200 and Layout.ckpt_commit(f"{ckpt}/rank-0.pt") is None
    assert Layout.ckpt_commit("camp/seeds/3/train/ckpt/step-00000100/commit.json") == 100  # before attempts had ids
    assert Layout.ttt_chunk(layout.ttt_state(3, "r", 0, 42, "ab12cd34ef56")) == 42
    assert Layout.ttt_chunk(f"{layout.shard_dir(3, 'r', 0)}/state-000007") == 7
    assert Layout.ttt_chunk(layout.segment(3, "r", 0, "ab12cd34ef56", 1)) is None


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


# --- S3 failures: one line naming the store URI (and key), never a credential --------------------

SECRET = "sEcReT-Do-NoT-LoG-7f3a9c"
KEY_ID = "AKIATESTKEYID0042"


def _closed_port() -> int:
    import socket

    with socket.socket() as s:  # bound then closed: nothing listens there, a connect is refused at once
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def aws_env(monkeypatch):
    """Recognisable credentials, and the retry/endpoint variables cleared; tests set what they need."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for k in ("AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def _one_clean_line(err: Exception, *needles: str) -> str:
    msg = str(err)
    assert "\n" not in msg, msg
    assert SECRET not in msg and KEY_ID not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


def test_s3_client_has_explicit_retries_and_timeouts(aws_env):
    from pipeline.store import S3_MAX_ATTEMPTS, S3Store

    cfg = S3Store("s3://bkt/p")._client.meta.config
    assert cfg.retries == {"mode": "standard", "total_max_attempts": S3_MAX_ATTEMPTS} and S3_MAX_ATTEMPTS >= 5
    assert cfg.connect_timeout >= 5 and cfg.read_timeout >= 60
    aws_env.setenv("AWS_MAX_ATTEMPTS", "2")  # the standard AWS variable still wins when set
    assert S3Store("s3://bkt/p")._client.meta.config.retries["total_max_attempts"] == 2


def test_s3_unreachable_endpoint(aws_env):
    import time

    from pipeline.store import S3Store

    endpoint = f"http://127.0.0.1:{_closed_port()}"
    aws_env.setenv("AWS_ENDPOINT_URL", endpoint)
    st = open_store("s3://bkt/camp")
    t = time.monotonic()
    with pytest.raises(StoreError) as e:
        st.check()
    assert time.monotonic() - t < 10  # check() retries a few times only
    _one_clean_line(e.value, "s3://bkt/camp:", endpoint, "cannot reach", "Connection refused")
    st = S3Store("s3://bkt/camp", attempts=2)
    calls = {
        "put": lambda: st.put("a/b", b"x"),
        "put_new": lambda: st.put_new("a/b", b"x"),
        "get": lambda: st.get("a/b"),
        "exists": lambda: st.exists("a/b"),
        "delete": lambda: st.delete("a/b"),
        "list": lambda: st.list("a"),
    }
    for name, call in calls.items():
        with pytest.raises(StoreError) as e:
            call()
        assert not isinstance(e.value, NotFoundError), name
        _one_clean_line(e.value, "s3://bkt/camp/a", endpoint, "cannot reach")


def test_s3_no_such_bucket(s3_server, aws_env):
    import uuid

    import boto3

    aws_env.setenv("AWS_ENDPOINT_URL", s3_server)
    bucket = f"missing-{uuid.uuid4().hex[:8]}"
    st = open_store(f"s3://{bucket}/camp")
    with pytest.raises(StoreError) as e:
        st.check()
    _one_clean_line(e.value, f"s3://{bucket}/camp:", "no such bucket")
    for call in (lambda: st.get("k"), lambda: st.put("k", b"x"), lambda: st.put_new("k", b"x"), lambda: st.list()):
        with pytest.raises(StoreError) as e:
            call()
        assert not isinstance(e.value, NotFoundError)
        _one_clean_line(e.value, f"s3://{bucket}/camp", "no such bucket")
    assert bucket not in {b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]}  # nothing was created


def test_s3_existing_bucket_checks_ok_and_missing_key_is_not_found(s3_bucket):
    st = open_store(f"s3://{s3_bucket}/p")
    st.check()
    with pytest.raises(NotFoundError):
        st.get("nope")
    assert not st.exists("nope")
    assert st.put_new("k", b"1") and not st.put_new("k", b"2") and st.get("k") == b"1"


@pytest.mark.parametrize("code", ["AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"])
def test_s3_access_denied_through_the_client(aws_env, code):
    """The real call path (botocore's Stubber answers for the server) maps a refusal to one line."""
    from botocore.stub import Stubber

    aws_env.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    st = open_store("s3://bkt/camp")
    with Stubber(st._client) as stub:
        stub.add_client_error("get_object", service_error_code=code, service_message=f"denied for {KEY_ID} {SECRET}", http_status_code=403)
        stub.add_client_error("put_object", service_error_code=code, http_status_code=403)
        with pytest.raises(StoreError) as e:
            st.get("seeds/1/train/manifest.json")
        _one_clean_line(e.value, "s3://bkt/camp/seeds/1/train/manifest.json:", "access denied", code)
        with pytest.raises(StoreError) as e:
            st.put_new("x", b"1")
        _one_clean_line(e.value, "s3://bkt/camp/x:", "access denied", code)


def test_s3_error_mapping_of_client_errors():
    from botocore.exceptions import ClientError, NoCredentialsError

    from pipeline.store import s3_error

    def client_error(code: str, status: int, op: str, **extra) -> ClientError:
        resp = {"Error": {"Code": code, "Message": f"msg\nwith {SECRET}", **extra}, "ResponseMetadata": {"HTTPStatusCode": status}}
        return ClientError(resp, op)

    uri, ep = "s3://bkt/camp", "https://user:pw@r2.example.com"
    signature = client_error("SignatureDoesNotMatch", 403, "PutObject", StringToSign=SECRET, AWSAccessKeyId=KEY_ID)
    msg = _one_clean_line(s3_error(uri, signature, "k", "put", ep), "s3://bkt/camp/k:", "access denied")
    assert "pw" not in msg
    msg = _one_clean_line(s3_error(uri, client_error("403", 403, "HeadBucket"), None, "head_bucket", ep), "s3://bkt/camp:", "access denied")
    msg = _one_clean_line(s3_error(uri, client_error("404", 404, "HeadBucket"), None, "head_bucket", ep), "no such bucket 'bkt'", "https://r2.example.com")
    assert "pw" not in msg
    _one_clean_line(s3_error(uri, client_error("NoSuchBucket", 404, "GetObject"), "k", "get", ep), "s3://bkt/camp/k:", "no such bucket")
    other = s3_error(uri, client_error("InternalError", 500, "GetObject"), "k", "get", ep)
    assert "\n" not in str(other) and "s3://bkt/camp/k: S3 get failed: InternalError (HTTP 500)" in str(other)
    _one_clean_line(s3_error(uri, NoCredentialsError(), None, "head_bucket", ep), "s3://bkt/camp:", "no usable AWS credentials")


def test_local_check(tmp_path):
    open_store(str(tmp_path / "new" / "deeper")).check()  # creatable
    LocalStore(tmp_path).check()
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(StoreError, match="not a directory"):
        LocalStore(tmp_path / "f").check()
    with pytest.raises(StoreError, match="is not a directory"):
        LocalStore(tmp_path / "f" / "sub").check()


def test_put_new_is_create_only(store):
    assert store.put_new("c/done.json", b"first") is True
    assert store.put_new("c/done.json", b"second") is False
    assert store.get("c/done.json") == b"first" and store.list("c") == ["c/done.json"]


def test_one_place_three_spellings_and_interrupted_writes_are_cleaned(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert open_store("store").uri == open_store("./store").uri == open_store("file://store").uri == str(tmp_path / "store")
    st = open_store("store")
    st.put("c/a", b"1")
    old, fresh = tmp_path / "store" / "c" / ".tmp-abc", tmp_path / "store" / "c" / ".tmp-def"
    old.write_bytes(b"half")  # a write killed before its rename, an hour ago
    os.utime(old, (time.time() - 3600,) * 2)
    fresh.write_bytes(b"half")  # a write in flight now (another attempt's): left alone
    assert st.list("c") == ["c/a"] and st.clean_tmp("c") == 1
    assert not old.exists() and fresh.exists()


def test_seed_commit_reads_the_commit_objects_off_a_listing():
    layout = Layout("c")
    assert layout.seed_commit(3, layout.manifest(3)) == ("", "manifest", None)
    assert layout.seed_commit(3, layout.plan(3, "sw")) == ("sw", "plan", None)
    assert layout.seed_commit(3, layout.result(3, "sw")) == ("sw", "result", None)
    assert layout.seed_commit(3, layout.estimate(3, "sw", "ab12")) == ("sw", "estimate", None)
    assert layout.seed_commit(3, layout.shard_done(3, "sw", 17)) == ("sw", "done", 17)
    for other in (layout.segment(3, "sw", 1, "a", 0), layout.train_ckpt(3, 5, "a") + "/commit.json", layout.manifest(4),
                  layout.shard_error(3, "sw", 2, "a"), layout.ttt_state(3, "sw", 0, 4, "a")):
        assert layout.seed_commit(3, other) is None, other
