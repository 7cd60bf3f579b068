# `make demo` and `make test` each create .venv when missing and install what they need.
# torch goes in first and pinned here (TORCH=...), so pip never swaps it for a multi-GB CUDA build;
# pyproject only says torch>=2.5 (SDPA enable_gqa) for GPU pods.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DATA := data/demo

.PHONY: demo test test-fast install clean-demo ssh-server gpu-check pod-farm

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

$(DEMO_DATA)/.ready: $(STAMP)
	$(PY) -m pipeline data stdlib-corpus --out $(DEMO_DATA)/corpus.jsonl
	$(PY) -m pipeline data prepare --text $(DEMO_DATA)/corpus.jsonl --vocab 512 --out $(DEMO_DATA)
	touch $@

demo: $(STAMP) $(DEMO_DATA)/.ready
	$(PY) -m pipeline run jobs/demo.yaml
	$(PY) -m pipeline report jobs/demo.yaml

# Two pytest workers (xdist), each test module whole on one worker (--dist loadfile), so a module's
# Ray instance or trained campaign is made once: the waits of one (process starts, Ray start-ups,
# kills) overlap the other's compute on 2 cores.
test: $(STAMP) ssh-server
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=25 tests

# The edit-run loop: every test that starts no Ray, no sshd and kills nothing (the `heavy` marker,
# tests/conftest.py). `make test` stays the one that proves the faults.
test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 -m "not heavy" tests

# The pods tests drive a real OpenSSH sshd on 127.0.0.1 (tests/pipeline/pods/conftest.py), and `ray up`
# on the pod farm copies the code with rsync (tests/pipeline/pods/test_rehearsal.py). Both are installed
# here when missing (Debian/Ubuntu, as root, no prompts); where it cannot be, those tests skip and say so.
ssh-server:
	@{ test -x /usr/sbin/sshd || command -v sshd >/dev/null; } && command -v rsync >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q --no-install-recommends openssh-server rsync >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends openssh-server rsync >/dev/null 2>&1; } || \
	    echo "openssh-server and rsync could not be installed: the ssh tests will be skipped"; \
	  else echo "no sshd or rsync and not root with apt-get: the ssh tests will be skipped"; fi; }

# A pod farm on this machine (docs/pods.md: Pods): the local RunPod API rents pods that are network
# namespaces with their own address and sshd, and a moto S3 serves them all; rehearse `ray up`, a
# campaign and a pod's death before renting. Root + `ip netns`; runs until Ctrl-C (pod-farm/env, cluster.yaml).
pod-farm: $(STAMP) ssh-server
	$(PY) -m pipeline.pods.rehearsal --dir pod-farm

# One table of the GPU path (versions, flash-attn vs SDPA, the GPU each eval task uses, NCCL group,
# eval windows/s): on a machine with NVIDIA GPUs; writes only under gpu-check/ (bench/gpu_check.py).
gpu-check: $(STAMP)
	$(PY) bench/gpu_check.py --out gpu-check

clean-demo:
	rm -rf $(DEMO_DATA) store/demo results/demo
