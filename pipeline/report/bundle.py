"""`pipeline report --bundle`: one tarball with what a maintainer needs to rerun a record.

In it: the campaign file (when given) and the spec as the store resolved it (campaign.json: data by
content digest), report.md/json, submission.json and the pictures, every training manifest and
eval result, plan and shard commit (their provenance: versions, GPUs, driver, env, command), the
package lists and `nvidia-smi -q` the attempts stored in `env/`, and `pip freeze` plus
`nvidia-smi -q` (where there is a GPU) of the machine that wrote the bundle, under `here/`.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from pipeline.spec import CampaignSpec
from pipeline.store import Layout, Store

README = """Reproduction bundle of campaign {name} ({when}).

report.md                     the report; report.json its numbers; submission.json the record's fields
campaign-file.yaml            the campaign file given to `pipeline report` (absent for STORE/NAME)
store/campaign.json           the spec as run, with the data's content digests (shards, tokenizer)
store/runs/                   the spec each driver run was given
store/seeds/*/train/manifest.json   artifact sha256 and bytes, training stats, provenance of its attempt
store/seeds/*/eval/*/              plan.json, result.json, shard-*/done.json (each with its attempt's provenance)
store/env/packages-*.txt      pip freeze of each software stack the attempts ran on (named in their provenance)
store/env/nvidia-smi-*.txt    nvidia-smi -q of each GPU attempt
here/                         pip freeze and nvidia-smi -q of the machine that wrote this bundle

To rerun: install the packages of store/env/packages-*.txt (torch with the CUDA build named in the
provenance), check out the code whose sha256 the provenance gives, prepare data whose shards hash to
the digests in store/campaign.json, and run the command the manifests record (`pipeline run FILE`).
"""


def _add(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(mtime), 0o644
    tar.addfile(info, io.BytesIO(data))


def _here() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    try:
        freeze = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, timeout=120)
        if freeze.returncode == 0:
            out["here/pip-freeze.txt"] = freeze.stdout
    except (OSError, subprocess.SubprocessError):
        pass
    if "here/pip-freeze.txt" not in out:  # a venv without pip: the same list from the package metadata
        from workers.provenance import packages

        out["here/pip-freeze.txt"] = packages().encode()
    try:
        smi = subprocess.run(["nvidia-smi", "-q"], capture_output=True, timeout=30)
        if smi.returncode == 0:
            out["here/nvidia-smi-q.txt"] = smi.stdout
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def _store_keys(spec: CampaignSpec, store: Store) -> list[str]:
    layout = Layout(spec.name)
    keys = [layout.campaign_json] if store.exists(layout.campaign_json) else []
    keys += store.list(f"{layout.root}/runs") + store.list(f"{layout.root}/env")
    for seed in spec.seeds:
        if store.exists(layout.manifest(seed)):
            keys.append(layout.manifest(seed))
        for k in store.list(f"{layout.root}/seeds/{seed}/eval"):
            name = k.rsplit("/", 1)[1]
            if name in ("plan.json", "result.json", "done.json") or (name.startswith("estimate-") and name.endswith(".json")):
                keys.append(k)
    return keys


def write_bundle(spec: CampaignSpec, store: Store, out_dir: Path, files: list[Path], campaign_file: str | None) -> Path:
    """`files`: what the report wrote (report.md, report.json, submission.json, PNGs)."""
    now = time.time()
    path = out_dir / f"bundle-{spec.name}.tar.gz"
    tmp = path.with_suffix(".tmp")
    root = f"{spec.name}-bundle"
    with tarfile.open(tmp, "w:gz") as tar:
        _add(tar, f"{root}/README.txt", README.format(name=spec.name, when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(now))).encode(), now)
        for f in files:
            _add(tar, f"{root}/{f.name}", f.read_bytes(), now)
        if campaign_file is not None:
            _add(tar, f"{root}/campaign-file.yaml", Path(campaign_file).read_bytes(), now)
        prefix = Layout(spec.name).root + "/"
        for key in _store_keys(spec, store):
            _add(tar, f"{root}/store/{key[len(prefix):]}", store.get(key), now)
        for name, data in _here().items():
            _add(tar, f"{root}/{name}", data, now)
    tmp.replace(path)
    return path
