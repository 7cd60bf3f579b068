"""The campaign identity follows the data's content, not where it is mounted; digests are cached."""

import json
import os
import shutil
from pathlib import Path

import pytest

from pipeline.records import campaign
from pipeline.records.campaign import CampaignChanged, check_campaign, content_fingerprint_dict
from pipeline.store import Layout, StoreError, open_store
from tests.conftest import make_spec

OLD_NS = 1_600_000_000 * 10**9  # long ago: the cache trusts a file only once it has held still


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(d))
    return d


@pytest.fixture
def hashed(monkeypatch) -> list[str]:
    """The names of the files actually read and hashed (cache misses), in order."""
    calls: list[str] = []
    real = campaign._sha256_file

    def counting(path: Path) -> str:
        calls.append(path.name)
        return real(path)

    monkeypatch.setattr(campaign, "_sha256_file", counting)
    return calls


def copy_data(data_dir: Path, to: Path, only: str = "*") -> Path:
    """A private copy of the shared data (tests change bytes), with old mtimes so it is cacheable."""
    to.mkdir(parents=True)
    for f in sorted(data_dir.glob(only)) + [data_dir / "tokenizer.model"]:
        shutil.copyfile(f, to / f.name)
        os.utime(to / f.name, ns=(OLD_NS, OLD_NS))
    return to


def spec_for(data: Path, store: Path, **overrides):
    return make_spec(data, str(store), data={"shards": str(data), "tokenizer": str(data / "tokenizer.model")}, **overrides)


def first_val(data: Path) -> Path:
    return sorted(data.glob("fineweb_val_*.bin"))[0]


def test_same_content_elsewhere_is_the_same_campaign(data_dir, tmp_path):
    store = tmp_path / "store"
    a, b = copy_data(data_dir, tmp_path / "a"), copy_data(data_dir, tmp_path / "b")
    assert check_campaign(spec_for(a, store), open_store(str(store))) is False
    assert check_campaign(spec_for(b, store), open_store(str(store))) is True
    record = json.loads((store / "t" / "campaign.json").read_text())
    assert record["version"] == 2
    assert str(a) not in json.dumps(record)  # no path in the identity
    assert len(record["spec"]["data"]["shards"]["val"]) == len(list(a.glob("fineweb_val_*.bin")))


def test_one_changed_byte_in_a_val_shard_is_refused(data_dir, tmp_path):
    store = tmp_path / "store"
    data = copy_data(data_dir, tmp_path / "d")
    spec = spec_for(data, store)
    check_campaign(spec, open_store(str(store)))
    before = (store / "t" / "campaign.json").read_bytes()
    val = first_val(data)
    size = val.stat().st_size
    with open(val, "r+b") as f:  # same path, same size, same inode
        f.seek(size - 1)
        last = f.read(1)
        f.seek(size - 1)
        f.write(bytes([last[0] ^ 1]))
    with pytest.raises(CampaignChanged, match=r"\(changed: data\.shards\); use a new name or a new store$"):
        check_campaign(spec, open_store(str(store)))
    assert (store / "t" / "campaign.json").read_bytes() == before


def test_changed_tokenizer_is_refused(data_dir, tmp_path):
    store = tmp_path / "store"
    data = copy_data(data_dir, tmp_path / "d")
    spec = spec_for(data, store)
    check_campaign(spec, open_store(str(store)))
    with open(data / "tokenizer.model", "ab") as f:
        f.write(b"\0")
    with pytest.raises(CampaignChanged, match=r"changed: data\.tokenizer\)"):
        check_campaign(spec, open_store(str(store)))


def test_model_change_is_still_refused(data_dir, tmp_path):
    store = tmp_path / "store"
    data = copy_data(data_dir, tmp_path / "d")
    check_campaign(spec_for(data, store), open_store(str(store)))
    with pytest.raises(CampaignChanged, match=r"changed: model\.num_layers\)"):
        check_campaign(spec_for(data, store, model={"num_layers": 3}), open_store(str(store)))


def test_second_run_reads_digests_from_the_cache_and_a_touched_file_is_rehashed(data_dir, tmp_path, cache_dir, hashed):
    data = copy_data(data_dir, tmp_path / "d")
    files = sorted(f.name for f in data.iterdir())
    spec = spec_for(data, tmp_path / "store")
    first = content_fingerprint_dict(spec)
    assert sorted(hashed) == files
    cached = json.loads((cache_dir / "digests.json").read_text())
    assert cached["version"] == 1
    assert sorted(Path(k).name for k in cached["files"]) == files

    hashed.clear()
    assert content_fingerprint_dict(spec) == first
    assert hashed == []

    val = first_val(data)
    os.utime(val, ns=(OLD_NS + 1, OLD_NS + 1))
    assert content_fingerprint_dict(spec) == first
    assert hashed == [val.name]
    entry = json.loads((cache_dir / "digests.json").read_text())["files"][os.path.realpath(val)]
    assert entry["mtime_ns"] == OLD_NS + 1


