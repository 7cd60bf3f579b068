"""Campaign spec: the one typed, validated description of a campaign (seeds × train recipe × evals).

Every check on user input lives here, so the driver and the workers can trust what they get.
Loaded from YAML; unknown keys and bad values are errors that name the field and the file.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator,
)

SPEC_VERSION = 1
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def _check_name(v: str) -> str:
    if not _NAME_RE.match(v):
        raise ValueError(f"{v!r} is not a name: use lowercase letters, digits, '_', '-', '.' (at most 64)")
    return v


# Names become store directories and file names, so they are kept to a safe alphabet.
Name = Annotated[str, AfterValidator(_check_name)]


class SpecError(ValueError):
    """Bad campaign spec. `str(err)` is one line naming the file and the field."""


def later(default: Any, **kw: Any) -> Any:
    """A field added after campaigns were already fingerprinted: left out of the fingerprint while
    it holds its default (today's behaviour), so existing campaigns keep their identity."""
    return Field(default, json_schema_extra={"omit_at_default": True}, **kw)


def _later_defaults(m: BaseModel) -> dict[Any, Any]:
    """model_dump's `exclude` for every `later` field still at its default, nested."""
    out: dict[Any, Any] = {}
    for name, info in type(m).model_fields.items():
        v = getattr(m, name)
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get("omit_at_default") and v == info.get_default(call_default_factory=True):
            out[name] = True
        elif isinstance(v, BaseModel) and (sub := _later_defaults(v)):
            out[name] = sub
        elif isinstance(v, list) and (subs := {i: x for i, e in enumerate(v) if isinstance(e, BaseModel) and (x := _later_defaults(e))}):
            out[name] = subs
    return out


Beta = Annotated[float, Field(ge=0, lt=1)]
ADAM_BETAS = (0.9, 0.999)  # torch's AdamW defaults


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSpec(_Strict):
    shards: str = Field(description="directory with fineweb_train_*.bin / fineweb_val_*.bin shards")
    tokenizer: str = Field(description="sentencepiece .model file the shards were made with")
    val_tokens: int | None = Field(
        default=None, ge=2, description="evaluate on the first N val tokens only (quick runs); None = all"
    )


def _check_adapter(v: str | None) -> str | None:
    if v is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", v):
        raise ValueError(f"{v!r} is not 'package.module:function'")
    return v


Adapter = Annotated[str | None, AfterValidator(_check_adapter)]


class ModelConfig(_Strict):
    """The parameter-golf baseline family. Defaults are the baseline's size (~17 M parameters)."""

    vocab_size: int = Field(1024, ge=8)
    num_layers: int = Field(9, ge=1)
    model_dim: int = Field(512, ge=8)
    num_heads: int = Field(8, ge=1)
    num_kv_heads: int = Field(4, ge=1)
    mlp_mult: int = Field(2, ge=1)
    rope_base: float = Field(10000.0, gt=0)
    logit_softcap: float = Field(30.0, gt=0)
    qk_gain_init: float = Field(1.5, gt=0)
    tied_embed_init_std: float = Field(0.005, gt=0)
    adapter: Adapter = later(
        None, description="'package.module:function' building the eval model from an artifact (README: Model adapters); "
        "None = this project's GPT; the other fields then describe the GPT"
    )

    @model_validator(mode="after")
    def _heads(self) -> ModelConfig:
        if self.model_dim % self.num_heads:
            raise ValueError(f"model_dim ({self.model_dim}) must be divisible by num_heads ({self.num_heads})")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be divisible by num_kv_heads ({self.num_kv_heads})")
        if (self.model_dim // self.num_heads) % 2:
            raise ValueError("head dim (model_dim / num_heads) must be even for RoPE")
        return self


class TrainRecipe(_Strict):
    """This project's trainer (workers/train.py) on this project's GPT."""

    kind: Literal["gpt"] = later("gpt", description="gpt: this project's trainer; script: your own train_gpt.py (ScriptTrain)")
    world_size: int = Field(8, ge=1, description="training workers (one process each)")
    gpus_per_worker: float = Field(1, ge=0, description="GPU slots per worker (logical on a CPU box)")
    max_wallclock_s: float = Field(600.0, gt=0, description="training stops when this wall clock is reached")
    max_steps: int = Field(20000, ge=1)
    batch_tokens: int = Field(524288, ge=1, description="tokens per optimizer step, over all workers")
    grad_accum_steps: int = Field(1, ge=1)
    seq_len: int = Field(1024, ge=2)
    embed_lr: float = Field(0.05, gt=0, description="Adam lr of the tied embedding")
    matrix_lr: float = Field(0.04, gt=0, description="Muon lr of the 2-D block weights")
    scalar_lr: float = Field(0.04, gt=0, description="Adam lr of gains, scales and other vectors")
    muon_momentum: float = Field(0.95, ge=0, lt=1)
    muon_backend_steps: int = Field(5, ge=1)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    warmup_steps: int = Field(20, ge=0, description="linear lr warmup")
    warmdown_frac: float = Field(
        0.2, ge=0, le=1, description="last fraction of the run (by steps or wall clock) with lr decaying to 0"
    )
    grad_clip: float = Field(0.0, ge=0, description="global grad-norm clip; 0 = off")
    ema: float | None = Field(None, gt=0, lt=1, description="export an EMA of the weights with this decay")
    artifact_limit_bytes: int = Field(16_000_000, ge=1)
    log_every: int = Field(50, ge=1)
    checkpoint_every_steps: int | None = Field(
        None, ge=1, description="also checkpoint every N steps (besides every checkpoint_every_s seconds)"
    )
    max_failures: int = Field(
        3, ge=0, description="transient failures (node death, NCCL timeout, S3 5xx, ...) retried per training unit, "
        "each restart resuming from the last checkpoint (README: Errors and retries)"
    )
    keep_checkpoints: int = Field(2, ge=1, description="newest training checkpoints kept in the store while the seed trains")

    @model_validator(mode="after")
    def _batch(self) -> TrainRecipe:
        per_micro = self.world_size * self.grad_accum_steps * self.seq_len
        if self.batch_tokens % per_micro:
            raise ValueError(
                f"batch_tokens ({self.batch_tokens}) must be a multiple of "
                f"world_size × grad_accum_steps × seq_len ({per_micro})"
            )
        return self


# What the pipeline sets for each rank of a script, as torchrun would (workers/script_train.py);
# a script's `env:` may not set them.
TORCHRUN_ENV = (
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
    "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
)
SCRIPT_ENV = (*TORCHRUN_ENV, "SEED")
# Names of node environment variables that are never handed to a script unless `pass_env` names
# them, and may not be written into a spec (the spec is stored): credentials.
SECRET_ENV_RE = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|CREDENTIAL|^AWS_|^RUNPOD_|^RAY_AUTH", re.IGNORECASE)
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# A RunPod secret reference (`{{ RUNPOD_SECRET_name }}`): RunPod puts the secret in at start; the
# pod's env holds only the reference.
_RUNPOD_SECRET_REF_RE = re.compile(r"\{\{\s*RUNPOD_SECRET_\w+\s*\}\}")


def check_env(env: dict[str, str], stored: str, refs_ok: bool = False) -> dict[str, str]:
    """Names only, and no credential by name (`stored` says where the value would be kept and what to
    do instead); `refs_ok`: a value that is a RunPod secret reference is not the secret."""
    for k, value in env.items():
        if not _ENV_NAME_RE.fullmatch(k):
            raise ValueError(f"{k!r} is not an environment variable name")
        if SECRET_ENV_RE.search(k) and not (refs_ok and _RUNPOD_SECRET_REF_RE.fullmatch(value.strip())):
            raise ValueError(f"{k}: looks like a credential, and {stored}")
    return env


def _relative(v: str, field: str) -> str:
    parts = Path(v).parts
    if not parts or Path(v).is_absolute() or ".." in parts:
        raise ValueError(f"{field}: {v!r} must be a path inside the script's run directory (relative, no '..')")
    return v


class ScriptCheckpoints(_Strict):
    """A folder the script writes its checkpoints to; a restarted group gets it back."""

    dir: str = Field("checkpoints", description="the folder, relative to the run directory (the script's cwd)")
    env: str | None = Field(None, description="environment variable set to the folder's absolute path (e.g. CKPT_DIR)")
    step: str = later(
        r"(\d+)", description="a regex whose first group, found in the folder's file paths, is its checkpoint's step (the "
        "largest match): a group over several nodes resumes only from a step every node that snapshots has"
    )

    @field_validator("step")
    @classmethod
    def _step(cls, v: str) -> str:
        try:
            groups = re.compile(v).groups
        except re.error as e:
            raise ValueError(f"{v!r} is not a regex ({e})") from None
        if groups < 1:
            raise ValueError(f"{v!r} has no group: its first group is the step, e.g. 'step_(\\d+)'")
        return v

    @field_validator("dir")
    @classmethod
    def _dir(cls, v: str) -> str:
        return _relative(v, "dir")

    @field_validator("env")
    @classmethod
    def _env(cls, v: str | None) -> str | None:
        if v is not None and (not _ENV_NAME_RE.fullmatch(v) or v in SCRIPT_ENV):
            raise ValueError(f"{v!r} is not a free environment variable name")
        return v


class ScriptTrain(_Strict):
    """Your own torchrun-style training script (a parameter-golf record's train_gpt.py), one
    process per rank with the environment torchrun gives it (README: Bring your own train_gpt.py)."""

    kind: Literal["script"]
    script: str = Field(min_length=1, description="the script, or a folder holding train_gpt.py; at the same path on every node")
    args: list[str] = Field(default_factory=list, description="command-line arguments after the script")
    env: dict[str, str] = Field(default_factory=dict, description="environment variables of every rank (the record's SEED=... line, SEED aside)")
    pass_env: list[str] = Field(
        default_factory=list, description="node environment variables handed on although their names look like "
        "credentials (those are withheld otherwise); their values are never stored"
    )
    artifacts: list[str] = Field(
        default_factory=lambda: ["final_model.int8.ptz"], min_length=1,
        description="files the script writes, relative to its cwd; the first is the artifact our evals score and the "
        "size limit counts, all are uploaded",
    )
    adapter: Adapter = Field(None, description="'package.module:function' loading the artifact for our evals (README: Model adapters)")
    world_size: int = Field(8, ge=1, description="ranks (torchrun's nproc_per_node × nnodes)")
    gpus_per_worker: float = Field(1, ge=0, description="GPU slots per rank (logical on a CPU box)")
    max_wallclock_s: float = Field(600.0, gt=0, description="the script's training time cap (its MAX_WALLCLOCK_SECONDS)")
    margin_s: float = Field(
        1200.0, gt=0, description="time beyond max_wallclock_s for start-up, compiling, the script's own evals and "
        "export; a rank still running then is killed (a hang)"
    )
    artifact_limit_bytes: int = Field(16_000_000, ge=1, description="code + artifact bytes are reported against this, not enforced")
    checkpoints: ScriptCheckpoints | None = Field(None, description="the script's checkpoint folder; None = a restart reruns the script from the start")
    max_failures: int = Field(3, ge=0, description="transient failures retried (README: Errors and retries)")
    keep_checkpoints: int = Field(2, ge=1, description="newest snapshots of the checkpoint folder kept in the store")
    compare: dict[str, str] = Field(
        default_factory=dict, description="our eval recipe → the script's final_*_exact line it is compared with; "
        "recipes not named are compared with the script's last final_*_exact line"
    )

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            if k in SCRIPT_ENV:
                raise ValueError(f"{k}: set by the pipeline for each rank (SEED from the campaign's seeds)")
        return check_env(v, "the spec is stored; leave it in the nodes' environment and name it in pass_env")

    @field_validator("artifacts")
    @classmethod
    def _artifacts(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate paths {v}")
        return [_relative(a, "artifacts") for a in v]

    @property
    def timeout_s(self) -> float:
        return self.max_wallclock_s + self.margin_s

    def script_file(self) -> Path:
        """The file that runs: `script` itself, or a folder's train_gpt.py (a record's layout)."""
        p = Path(self.script)
        return p / "train_gpt.py" if p.is_dir() else p


def _train_kind(v: Any) -> str:
    return (v.get("kind") if isinstance(v, dict) else getattr(v, "kind", None)) or "gpt"


# `kind` is optional and means gpt, so campaigns written before scripts existed parse unchanged.
TrainSpec = Annotated[Annotated[TrainRecipe, Tag("gpt")] | Annotated[ScriptTrain, Tag("script")], Discriminator(_train_kind)]


class SlidingPass(_Strict):
    """Score each window's positions with the model as it is."""

    kind: Literal["sliding"] = "sliding"


class SlotPass(_Strict):
    """Shared SLOT: per batch, a δ [1, 1, d] added to the final hidden states, fitted by AdamW for
    `steps` steps on a cosine lr from `lr` to `lr_min`, then the batch is scored once with it."""

    kind: Literal["slot"]
    lr: float = Field(0.1, gt=0)
    lr_min: float = Field(0.001, ge=0)
    steps: int = Field(100, ge=1)
    weight_decay: float = Field(1e-8, ge=0)
    eps: float = Field(1e-5, gt=0)
    loss_positions: Literal["scored", "all", "padded", "context"] = Field(
        "scored", description="fit δ on the scored positions; every position of the windows; every position of the "
        "batch padded to [batch, seq_len], padding included (PR #1176); or only positions scored by earlier batches"
    )
    schedule: Literal["cosine", "constant"] = later("cosine", description="lr over the steps (constant: PR #1176)")
    progress: Literal["t/steps", "t/(steps-1)"] = later(
        "t/steps", description="cosine position of step t: t/steps never reaches lr_min, t/(steps-1) does (PR #1722)"
    )
    betas: tuple[Beta, Beta] = later(ADAM_BETAS, description="AdamW betas")
    logits_dtype: Literal["fp32", "bf16"] = later("fp32", description="bf16: H + δ rounded to bf16 before the head (PR #1176)")


class SlotPerSamplePass(_Strict):
    """Per-sample SLOT: δ [B, 1, d] and a logit bias [B, 1, V] (added before the softcap), AdamW
    with default settings, cosine lr, loss over the scored positions."""

    kind: Literal["slot_per_sample"]
    lr: float = Field(0.008, gt=0)
    lr_min: float = Field(0.0008, ge=0)
    steps: int = Field(16, ge=1)
    weight_decay: float = later(0.01, ge=0, description="AdamW weight decay (default: torch's; PR #1722: 1e-8)")
    eps: float = later(1e-8, gt=0, description="AdamW eps (default: torch's; PR #1722: 1e-5)")
    betas: tuple[Beta, Beta] = later(ADAM_BETAS, description="AdamW betas (PR #1722: 0.9, 0.95)")
    schedule: Literal["cosine", "constant"] = later("cosine")
    progress: Literal["t/steps", "t/(steps-1)"] = later("t/steps", description="cosine position of step t (PR #1722: t/(steps-1))")
    loss_positions: Literal["scored", "context"] = later(
        "scored", description="fit each window's δ on its scored positions, or only on its context (positions earlier windows scored)"
    )


class TTTPass(_Strict):
    """Score-first test-time training: val is cut into chunks; each chunk is scored by the next
    pass, then (except the last) the model trains on it. Sequential over chunks."""

    kind: Literal["ttt"]
    chunk_tokens: int = Field(32768, ge=2)
    epochs: int = Field(3, ge=1)
    lr: float = Field(0.002, gt=0, description="peak lr; chunk c uses lr · ½(1 + cos(π c / (n − 1)))")
    optimizer: Literal["sgd", "muon", "muon_plain", "adamw"] = Field(
        "sgd", description="muon: Newton–Schulz step for 2-D weights, SGD for the rest; muon_plain: PR #1176's Muon-TTT "
        "(no momentum, no shape scale, bf16 Newton–Schulz for ≥2-D, plain gradient steps for the rest); adamw"
    )
    betas: tuple[Beta, Beta] = later(ADAM_BETAS, description="adamw betas")
    weight_decay: float = later(0.01, ge=0, description="adamw weight decay (torch's default)")
    then: Literal["per_chunk", "after"] = later(
        "per_chunk", description="per_chunk: each chunk is scored by the next pass before TTT trains on it; after: the "
        "whole TTT pass first, then the next pass scores all of val on the final model (PR #1176's TTT + SLOT)"
    )
    momentum: float = Field(0.9, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0, description="global grad-norm clip; 0 = off")
    batch_seqs: int = Field(32, ge=1, description="training sequences per step")
    params: list[str] = Field(
        default_factory=lambda: ["*"], min_length=1, description="glob patterns of parameter names that train"
    )
    muon_backend_steps: int = Field(5, ge=1)
    gpus: int = Field(
        1,
        ge=1,
        description="data-parallel GPUs for this one unit: each step's batch_seqs sequences are split across "
        "them and gradients summed, a chunk's scoring is split too; equal to 1 GPU up to float rounding",
    )


Pass = Annotated[SlidingPass | SlotPass | SlotPerSamplePass | TTTPass, Field(discriminator="kind")]
SCORING_KINDS = ("sliding", "slot", "slot_per_sample")


class StopRule(_Strict):
    """Stop an eval before its last batch once its running number says enough. Checked on a
    confidence sequence (valid however often it is looked at), so stopping the first time the rule
    holds errs at most `alpha` of the time."""

    half_width: float | None = Field(None, gt=0, description="stop when the bpb interval's half-width is at most this")
    worse_than: str | None = Field(None, description="stop when this recipe is worse (higher bpb) than that one, paired batch by batch")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="error rate of the decision")
    min_batches: int = Field(30, ge=2, description="never decide on fewer batches than this")

    @model_validator(mode="after")
    def _one(self) -> StopRule:
        if (self.half_width is None) == (self.worse_than is None):
            raise ValueError("give exactly one of half_width, worse_than")
        return self


class EvalRecipe(_Strict):
    """A list of passes: optional adaptation (ttt) and one scoring pass last (sliding, slot,
    slot_per_sample). [ttt, slot] is TTT then SLOT on the adapted model."""

    name: Name = Field(description="recipe name, unique in the campaign; names the store directory")
    seq_len: int = Field(1024, ge=2)
    stride: int = Field(64, ge=1)
    batch_seqs: int = Field(32, ge=1, description="consecutive windows per batch")
    window_filter: Literal["exact", "legacy", "all"] = Field(
        "exact", description="exact: every target scored once; legacy: the seeds' SLOT records (tail rescored); all: "
        "every start, short tail windows included (PRs #1176, #1722)"
    )
    rank_split: int = later(
        1, ge=1, description="batch the windows as a record on k GPUs does: k contiguous parts, each batched from its own start"
    )
    val_truncate: bool = later(False, description="keep ((n − 1) // seq_len) · seq_len + 1 val tokens, as the records load val")
    passes: list[Pass] = Field(default_factory=lambda: [SlidingPass()], min_length=1)
    shards: int | None = Field(
        None, ge=1, description="split the batches over this many GPU tasks; None = the cluster's GPUs (ttt: always 1 unit, on ttt.gpus GPUs)"
    )
    stop_when: StopRule | None = Field(None, description="end the eval early, ESTIMATED, once this holds (README \"Early answers\")")

    @model_validator(mode="after")
    def _check(self) -> EvalRecipe:
        if self.stride > self.seq_len:
            raise ValueError(f"stride ({self.stride}) must not exceed seq_len ({self.seq_len})")
        if self.passes[-1].kind not in SCORING_KINDS:
            raise ValueError(f"passes: the last pass must score ({', '.join(SCORING_KINDS)}), not {self.passes[-1].kind}")
        adapt = self.passes[:-1]
        if len(adapt) > 1 or any(p.kind != "ttt" for p in adapt):
            raise ValueError("passes: at most one ttt pass may come before the scoring pass")
        if self.ttt is not None and self.ttt.then == "per_chunk" and self.rank_split > 1:
            raise ValueError("rank_split: a per-chunk ttt recipe batches each chunk from its start; use then: after")
        if self.stop_when is not None and not self.shardable:
            raise ValueError("stop_when: a ttt recipe scores its chunks in val order, so its running number is a prefix with no interval")
        return self

    def geometry(self) -> dict[str, Any]:
        """What decides which windows make up which batch: two recipes with the same geometry score
        the same batches, so they can be compared batch by batch."""
        d = self.model_dump(mode="json")
        for k in ("name", "passes", "shards", "stop_when"):
            d.pop(k, None)
        return d

    @property
    def kind(self) -> str:
        return "+".join(p.kind for p in self.passes)

    @property
    def shardable(self) -> bool:
        """Batches are independent (no TTT carrying state from chunk to chunk)."""
        return self.ttt is None

    @property
    def gpus(self) -> int:
        """GPUs one unit of this recipe holds (a TTT unit may span k; a shard holds one)."""
        return self.ttt.gpus if self.ttt else 1

    @property
    def scorer(self) -> SlidingPass | SlotPass | SlotPerSamplePass:
        return self.passes[-1]

    @property
    def ttt(self) -> TTTPass | None:
        return self.passes[0] if len(self.passes) > 1 else None

    @property
    def legality(self) -> Legality:
        return legality(self)


SCORE_FIRST = "score-first"
ADAPTS_ON_SCORED = "adapts-on-scored-tokens"


@dataclass(frozen=True)
class Legality:
    """What the challenge later ruled on (README: Legality): may a token be scored by parameters or a
    δ fitted on it or on later tokens?"""

    label: str  # SCORE_FIRST | ADAPTS_ON_SCORED
    why: str  # one line

    def as_dict(self) -> dict[str, str]:
        return {"label": self.label, "why": self.why}


def legality(recipe: EvalRecipe) -> Legality:
    """Derived from the recipe's definition alone, never from a run."""
    ttt, scorer = recipe.ttt, recipe.scorer
    if ttt is not None and ttt.then == "after":
        return Legality(ADAPTS_ON_SCORED, "ttt then: after trains on all of val before the scoring pass scores it")
    if scorer.kind != "sliding" and scorer.loss_positions != "context":
        fitted = {"scored": "the positions it then scores", "all": "every position, the scored ones included",
                  "padded": "every position of the padded batch, the scored ones included"}[scorer.loss_positions]
        return Legality(ADAPTS_ON_SCORED, f"{scorer.kind} fits its δ on {fitted}")
    parts = ["each chunk is scored before TTT trains on it"] if ttt is not None else []
    if scorer.kind == "sliding":
        parts.append("windows are scored by the model as it is")
    else:
        scope = "earlier batches" if scorer.kind == "slot" else "earlier windows"
        parts.append(f"{scorer.kind} fits δ only on positions scored by {scope}")
    return Legality(SCORE_FIRST, "; ".join(parts))


class LocalCluster(_Strict):
    """Resources of the Ray instance `pipeline run` starts when no cluster address is given.

    GPUs here are logical slots: on a CPU box they let the same num_gpus=1 scheduling run unchanged.
    """

    num_cpus: int = Field(4, ge=1)
    num_gpus: int = Field(4, ge=0)


# Sanity bounds on money (finite; `.inf` or 1e300 is a typo, not a budget): far above any campaign
# or GPU RunPod rents (an 8×B200 pod is ~$50/h), far below what would hide a mistake.
MAX_BUDGET_USD = 1_000_000.0
MAX_USD_PER_GPU_HOUR = 100.0


def _at_most(limit: float, unit: str):
    def check(v: float | None) -> float | None:
        if v is not None and not (math.isfinite(v) and v <= limit):
            raise ValueError(f"{v:g} is not a sane amount: give a finite number, at most {limit:,.0f} {unit}")
        return v

    return AfterValidator(check)


UsdPerGpuHour = Annotated[float, _at_most(MAX_USD_PER_GPU_HOUR, "$ per GPU-hour")]
BudgetUsd = Annotated[float | None, _at_most(MAX_BUDGET_USD, "$")]


class Pricing(_Strict):
    """What a GPU costs where the node does not say (a RunPod pod's labels say it: README "Cost").
    Locally it prices the logical GPU slots as the GPUs they stand for, so the demo's figures read
    like a pod's."""

    gpu_type: str = Field("unknown", min_length=1, description="shown in cost and status tables")
    usd_per_gpu_hour: UsdPerGpuHour = Field(0.0, ge=0, description=f"$ per GPU-hour; 0 = cost unknown; at most {MAX_USD_PER_GPU_HOUR:g}")


class ClusterSpec(_Strict):
    address: str | None = Field(None, description="Ray address; None = start a local instance (ray job submit sets RAY_ADDRESS)")
    max_interruptions: int = Field(
        5, ge=0, description="transient failures (node death, preemption, S3 5xx, ...) retried per eval unit before it is FAILED"
    )
    retry_backoff_s: float = Field(5.0, ge=0, description="first retry delay after a transient failure; doubles per retry (at most 5 min)")
    wait_for_capacity_s: float = Field(
        900.0, gt=0, description="how long a unit waits for GPUs the cluster does not have (a node left) before the run "
        "ends with it PENDING (a re-run picks it up)"
    )
    accelerator: Literal["cuda", "cpu"] = Field("cuda", description="device the workers compute on")
    cpu_threads: int = Field(1, ge=1, description="torch threads per worker on CPU (fixed so results repeat bit for bit)")
    local: LocalCluster = LocalCluster()
    pricing: Pricing = Field(default_factory=lambda: Pricing(), description="price of nodes that do not carry their own (pod labels)")
    groups_span_nodes: bool = Field(
        False, description="a training or TTT group that no single node holds may spread over nodes (NCCL between "
        "pods over their network: slow on RunPod); by default each group runs on one node (STRICT_PACK) and waits for one"
    )
    idle_stop_min: float = Field(
        10.0, gt=0, description="a RunPod pod of the cluster that no unit used or could use for this long is stopped "
        "(by the driver, or `pipeline pods watch`; README: Pods): not one whose GPUs a waiting unit gathers; the head "
        "pod only once every pod is idle"
    )


class PodConfig(_Strict):
    """One RunPod on-demand pod: a node type's `node_config` in cluster.yaml, or `pipeline pods up`'s
    flags. Names follow podFindAndDeployOnDemand's input (README: Pods)."""

    gpu_type_id: str = Field(min_length=1, description="RunPod GPU type id, e.g. 'NVIDIA H100 80GB HBM3'")
    gpu_count: int = Field(1, ge=1, le=16)
    image: str = Field("runpod/pytorch:2.8.0-py3.11-cuda12.8.1-cudnn-devel-ubuntu22.04", min_length=1)
    cloud_type: Literal["ALL", "SECURE", "COMMUNITY"] = "SECURE"
    container_disk_gb: int = Field(50, ge=1)
    volume_gb: int = Field(0, ge=0, description="pod volume (kept while the pod is stopped); 0 = none")
    volume_mount_path: str = "/workspace"
    network_volume_id: str | None = Field(None, description="a RunPod network volume to mount at volume_mount_path")
    min_vcpu: int = Field(8, ge=1)
    min_memory_gb: int = Field(32, ge=1)
    ports: list[str] = Field(default_factory=lambda: ["22/tcp"], description="'22/tcp' is how SSH reaches the pod")
    env: dict[str, str] = Field(default_factory=dict)
    docker_args: str = ""

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        return check_env(v, "RunPod shows a pod's env to everyone on the account; use a RunPod secret ('{{ RUNPOD_SECRET_name }}')", refs_ok=True)

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: list[str]) -> list[str]:
        for p in v:
            if not re.fullmatch(r"[0-9]{1,5}/(tcp|http)", p):
                raise ValueError(f"{p!r} is not a port: use '22/tcp' or '8888/http'")
        return v


class CampaignSpec(_Strict):
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
        None, gt=0, description="start no unit once $ spent + $ projected to finish would pass this (README \"Budget\")"
    )
    artifacts: dict[int, str] | None = later(
        None, description="eval-only campaign: each seed's existing artifact (a local file), instead of `train:`; "
        "imported into the store, identified by its sha256 (README: Eval-only campaigns)"
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
        d = self.model_dump(mode="json", exclude=_later_defaults(self))
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


def _validated(model: type[_Strict], data: Any, source: str, what: str) -> Any:
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
