"""SSH to a pod with paramiko: run a command and stream its output, copy files.

Host keys are checked against a known_hosts file. A host that is not in it is refused unless the
caller asked for trust on first use (`trust_new`), which appends the key to that file, so the next
connection checks it. A pod reached on a public port that another pod used before shows up as a
changed key: that is refused too, naming the line to remove. Every failure is one SSHError line.

A pod can vanish mid-command (RunPod recycles on-demand pods) without closing the connection: its
packets just stop. Keepalives (paramiko's, every `keepalive_s`, so idle NATs keep the connection)
and, while a command is quiet that long, a request the server must answer (a channel open, bounded
by `keepalive_s`) turn that into one line instead of a wait with no end.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paramiko

KNOWN_HOSTS_ENV = "PIPELINE_KNOWN_HOSTS"


def default_known_hosts() -> Path:
    return Path(os.environ.get(KNOWN_HOSTS_ENV) or Path.home() / ".ssh" / "known_hosts").expanduser()


class SSHError(RuntimeError):
    """An SSH connection or command failed; `str(err)` is one line."""


@dataclass(frozen=True)
class SSHTarget:
    host: str
    port: int
    user: str = "root"
    key_file: str | None = None  # None: the ssh agent and ~/.ssh/id_*
    known_hosts: Path | None = None  # None: default_known_hosts()
    trust_new: bool = False
    timeout_s: float = 20.0
    keepalive_s: float = 15.0  # a pod that answers nothing for about twice this is gone

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


def _fingerprint(key: paramiko.PKey) -> str:
    return key.fingerprint if hasattr(key, "fingerprint") else key.get_fingerprint().hex()


class _UnknownHost(Exception):
    def __init__(self, key: paramiko.PKey):
        self.key = key


class _Refuse(paramiko.MissingHostKeyPolicy):
    def missing_host_key(self, client, hostname, key):
        raise _UnknownHost(key)


class _TrustAndRecord(paramiko.MissingHostKeyPolicy):
    """Trust on first use: accept the key and append it to the known_hosts file."""

    def __init__(self, path: Path, log: Callable[[str], None]):
        self.path, self.log = path, log

    def missing_host_key(self, client, hostname, key):
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.path, "a") as f:
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.log(f"recorded the host key of {hostname} ({key.get_name()} {_fingerprint(key)}) in {self.path}")


class SSH:
    """One connection; use as a context manager."""

    def __init__(self, target: SSHTarget, log: Callable[[str], None] = lambda m: None):
        self.target = target
        self.log = log
        self._client: paramiko.SSHClient | None = None

    def __enter__(self) -> SSH:
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def connect(self) -> None:
        t = self.target
        known = t.known_hosts or default_known_hosts()
        client = paramiko.SSHClient()
        if known.exists():
            try:
                client.load_host_keys(str(known))
            except (OSError, paramiko.SSHException) as e:
                raise SSHError(f"ssh {t}: cannot read known_hosts {known}: {e}") from None
        client.set_missing_host_key_policy(_TrustAndRecord(known, self.log) if t.trust_new else _Refuse())
        try:
            client.connect(
                t.host,
                port=t.port,
                username=t.user,
                key_filename=t.key_file,
                look_for_keys=t.key_file is None,
                allow_agent=t.key_file is None,
                timeout=t.timeout_s,
                banner_timeout=t.timeout_s,
                auth_timeout=t.timeout_s,
            )
        except _UnknownHost as e:
            client.close()
            raise SSHError(
                f"ssh {t}: unknown host key ({e.key.get_name()} {_fingerprint(e.key)}), not in {known}: "
                "check it and add it, or connect once with --trust-new-host to record it"
            ) from None
        except paramiko.BadHostKeyException as e:
            client.close()
            raise SSHError(
                f"ssh {t}: the host key changed (now {_fingerprint(e.key)}, {known} has {_fingerprint(e.expected_key)}): "
                f"a new pod on a reused address, or someone in between; if the pod was replaced, remove its line from {known}"
            ) from None
        except paramiko.AuthenticationException:
            client.close()
            how = f"key {t.key_file}" if t.key_file else "the ssh agent and ~/.ssh keys"
            raise SSHError(f"ssh {t}: authentication failed for user {t.user} with {how}") from None
        except paramiko.ssh_exception.NoValidConnectionsError:
            client.close()
            raise SSHError(f"ssh {t}: connection refused (no SSH server on that port yet?)") from None
        except (socket.timeout, TimeoutError):
            client.close()
            raise SSHError(f"ssh {t}: timed out after {t.timeout_s:g}s") from None
        except (paramiko.SSHException, OSError) as e:
            client.close()
            msg = " ".join(str(e).split()) or type(e).__name__
            if "banner" in msg or "No existing session" in msg:  # a port that accepts but does not speak SSH in time
                msg = f"no SSH answer within {t.timeout_s:g}s (the pod's SSH server still starting, or not SSH on that port)"
            raise SSHError(f"ssh {t}: {msg}") from None
        client.get_transport().set_keepalive(max(1, round(t.keepalive_s)))
        self._client = client

    @property
    def client(self) -> paramiko.SSHClient:
        if self._client is None:
            self.connect()
        assert self._client is not None
        return self._client

    def run(self, command: str, out: Callable[[str], None] | None = None, timeout_s: float | None = None) -> tuple[int, str]:
        """Run `command` in the login shell; stdout and stderr, merged, go to `out` line by line as
        they come. Returns (exit status, the output's last 4 KB)."""
        transport = self.client.get_transport()
        chan = transport.open_session()
        try:
            chan.set_combine_stderr(True)
            chan.exec_command(command)
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            buf, tail = b"", b""
            heard = time.monotonic()
            while True:
                if chan.recv_ready():
                    heard = time.monotonic()
                    chunk = chan.recv(65536)
                    tail = (tail + chunk)[-4096:]
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        if out:
                            out(line.decode("utf-8", "replace"))
                    continue
                if chan.exit_status_ready() and not chan.recv_ready():
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise SSHError(f"ssh {self.target}: command timed out after {timeout_s:g}s: {_short(command)}")
                if time.monotonic() - heard >= self.target.keepalive_s:
                    self._still_there(transport, command)
                    heard = time.monotonic()
                chan.status_event.wait(0.05)
            if buf and out:
                out(buf.decode("utf-8", "replace"))
            return chan.recv_exit_status(), tail.decode("utf-8", "replace")
        finally:
            chan.close()

    def _still_there(self, transport: paramiko.Transport, command: str) -> None:
        """A quiet command: ask the server something it must answer, within keepalive_s."""
        k = self.target.keepalive_s
        try:
            transport.open_session(timeout=k).close()
        except (paramiko.SSHException, EOFError, OSError):
            raise SSHError(
                f"ssh {self.target}: the pod stopped answering (nothing for {2 * k:g}s, keepalive unanswered): "
                f"it stopped or vanished; `pipeline pods list` shows it: {_short(command)}"
            ) from None

    def check(self, command: str, out: Callable[[str], None] | None = None, timeout_s: float | None = 600.0, what: str | None = None) -> str:
        """Run and return the output's tail; a non-zero exit is an SSHError with its last line."""
        code, tail = self.run(command, out, timeout_s)
        if code != 0:
            last = why_line(tail)
            raise SSHError(f"ssh {self.target}: {what or _short(command)} exited {code}" + (f": {last}" if last else ""))
        return tail

    def put(self, local: str | Path, remote: str, mode: int | None = None) -> None:
        with self.client.open_sftp() as sftp:
            try:
                sftp.put(str(local), remote)
                if mode is not None:
                    sftp.chmod(remote, mode)
            except OSError as e:
                raise SSHError(f"ssh {self.target}: cannot copy {local} to {remote}: {e}") from None

    def write(self, remote: str, data: str | bytes, mode: int = 0o600) -> None:
        """Write a file from memory (a token, a bundle): nothing passes through a command line."""
        with self.client.open_sftp() as sftp:
            try:
                with sftp.open(remote, "wb") as f:
                    f.chmod(mode)
                    f.write(data.encode() if isinstance(data, str) else data)
            except OSError as e:
                raise SSHError(f"ssh {self.target}: cannot write {remote}: {e}") from None

    def get(self, remote: str, local: str | Path) -> None:
        with self.client.open_sftp() as sftp:
            try:
                sftp.get(remote, str(local))
            except OSError as e:
                raise SSHError(f"ssh {self.target}: cannot copy {remote} to {local}: {e}") from None


# pip prints "ERROR: ..." and then its "[notice] To update, run: ..." hint; a traceback ends in
# "SomeError: ..."; tools print "error: ...". The cause is that line, not the output's last one.
_CAUSE = re.compile(r"^(ERROR|Error|error|FATAL|fatal)\b[:\s]|^[A-Za-z_.]*(Error|Exception)\b: ")


def why_line(output: str) -> str:
    """The line of a failed command's output that says why it failed: the last `ERROR:`-like line,
    else the last line that is not a `[notice]`, else ""."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    cause = [ln for ln in lines if _CAUSE.match(ln)]
    if cause:
        return cause[-1]
    plain = [ln for ln in lines if not ln.startswith("[notice]")]
    return plain[-1] if plain else (lines[-1] if lines else "")


def _short(command: str) -> str:
    one = " ".join(command.split())
    return one if len(one) <= 80 else one[:77] + "..."
