"""Campaign spec: the one typed, validated description of a campaign (seeds × train recipe × evals).

Every check on user input lives in this package, so the driver and the workers can trust what they get.
Loaded from YAML; unknown keys and bad values are errors that name the field and the file. One module
per part of the file: base (what every model is built from), data, train, evals, cluster (and
pricing, pods), campaign (the whole file, parse and load). Import from `pipeline.spec`."""

from __future__ import annotations

from pipeline.spec.base import (
    SPEC_VERSION,
    Name,
    SpecError,
    later,
    Beta,
    ADAM_BETAS,
    Adapter,
    SECRET_ENV_RE,
    check_env,
)
from pipeline.spec.data import (
    DataSpec,
)
from pipeline.spec.train import (
    ModelConfig,
    TrainRecipe,
    TORCHRUN_ENV,
    SCRIPT_ENV,
    ScriptCheckpoints,
    ScriptTrain,
    TrainSpec,
)
from pipeline.spec.evals import (
    SlidingPass,
    SlotPass,
    SlotPerSamplePass,
    TTTPass,
    Pass,
    SCORING_KINDS,
    StopRule,
    EvalRecipe,
    SCORE_FIRST,
    ADAPTS_ON_SCORED,
    Legality,
    legality,
)
from pipeline.spec.cluster import (
    LocalCluster,
    MAX_BUDGET_USD,
    MAX_USD_PER_GPU_HOUR,
    UsdPerGpuHour,
    BudgetUsd,
    Pricing,
    ClusterSpec,
    PodConfig,
)
from pipeline.spec.campaign import (
    CampaignSpec,
    parse_spec,
    parse_pod_config,
    load_spec,
)

__all__ = [
    "SPEC_VERSION",
    "Name",
    "SpecError",
    "later",
    "Beta",
    "ADAM_BETAS",
    "Adapter",
    "SECRET_ENV_RE",
    "check_env",
    "DataSpec",
    "ModelConfig",
    "TrainRecipe",
    "TORCHRUN_ENV",
    "SCRIPT_ENV",
    "ScriptCheckpoints",
    "ScriptTrain",
    "TrainSpec",
    "SlidingPass",
    "SlotPass",
    "SlotPerSamplePass",
    "TTTPass",
    "Pass",
    "SCORING_KINDS",
    "StopRule",
    "EvalRecipe",
    "SCORE_FIRST",
    "ADAPTS_ON_SCORED",
    "Legality",
    "legality",
    "LocalCluster",
    "MAX_BUDGET_USD",
    "MAX_USD_PER_GPU_HOUR",
    "UsdPerGpuHour",
    "BudgetUsd",
    "Pricing",
    "ClusterSpec",
    "PodConfig",
    "CampaignSpec",
    "parse_spec",
    "parse_pod_config",
    "load_spec",
]
