"""How a seed is trained: this project's GPT trainer (ModelConfig + TrainRecipe) or your own
torchrun-style script (ScriptTrain); `train:` picks one by `kind`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from pipeline.spec.base import Adapter, ENV_NAME_RE, Strict, relative_path, check_env, later


class ModelConfig(Strict):
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
        None, description="'package.module:function' building the eval model from an artifact (docs/recipes.md: Model adapters); "
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


class TrainRecipe(Strict):
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
        "each restart resuming from the last checkpoint (docs/faults.md: Errors and retries)"
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


class ScriptCheckpoints(Strict):
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
        return relative_path(v, "dir")

    @field_validator("env")
    @classmethod
    def _env(cls, v: str | None) -> str | None:
        if v is not None and (not ENV_NAME_RE.fullmatch(v) or v in SCRIPT_ENV):
            raise ValueError(f"{v!r} is not a free environment variable name")
        return v


class ScriptTrain(Strict):
    """Your own torchrun-style training script (a parameter-golf record's train_gpt.py), one
    process per rank with the environment torchrun gives it (docs/scripts.md: Bring your own train_gpt.py)."""

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
    adapter: Adapter = Field(None, description="'package.module:function' loading the artifact for our evals (docs/recipes.md: Model adapters)")
    world_size: int = Field(8, ge=1, description="ranks (torchrun's nproc_per_node × nnodes)")
    gpus_per_worker: float = Field(1, ge=0, description="GPU slots per rank (logical on a CPU box)")
    max_wallclock_s: float = Field(600.0, gt=0, description="the script's training time cap (its MAX_WALLCLOCK_SECONDS)")
    margin_s: float = Field(
        1200.0, gt=0, description="time beyond max_wallclock_s for start-up, compiling, the script's own evals and "
        "export; a rank still running then is killed (a hang)"
    )
    artifact_limit_bytes: int = Field(16_000_000, ge=1, description="code + artifact bytes are reported against this, not enforced")
    checkpoints: ScriptCheckpoints | None = Field(None, description="the script's checkpoint folder; None = a restart reruns the script from the start")
    max_failures: int = Field(3, ge=0, description="transient failures retried (docs/faults.md: Errors and retries)")
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
        return [relative_path(a, "artifacts") for a in v]

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