def test_a_file_written_just_now_is_hashed_but_not_trusted_from_the_cache(data_dir, tmp_path, hashed):
    data = copy_data(data_dir, tmp_path / "d")
    val = first_val(data)
    os.utime(val)  # now: a same-size rewrite within the same mtime tick would go unseen
    spec = spec_for(data, tmp_path / "store")
    content_fingerprint_dict(spec)
    hashed.clear()
    content_fingerprint_dict(spec)
    assert hashed == [val.name]


def test_a_corrupt_or_unknown_cache_is_ignored_and_rewritten(data_dir, tmp_path, cache_dir, hashed):
    data = copy_data(data_dir, tmp_path / "d")
    spec = spec_for(data, tmp_path / "store")
    expected = content_fingerprint_dict(spec)
    cache = cache_dir / "digests.json"
    for junk in ("{not json", json.dumps({"version": 99, "files": {}}), json.dumps([1, 2])):
        cache.write_text(junk)
        hashed.clear()
        assert content_fingerprint_dict(spec) == expected
        assert len(hashed) == len(list(data.iterdir()))
        assert json.loads(cache.read_text())["version"] == 1


def test_a_cache_that_cannot_be_written_is_not_an_error(data_dir, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(blocker / "cache"))  # under a file: mkdir fails
    data = copy_data(data_dir, tmp_path / "d")
    assert check_campaign(spec_for(data, tmp_path / "store"), open_store(str(tmp_path / "store"))) is False


def test_eval_only_data_without_train_shards(data_dir, tmp_path):
    data = copy_data(data_dir, tmp_path / "d", only="fineweb_val_*.bin")
    shards = content_fingerprint_dict(spec_for(data, tmp_path / "store"))["data"]["shards"]
    assert shards["train"] == [] and len(shards["val"]) >= 1


def test_data_that_cannot_be_hashed_is_a_one_line_error(data_dir, tmp_path):
    store = open_store(str(tmp_path / "store"))
    remote = make_spec(data_dir, store.uri, data={"shards": "s3://bucket/shards"})
    with pytest.raises(ValueError, match=r"^data\.shards: s3://bucket/shards: a remote path cannot be hashed"):
        check_campaign(remote, store)
    remote_tok = make_spec(data_dir, store.uri, data={"tokenizer": "s3://bucket/t.model"})
    with pytest.raises(ValueError, match=r"^data\.tokenizer: s3://bucket/t\.model: a remote path"):
        check_campaign(remote_tok, store)
    missing = make_spec(data_dir, store.uri, data={"tokenizer": str(tmp_path / "nope.model")})
    with pytest.raises(ValueError, match=r"^data\.tokenizer: .*nope\.model: cannot read"):
        check_campaign(missing, store)
    assert not store.exists(Layout("t").campaign_json)


def test_a_v1_campaign_is_compared_by_paths_and_never_rewritten(data_dir, tmp_path):
    spec = make_spec(data_dir, str(tmp_path / "store"))
    store = open_store(spec.store)
    key = Layout("t").campaign_json
    store.put_json(key, {"version": 1, "fingerprint": spec.fingerprint(), "spec": spec.fingerprint_dict()})
    before = store.get(key)
    assert check_campaign(spec, store) is True
    assert check_campaign(make_spec(data_dir, spec.store, cluster={"cpu_threads": 2}), store) is True
    with pytest.raises(CampaignChanged, match=r"changed: model\.num_layers\)"):
        check_campaign(make_spec(data_dir, spec.store, model={"num_layers": 3}), store)
    moved = copy_data(data_dir, tmp_path / "moved")
    with pytest.raises(CampaignChanged, match=r"changed: data\.shards, data\.tokenizer\)"):
        check_campaign(spec_for(moved, tmp_path / "store"), store)  # v1 knows only the paths
    assert store.get(key) == before


def test_an_unknown_campaign_version_names_the_file(data_dir, tmp_path):
    spec = make_spec(data_dir, str(tmp_path / "store"))
    store = open_store(spec.store)
    store.put_json(Layout("t").campaign_json, {"version": 7})
    with pytest.raises(StoreError, match=r"^\S+/t/campaign\.json: unknown campaign\.json version 7 "):
        check_campaign(spec, store)


def test_an_s3_store_holds_the_same_identity(data_dir, tmp_path, s3_bucket):
    store = open_store(f"s3://{s3_bucket}/campaigns")
    a, b = copy_data(data_dir, tmp_path / "a"), copy_data(data_dir, tmp_path / "b")
    assert check_campaign(spec_for(a, tmp_path / "unused"), store) is False
    assert check_campaign(spec_for(b, tmp_path / "unused"), store) is True
    assert store.get_json(Layout("t").campaign_json)["version"] == 2
