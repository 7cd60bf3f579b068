"""A small threaded HTTP server (127.0.0.1 unless told another address) that answers RunPod's GraphQL shapes: `myself { pods }`,
`pod(input)`, podFindAndDeployOnDemand, podStop, podResume, podTerminate (docs/pods.md: Pods; RunPod's
GraphQL docs). It checks the bearer key, keeps pods in memory with `costPerHr` as a string, and can
be told to answer the next requests with an HTTP status (401, 429 + Retry-After, 5xx) or GraphQL
`errors`, or to do what the next requests ask and answer them late (a client's timeout), or to hold
every request unanswered until released (an API that hangs). With `machines` (the pod farm,
pipeline/pods/farm.py) a pod it creates is a real host: create, stop and terminate start and end it.
It serves the tests and `make pod-farm` (a rehearsal before renting)."""

from __future__ import annotations

import json
import re
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

PRICES = {"NVIDIA H100 80GB HBM3": "2.69", "NVIDIA GeForce RTX 4090": "0.69"}
_OP = re.compile(r"\{\s*(\w+)")


class Machines(Protocol):
    """What stands behind the pods the API rents (the farm): a host per pod, reached at an address."""

    def start_pod(self, pod_id: str, env: dict[str, str]) -> str: ...  # its address (SSH on port 22)

    def end_pod(self, pod_id: str) -> None: ...  # its processes and its host are gone


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """A client that gave up on a late answer (a timeout under test) is the point of the test,
        not an error: without this, socketserver prints its traceback to stderr whenever the late
        write fails, which may be in the middle of a later test."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class FakeRunPod:
    def __init__(self, host: str = "127.0.0.1", machines: Machines | None = None) -> None:
        self.machines = machines
        self.key = "rp_" + secrets.token_hex(16)
        self.pods: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, dict]] = []  # (operation, variables)
        self.auth_headers: list[str] = []
        self.paths: list[str] = []
        self.script: list[tuple[int, Any, dict[str, str], str | None]] = []  # next answers: (status, body, headers, to which op)
        self.late: list[tuple[str, float]] = []  # (op, seconds): hold the next answers to op back, after doing what they ask
        self.ssh_endpoint: tuple[str, int] | None = None  # what new pods map private port 22 to
        self.lock = threading.RLock()  # add_pod is called inside answer
        self.gate = threading.Event()  # cleared by hold(): requests wait on it before they are answered
        self.gate.set()
        self.held = 0  # requests that have waited at the gate
        self._n = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                if not fake.gate.is_set():
                    with fake.lock:
                        fake.held += 1
                    fake.gate.wait()
                status, payload, headers = fake.answer(self.path, self.headers.get("Authorization", ""), body)
                late = fake.lateness(fake.calls[-1][0])
                if late:  # (tests patch time.sleep to count a loop's waits)
                    time.sleep(late)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = _Server((host, 0), Handler)
        self.url = f"http://{host}:{self.httpd.server_address[1]}/graphql"

    def start(self) -> None:
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        self.release()
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- state helpers for tests ---------------------------------------------------------------

    def add_pod(self, status: str = "RUNNING", gpu: str = "NVIDIA H100 80GB HBM3", count: int = 8, uptime: int = 3600,
                ssh: tuple[str, int] | None = ("203.0.113.7", 40022), name: str = "pod", env: list[str] | None = None) -> str:  # fmt: skip
        with self.lock:
            self._n += 1
            pid = f"pod{self._n:03d}x"
            ports = []
            if ssh:
                ports.append({"ip": ssh[0], "isIpPublic": True, "privatePort": 22, "publicPort": ssh[1], "type": "tcp"})
                private = ssh[0] if ssh[1] == 22 else "10.0.0.%d" % self._n  # a farm pod: one address
                ports.append({"ip": private, "isIpPublic": False, "privatePort": 22, "publicPort": 22, "type": "tcp"})
            self.pods[pid] = {
                "id": pid, "name": name, "desiredStatus": status, "costPerHr": PRICES.get(gpu, "1.00"),
                "gpuCount": count, "imageName": "runpod/pytorch", "env": env or [],
                "machine": {"gpuDisplayName": gpu.replace("NVIDIA ", "")},
                "runtime": None if status != "RUNNING" else {"uptimeInSeconds": uptime, "ports": ports, "gpus": [{"id": f"g{i}", "gpuUtilPercent": 0} for i in range(count)]},
            }  # fmt: skip
            return pid

    def fail_next(self, status: int, body: Any = None, headers: dict[str, str] | None = None, times: int = 1, op: str | None = None) -> None:
        """The next `times` requests (of operation `op`, where given) get this answer."""
        with self.lock:
            self.script.extend([(status, body if body is not None else {"error": "scripted"}, headers or {}, op)] * times)

    def lateness(self, op: str) -> float:
        with self.lock:
            i = next((i for i, (o, _) in enumerate(self.late) if o == op), None)
            return self.late.pop(i)[1] if i is not None else 0.0

    def hold(self) -> None:
        """Answer nothing until release(): the client's calls hang until their timeout."""
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    def ops(self) -> list[str]:
        return [op for op, _ in self.calls]

    # -- the API -------------------------------------------------------------------------------

    def answer(self, path: str, auth: str, body: dict) -> tuple[int, Any, dict[str, str]]:
        with self.lock:
            self.auth_headers.append(auth)
            self.paths.append(path)
            m = _OP.search(body.get("query") or "")
            op = m.group(1) if m else ""
            self.calls.append((op, body.get("variables") or {}))
            if auth != f"Bearer {self.key}":
                return 401, {"errors": [{"message": "Unauthorized"}]}, {}
            for i, (status, payload, headers, only) in enumerate(self.script):
                if only in (None, op):
                    del self.script[i]
                    return status, payload, headers
            inp = (body.get("variables") or {}).get("input") or {}
            try:
                return 200, {"data": self._resolve(op, inp)}, {}
            except LookupError as e:
                return 200, {"data": {op: None}, "errors": [{"message": str(e), "path": [op]}]}, {}

    def _resolve(self, op: str, inp: dict) -> dict:
        if op == "myself":
            return {"myself": {"pods": [dict(p) for p in self.pods.values()]}}
        if op == "pod":
            p = self.pods.get(inp.get("podId"))
            return {"pod": dict(p) if p else None}
        if op == "podFindAndDeployOnDemand":
            if inp.get("gpuTypeId") not in PRICES:
                return {"podFindAndDeployOnDemand": None}  # no machine with those GPUs
            env = [f"{e['key']}={e['value']}" for e in inp.get("env") or []]
            ssh = self.ssh_endpoint or ("203.0.113.9", 41022)
            if self.machines is not None:  # the pod's id first, then its host (which knows its id, as RUNPOD_POD_ID)
                pid = f"pod{self._n + 1:03d}x"
                ssh = (self.machines.start_pod(pid, {e["key"]: e["value"] for e in inp.get("env") or []}), 22)
            pid = self.add_pod(gpu=inp["gpuTypeId"], count=inp["gpuCount"], uptime=0, ssh=ssh, name=inp["name"], env=env)
            self.pods[pid]["create_input"] = inp
            return {"podFindAndDeployOnDemand": dict(self.pods[pid])}
        p = self.pods.get(inp.get("podId"))
        if p is None:
            raise LookupError(f"pod {inp.get('podId')} not found")
        if op in ("podStop", "podTerminate") and self.machines is not None:
            self.machines.end_pod(p["id"])
        if op == "podStop":
            p.update(desiredStatus="EXITED", runtime=None)
            return {"podStop": {"id": p["id"], "desiredStatus": "EXITED"}}
        if op == "podResume":
            ports = []
            if self.machines is not None:  # a new host for the pod (its volume: the farm keeps its dir)
                env = dict(e.split("=", 1) for e in p["env"])
                ip = self.machines.start_pod(p["id"], env)
                ports = [{"ip": ip, "isIpPublic": True, "privatePort": 22, "publicPort": 22, "type": "tcp"},
                         {"ip": ip, "isIpPublic": False, "privatePort": 22, "publicPort": 22, "type": "tcp"}]  # fmt: skip
            p.update(desiredStatus="RUNNING", runtime={"uptimeInSeconds": 0, "ports": ports, "gpus": []})
            return {"podResume": {"id": p["id"], "desiredStatus": "RUNNING"}}
        if op == "podTerminate":
            del self.pods[p["id"]]
            return {"podTerminate": None}
        raise LookupError(f"unknown operation {op}")
