"""Pod mixes: `1x8xH100+4x1xH100` (count × GPUs per pod × GPU type, pods joined by +), the default
set built from cluster.yaml's node types, and what each pod costs an hour.

Prices: `--price TYPE=USD_PER_GPU_HOUR` first, then the spec's `cluster.pricing` for its own GPU
type, then LIST_PRICES below. A pod bills all its GPUs, used or not (pipeline/progress/cost.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.plan.throughput import short_type

# RunPod Secure Cloud on-demand list prices, $ per GPU-hour, as docs/plan.md "Planning" states them
# (runpod.io/pricing as last read for this project; a pod bills GPUs × this). Pass --price to
# plan with the price a pod quotes today (`pipeline pods list` shows each pod's).
LIST_PRICES = {"H100": 2.69, "H200": 3.59, "A100": 1.89, "L40S": 0.86, "RTX4090": 0.69}
PRICE_SOURCE = "RunPod Secure Cloud list price"

_POD = re.compile(r"^(\d+)x(\d+(?:\.\d+)?)x([A-Za-z0-9][A-Za-z0-9_.-]*)$")


@dataclass(frozen=True)
class PodType:
    gpus: float
    gpu_type: str  # as the mix spells it (H100), or the spec's pricing type for a local cluster
    usd_per_gpu_hour: float
    price_source: str

    @property
    def usd_per_hour(self) -> float:
        return self.gpus * self.usd_per_gpu_hour


@dataclass(frozen=True)
class Mix:
    name: str
    pods: tuple[PodType, ...]  # one entry per pod
    start_s: float = 0.0  # seconds from renting a pod to its GPUs taking work (0: a local cluster)

    @property
    def gpus(self) -> float:
        return sum(p.gpus for p in self.pods)

    @property
    def usd_per_hour(self) -> float:
        return sum(p.usd_per_hour for p in self.pods)


class Prices:
    def __init__(self, given: dict[str, float], spec_pricing=None):
        self.given = {short_type(k): v for k, v in given.items()}
        self.spec = spec_pricing

    def of(self, gpu_type: str) -> tuple[float, str]:
        short = short_type(gpu_type)
        if short in self.given:
            return self.given[short], "--price"
        if self.spec is not None and self.spec.usd_per_gpu_hour > 0 and short_type(self.spec.gpu_type) == short:
            return self.spec.usd_per_gpu_hour, "the spec's cluster.pricing"
        if short in LIST_PRICES:
            return LIST_PRICES[short], PRICE_SOURCE
        known = ", ".join(sorted(set(LIST_PRICES) | set(self.given)))
        raise ValueError(f"unknown GPU type {gpu_type!r}: no price for it (known: {known}; --price {short}=USD_PER_GPU_HOUR adds one)")


def parse_price(text: str) -> tuple[str, float]:
    name, sep, usd = text.partition("=")
    try:
        value = float(usd)
    except ValueError:
        value = -1.0
    if not sep or not name or not 0 <= value <= 1000:
        raise ValueError(f"--price {text}: expected TYPE=USD_PER_GPU_HOUR, e.g. H100=2.69")
    return name, value


def parse_mix(text: str, prices: Prices, start_s: float) -> Mix:
    """`1x8xH100+4x1xH100` → one PodType per pod; a bad term is one line naming it."""
    pods: list[PodType] = []
    for term in text.split("+"):
        m = _POD.match(term.strip())
        if m is None or int(m.group(1)) < 1 or float(m.group(2)) <= 0:
            raise ValueError(f"--pods {text}: {term!r} is not COUNTxGPUSxTYPE (e.g. 1x8xH100+4x1xH100)")
        price, source = prices.of(m.group(3))
        pods += [PodType(float(m.group(2)), short_type(m.group(3)), price, source)] * int(m.group(1))
    return Mix(text, tuple(pods), start_s)


def mix_name(counts: list[tuple[int, float, str]]) -> str:
    return "+".join(f"{n}x{g:g}x{t}" for n, g, t in counts if n > 0)


def default_mixes(spec, prices: Prices, cluster_yaml: Path, start_s: float) -> list[Mix]:
    """A local spec (cpu, no address): its own local instance and half and twice its GPUs, priced as
    the spec says. Otherwise cluster.yaml's node types: the head alone, the head with every worker
    type at its max_workers, and two heads."""
    c = spec.cluster
    if c.accelerator == "cpu" and c.address is None:
        g = c.local.num_gpus
        kind = c.pricing.gpu_type
        return [parse_mix(mix_name([(1, n, kind)]), prices, 0.0) for n in sorted({max(1, g // 2), g, 2 * g})]
    import yaml

    try:
        conf = yaml.safe_load(cluster_yaml.read_text())
        types = conf["available_node_types"]
        head = conf["head_node_type"]

        def pod(name: str) -> tuple[float, str]:
            cfg = types[name]["node_config"]
            return float(cfg["gpu_count"]), short_type(cfg["gpu_type_id"])

        hg, ht = pod(head)
        workers = [(int(types[n].get("max_workers", 0)), *pod(n)) for n in types if n != head]
    except (OSError, KeyError, TypeError, AttributeError, yaml.YAMLError) as e:
        raise ValueError(f"{cluster_yaml}: cannot read node types for the default mixes ({type(e).__name__}: {e}); pass --pods") from None
    names = [mix_name([(1, hg, ht)]), mix_name([(1, hg, ht), *workers]), mix_name([(2, hg, ht)])]
    return [parse_mix(n, prices, start_s) for n in dict.fromkeys(names)]
