"""Eval recipes: their passes (sliding, SLOT, per-sample SLOT, score-first TTT), stop rules and the
legality label derived from a recipe's definition."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from pipeline.spec.base import ADAM_BETAS, Beta, Name, Strict, later


class SlidingPass(Strict):
    """Score each window's positions with the model as it is."""

    kind: Literal["sliding"] = "sliding"


class SlotPass(Strict):
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


class SlotPerSamplePass(Strict):
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


class TTTPass(Strict):
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


class StopRule(Strict):
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


class EvalRecipe(Strict):
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
    stop_when: StopRule | None = Field(None, description="end the eval early, ESTIMATED, once this holds (docs/progress-cost.md \"Early answers\")")

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
    """What the challenge later ruled on (docs/recipes.md: Legality): may a token be scored by parameters or a
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
