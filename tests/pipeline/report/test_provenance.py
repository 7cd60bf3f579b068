"""The report says when seeds ran on different software stacks, role by role."""

from __future__ import annotations

from pipeline.report.provenance import AttemptProvenance, compare_stacks

H100 = {"python": "3.11.7", "torch": "2.6.0+cu124", "cuda": "12.4", "gpus": ["NVIDIA H100 80GB HBM3"], "code_sha256": "a" * 64}


def attempt(unit, prov, committed=True, rank=0):
    return AttemptProvenance(unit, f"{unit}-{rank}", rank, committed, prov)


def test_one_stack_per_role_is_no_difference():
    pcie = {**H100, "gpus": ["NVIDIA H100 PCIe"]}  # trained on an 8-GPU pod, evaluated on 1-GPU pods: one setup
    st = compare_stacks([attempt(f"train/{s}", H100) for s in (1, 2)] + [attempt(f"eval/{s}/slot/0", pcie) for s in (1, 2)])
    assert st.differences == [] and len(st.stacks) == 2 and st.by_seed[1] == {"train": [0], "slot": [1]}


def test_a_seed_on_another_torch_is_named():
    other = {**H100, "torch": "2.5.1+cu124"}
    st = compare_stacks([
        attempt("eval/1/slot/0", H100), attempt("eval/2/slot/0", H100), attempt("eval/3/slot/0", other),
        attempt("eval/3/slot/1", {**H100, "torch": "2.4.0"}, committed=False),  # a dead attempt made no number
        attempt("eval/2/slot/1", None),
    ])
    assert st.differences == ["slot: torch: 2.6.0+cu124 (seeds 1, 2) vs 2.5.1+cu124 (seed 3)"]
    assert st.unrecorded == ["eval/2/slot/1"]
