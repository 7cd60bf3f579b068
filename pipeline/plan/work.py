"""The work a campaign holds, counted exactly from the spec and the val set's token count.

Windows and batches come from the same functions the eval plans use (workers/plan.py
`recipe_batches`, workers/windows.py), so a plan and a run count the same batches; the shards a
recipe is cut into are `make_plan`'s for the cluster's GPUs (the driver's default shard count).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pipeline.spec import CampaignSpec, EvalRecipe, ScriptTrain


@dataclass(frozen=True)
class RecipeWork:
    name: str
    kind: str  # "sliding", "slot", "ttt+slot", ...
    windows: int
    batches: int
    gpus: int  # GPUs one unit holds (a TTT unit may hold k)
    shardable: bool  # batches are independent: dealt over the cluster's GPUs
    shards: int | None  # the spec's fixed shard count; None: the cluster's GPUs
    slot_steps: int  # optimizer steps per batch of a SLOT scorer; 0 without one
    ttt_epochs: int  # 0 without a TTT pass
    ttt_chunks: int

    def shard_batches(self, seed: int, cluster_gpus: int) -> list[int]:
        """Batches of each shard unit, as the driver's plan for this seed cuts them."""
        from workers.plan import make_plan

        plan = make_plan(seed, _Named(self), self.windows, self.batches, self.shards or max(1, cluster_gpus))
        return [len(s) for s in plan["shards"]]

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Named:
    """The two fields make_plan reads of a recipe."""

    work: RecipeWork

    @property
    def name(self) -> str:
        return self.work.name

    @property
    def shardable(self) -> bool:
        return self.work.shardable


@dataclass(frozen=True)
class TrainWork:
    gpus: float  # the group's GPUs (world_size × gpus_per_worker)
    max_steps: int | None  # None: a script training (its own step count)
    max_wallclock_s: float
    tokens_per_step: int | None


@dataclass(frozen=True)
class CampaignWork:
    seeds: tuple[int, ...]
    val_tokens: int
    train: TrainWork | None  # None: eval-only (artifacts given)
    recipes: tuple[RecipeWork, ...]

    def recipe(self, name: str) -> RecipeWork:
        return next(r for r in self.recipes if r.name == name)

    def as_dict(self) -> dict:
        return {"seeds": list(self.seeds), "val_tokens": self.val_tokens, "train": None if self.train is None else asdict(self.train),
                "recipes": [r.as_dict() for r in self.recipes]}


def recipe_work(recipe: EvalRecipe, val_tokens: int) -> RecipeWork:
    from workers.plan import recipe_batches, val_length
    from workers.windows import chunk_of_windows

    windows, bounds = recipe_batches(val_length(val_tokens, recipe), recipe)
    ttt = recipe.ttt
    chunks = int(chunk_of_windows(windows, ttt.chunk_tokens)[-1]) + 1 if ttt is not None and len(windows) else 0
    scorer = recipe.scorer
    return RecipeWork(
        name=recipe.name, kind=recipe.kind, windows=len(windows), batches=int(bounds.size - 1), gpus=recipe.gpus,
        shardable=recipe.shardable, shards=recipe.shards, slot_steps=getattr(scorer, "steps", 0),
        ttt_epochs=ttt.epochs if ttt is not None else 0, ttt_chunks=chunks,
    )


def campaign_work(spec: CampaignSpec, val_tokens: int | None = None) -> CampaignWork:
    """`val_tokens`: the val set's size where the data is not on this machine (a pod's volume);
    otherwise read from the shard headers (capped by data.val_tokens, as the evals load it)."""
    if val_tokens is None:
        from workers.data import count_val_tokens

        val_tokens = count_val_tokens(spec.data.shards, spec.data.val_tokens)
    elif spec.data.val_tokens is not None:
        val_tokens = min(val_tokens, spec.data.val_tokens)
    t = spec.train
    train = None
    if spec.artifacts is None:
        script = isinstance(t, ScriptTrain)
        train = TrainWork(
            gpus=t.world_size * t.gpus_per_worker, max_steps=None if script else t.max_steps,
            max_wallclock_s=t.max_wallclock_s, tokens_per_step=None if script else t.batch_tokens,
        )
    return CampaignWork(tuple(spec.seeds), val_tokens, train, tuple(recipe_work(e, val_tokens) for e in spec.evals))
