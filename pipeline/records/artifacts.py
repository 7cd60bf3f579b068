"""Eval-only campaigns (`artifacts: {seed: path}`): each seed's existing artifact stands in for its
training (docs/recipes.md: Eval-only campaigns).

The driver (and `pipeline eval`) imports each artifact into the store once, as the seed's committed
training: the file under `seeds/<seed>/train/model-imported-<sha256[:12]>.ptz` and a manifest naming
it, its sha256 and where it came from, written create-only and last, as a training commits. From
there the evals read it like any trained seed's, on any node, and the campaign fingerprint holds
the artifact's content digest rather than its path (pipeline/records/campaign.py). So an artifact is loaded
as the evals load it (workers/adapters.py, imported only for that check) before anything is
written: a committed artifact no eval can load would hold the campaign to its digest for good.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pipeline.spec import CampaignSpec
from pipeline.store import Layout, Store

IMPORT_MANIFEST_VERSION = 1


def check_artifacts(spec: CampaignSpec, source: str) -> None:
    """Every artifact is a local file the evals can load (one line naming the field), before any write."""
    for seed, path in sorted((spec.artifacts or {}).items()):
        if "://" in path:
            raise ValueError(f"{source}: artifacts.{seed}: {path}: give a local file (it is copied into the store)")
        if not Path(path).is_file():
            raise FileNotFoundError(f"{source}: artifacts.{seed}: {path} does not exist")
        try:
            blob = Path(path).read_bytes()
        except OSError as e:
            raise FileNotFoundError(f"{source}: artifacts.{seed}: {path}: cannot read ({e.strerror})") from None
        _check_loads(spec, blob, f"{source}: artifacts.{seed}: {path}")


def _check_loads(spec: CampaignSpec, blob: bytes, where: str) -> None:
    from workers.adapters import load_eval_model  # torch: only where an artifact is checked

    try:
        load_eval_model(blob, where, hashlib.sha256(blob).hexdigest(), spec)
    except ValueError:
        raise  # the loader's own line, naming `where`
    except Exception as e:  # noqa: BLE001 - a model adapter is the user's code: whatever it raises is one line
        raise ValueError(f"{where}: the evals cannot load it: {type(e).__name__}: {' '.join(str(e).split())[:200]}") from None


def imported_name(digest: str) -> str:
    return f"model-imported-{digest[:12]}.ptz"


def import_artifacts(spec: CampaignSpec, store: Store, log=lambda m: None) -> list[int]:
    """Commit each seed's artifact that is not in the store yet; the seeds imported now. A manifest
    already there (an earlier run, another driver) stands: the fingerprint check before this
    guarantees the same content."""
    layout, done = Layout(spec.name), []
    for seed, path in sorted((spec.artifacts or {}).items()):
        if store.exists(layout.manifest(seed)):
            continue
        try:
            blob = Path(path).read_bytes()
        except OSError as e:
            raise FileNotFoundError(f"artifacts.{seed}: {path}: cannot read ({e.strerror})") from None
        digest = hashlib.sha256(blob).hexdigest()
        name = imported_name(digest)
        store.put(f"{layout.train_dir(seed)}/{name}", blob)  # same content, same name: idempotent
        manifest = {
            "version": IMPORT_MANIFEST_VERSION,
            "seed": seed,
            "sha256": digest,
            "bytes": len(blob),
            "artifact": name,
            "imported_from": path,
        }
        if store.put_new_json(layout.manifest(seed), manifest):  # the commit object, last
            done.append(seed)
            log(f"imported seed {seed}'s artifact {path} ({len(blob):,} bytes, sha256 {digest[:12]})")
    return done
