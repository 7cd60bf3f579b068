"""The campaign file: seeds × a train recipe × eval recipes, its fingerprint, and parse/load with
errors of one line that name the file and the field."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from pipeline.spec.base import Name, SPEC_VERSION, SpecError, Strict, later_defaults, later
from pipeline.spec.cluster import BudgetUsd, ClusterSpec, PodConfig
from pipeline.spec.data import DataSpec
from pipeline.spec.evals import EvalRecipe
from pipeline.spec.train import ModelConfig, ScriptTrain, TrainRecipe, TrainSpec


class CampaignSpec(Strict):
    version: Literal[1] = SPEC_VERSION
    name: Name
    store: str = Field("./store", description="local path, file:// or s3://bucket/prefix")
    seeds: list[int] = Field(min_length=1)
    data: DataSpec
    model: ModelConfig = ModelConfig()
    train: TrainSpec = TrainRecipe()
    evals: list[EvalRecipe] = Field(default_factory=list)
    checkpoint_every_s: float = Field(60.0, gt=0, description="eval progress is flushed to the store this often")
    results_dir: str = Field("results", description="where summaries are written, under <results_dir>/<name>/")
    cluster: ClusterSpec = ClusterSpec()
    budget_usd: BudgetUsd = Field(
        None, gt=0, description="start no unit once $ spent + $ projected to finish would pass this (docs/progress-cost.md \"Budget\")"
    )
    artifacts: dict[int, str] | None = later(
        None, description="eval-only campaign: each seed's existing artifact (a local file), instead of `train:`; "
        "imported into the store, identified by its sha256 (docs/recipes.md: Eval-only campaigns)"
    )

    @model_validator(mode="before")
    @classmethod
    def _seeds_from_artifacts(cls, data: Any) -> Any:
        # an eval-only campaign names its seeds once, as the keys of `artifacts`
        if isinstance(data, dict) and isinstance(data.get("artifacts"), dict) and "seeds" not in data:
            data = {**data, "seeds": list(data["artifacts"])}
        return data

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds must be unique, got {v}")
        if any(s < 0 for s in v):
            raise ValueError(f"seeds must be non-negative, got {v}")
        return v

    @model_validator(mode="after")
    def _cross(self) -> CampaignSpec:
        names = [e.name for e in self.evals]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"evals: duplicate recipe names {dup}")
        for e in self.evals:
            other = e.stop_when.worse_than if e.stop_when else None
            if other is None:
                continue
            ref = next((r for r in self.evals if r.name == other), None)
            if ref is None or ref is e:
                raise ValueError(f"evals.{e.name}.stop_when.worse_than: {other!r} is not another recipe of this campaign")
            if not ref.shardable or ref.geometry() != e.geometry():
                raise ValueError(
                    f"evals.{e.name}.stop_when.worse_than: {other!r} must score the same batches "
                    "(same windows and batch layout, no ttt) to be compared batch by batch"
                )
        if self.artifacts is not None:
            if self.train != TrainRecipe():  # compared, not "was it given": a dumped spec carries every field
                raise ValueError("artifacts: an eval-only campaign has no train: (give one or the other)")
            if set(self.artifacts) != set(self.seeds):
                raise ValueError(f"artifacts: needs exactly one artifact per seed {self.seeds}, got seeds {sorted(self.artifacts)}")
        elif isinstance(self.train, ScriptTrain):
            if self.model.adapter is not None:
                raise ValueError("model.adapter: a script campaign names its adapter in train.adapter")
            unknown = sorted(set(self.train.compare) - {e.name for e in self.evals})
            if unknown:
                raise ValueError(f"train.compare: {unknown} are not eval recipes of this campaign")
        elif self.model.adapter is not None:
            raise ValueError("model.adapter: adapters load existing artifacts; give `artifacts:` (training builds this project's GPT)")
        if self.cluster.accelerator == "cuda" and self.train.gpus_per_worker < 1:
            raise ValueError("train.gpus_per_worker must be >= 1 when cluster.accelerator is cuda")
        return self

    # The parts that decide the numbers. Where it runs (cluster), where it is stored, how often
    # progress is saved and how evals are split do not (resumed and sharded runs give the same
    # bits), so a campaign can resume on another cluster or store copy.
    def fingerprint_dict(self) -> dict[str, Any]:
        d = self.model_dump(mode="json", exclude=later_defaults(self))
        if self.artifacts is not None:
            d.pop("train")  # not run; the artifacts' digests stand in for it (pipeline/records/campaign.py)
        for k in ("cluster", "store", "checkpoint_every_s", "results_dir", "budget_usd"):
            d.pop(k)
        for k in ("checkpoint_every_steps", "max_failures", "log_every", "keep_checkpoints"):
            d.get("train", {}).pop(k, None)
        if isinstance(self.train, ScriptTrain):  # how long to wait, what to compare and report: not the numbers
            for k in ("margin_s", "max_wallclock_s", "compare", "pass_env", "artifact_limit_bytes"):
                d["train"].pop(k)
        for e in d["evals"]:
            e.pop("shards")
            e.pop("stop_when")  # when to stop early decides whether there is a number, not its bits
        return d

    def fingerprint(self) -> str:
        blob = json.dumps(self.fingerprint_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    @property
    def adapter(self) -> str | None:
        """The adapter our evals load artifacts with: model.adapter (eval-only) or train.adapter (a script's)."""
        return self.model.adapter or getattr(self.train, "adapter", None)

    def eval_recipe(self, name: str) -> EvalRecipe:
        for e in self.evals:
            if e.name == name:
                return e
        raise KeyError(name)


def _format_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    parts = list(first["loc"])
    if parts[:1] == ["train"] and parts[1:2] in (["gpt"], ["script"]):
        del parts[1]  # the train kind's tag: `train.args`, as the user wrote it, not `train.script.args`
    loc = ".".join(str(p) for p in parts) or "<top>"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{source}: {loc}: {msg}{more}"


def _validated(model: type[Strict], data: Any, source: str, what: str) -> Any:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: {what}must be a mapping of keys, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise SpecError(_format_error(source, e)) from None


def parse_spec(data: Any, source: str = "<spec>") -> CampaignSpec:
    return _validated(CampaignSpec, data, source, "the campaign ")


def parse_pod_config(data: Any, source: str) -> PodConfig:
    """A node type's node_config (cluster.yaml) or `pipeline pods up`'s flags; one-line SpecError."""
    return _validated(PodConfig, data, source, "")


def load_spec(path: str | Path) -> CampaignSpec:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SpecError(f"{path}: cannot read: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"{path}:{where} invalid YAML: {getattr(e, 'problem', e)}") from None
    return parse_spec(data, str(path))
