"""SSH against OpenSSH sshd on 127.0.0.1: commands stream, files copy, host keys are verified
(unknown and changed keys refused, TOFU only when asked, and then recorded), errors are one line."""

from __future__ import annotations

import pytest

from pipeline.pods.ssh import SSH, SSHError, SSHTarget
from tests.pipeline.pods.conftest import free_port


def target(sshd, known, **kw) -> SSHTarget:
    return SSHTarget("127.0.0.1", sshd.port, key_file=str(kw.pop("key", sshd.client_key)), known_hosts=known, **kw)


def test_command_output_streams_line_by_line_and_exit_status_returns(sshd, tmp_path):
    lines: list[str] = []
    with SSH(target(sshd, sshd.known_hosts(tmp_path / "kh"))) as ssh:
        code, tail = ssh.run("echo one; echo two; printf three; exit 3", out=lines.append)
        assert ssh.run("echo err >&2", out=lines.append) == (0, "err\n")  # stderr comes too
    assert code == 3 and lines == ["one", "two", "three", "err"] and tail == "one\ntwo\nthree"


def test_failed_command_is_one_line_with_its_last_output(sshd, tmp_path):
    with SSH(target(sshd, sshd.known_hosts(tmp_path / "kh"))) as ssh:
        with pytest.raises(SSHError, match=rf"^ssh root@127.0.0.1:{sshd.port}: false-ish exited 4: boom$"):
            ssh.check("echo hi; echo boom; exit 4", what="false-ish")
        with pytest.raises(SSHError, match=r"command timed out after 0.5s: sleep 5"):
            ssh.run("sleep 5", timeout_s=0.5)


def test_files_copy_both_ways(sshd, tmp_path):
    src = tmp_path / "a.bin"
    src.write_bytes(bytes(range(256)) * 100)
    with SSH(target(sshd, sshd.known_hosts(tmp_path / "kh"))) as ssh:
        ssh.put(src, str(tmp_path / "b.bin"))
        ssh.get(str(tmp_path / "b.bin"), tmp_path / "c.bin")
        ssh.write(str(tmp_path / "secret"), "s3cr3t")
    assert (tmp_path / "c.bin").read_bytes() == src.read_bytes()
    assert (tmp_path / "secret").read_text() == "s3cr3t" and (tmp_path / "secret").stat().st_mode & 0o777 == 0o600


def test_unknown_host_is_refused_by_default(sshd, tmp_path):
    with pytest.raises(SSHError, match=r"unknown host key \(ssh-ed25519 SHA256:.*\), not in .*kh: check it and add it, or connect once with --trust-new-host") as e:
        SSH(target(sshd, tmp_path / "kh")).connect()
    assert "\n" not in str(e.value) and not (tmp_path / "kh").exists()


def test_trust_on_first_use_records_the_key_then_checks_it(sshd, tmp_path):
    kh, seen = tmp_path / "kh", []
    with SSH(target(sshd, kh, trust_new=True), log=seen.append) as ssh:
        assert ssh.run("true")[0] == 0
    assert kh.read_text() == f"[127.0.0.1]:{sshd.port} {sshd.host_pub}\n" and "recorded the host key" in seen[0]
    with SSH(target(sshd, kh)) as ssh:  # now known: no flag needed
        assert ssh.run("true")[0] == 0


def test_changed_host_key_is_refused_even_with_trust_new(sshd, tmp_path):
    kh = tmp_path / "kh"
    other = (sshd.dir / "other.pub").read_text().split()[:2]  # a key of the same type the host does not have
    kh.write_text(f"[127.0.0.1]:{sshd.port} {' '.join(other)}\n")
    with pytest.raises(SSHError, match=r"the host key changed \(now SHA256:.*\): a new pod on a reused address.*remove its line from"):
        SSH(target(sshd, kh, trust_new=True)).connect()


def test_failed_auth_is_one_line(sshd, tmp_path):
    with pytest.raises(SSHError, match=rf"^ssh root@127.0.0.1:{sshd.port}: authentication failed for user root with key .*other$"):
        SSH(target(sshd, sshd.known_hosts(tmp_path / "kh"), key=sshd.other_key)).connect()


def test_refused_connection_is_one_line(sshd, tmp_path):
    port = free_port()
    t = SSHTarget("127.0.0.1", port, key_file=str(sshd.client_key), known_hosts=tmp_path / "kh", timeout_s=2)
    with pytest.raises(SSHError, match=rf"^ssh root@127.0.0.1:{port}: connection refused \(no SSH server on that port yet\?\)$"):
        SSH(t).connect()


def test_silent_server_times_out(tmp_path, sshd):
    import socket

    with socket.socket() as s:  # accepts, never speaks SSH
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        t = SSHTarget("127.0.0.1", s.getsockname()[1], key_file=str(sshd.client_key), known_hosts=tmp_path / "kh", timeout_s=0.5)
        with pytest.raises(SSHError, match=r": (timed out after 0.5s|no SSH answer within 0.5s \(the pod's SSH server still starting, or not SSH on that port\))$"):
            SSH(t).connect()


class FreezingProxy:
    """A TCP relay to sshd that can go silent like a vanished pod: the connection stays open, and
    nothing more passes either way."""

    def __init__(self, to_port: int):
        import socket
        import threading

        self.to_port, self.frozen = to_port, threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.socks: list = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        import socket
        import threading

        conn, _ = self.server.accept()
        up = socket.create_connection(("127.0.0.1", self.to_port))
        self.socks += [conn, up]
        for a, b in ((conn, up), (up, conn)):
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a, b):
        try:
            while data := a.recv(65536):
                if self.frozen.is_set():
                    continue  # swallowed: the pod is gone
                b.sendall(data)
        except OSError:
            pass

    def close(self):
        for s in [self.server, *self.socks]:
            s.close()


def test_a_pod_that_vanishes_mid_command_ends_it_with_one_line(sshd, tmp_path):
    import threading

    proxy = FreezingProxy(sshd.port)
    known = tmp_path / "kh"
    known.write_text(f"[127.0.0.1]:{proxy.port} {sshd.host_pub}\n")
    t = SSHTarget("127.0.0.1", proxy.port, key_file=str(sshd.client_key), known_hosts=known, keepalive_s=0.5)
    result: list = []

    def on_line(line):
        if line == "started":
            proxy.frozen.set()  # the pod vanishes while the command runs

    def go():
        try:
            with SSH(t) as ssh:
                result.append(ssh.run("echo started; sleep 600", out=on_line))
        except SSHError as e:
            result.append(e)

    th = threading.Thread(target=go, daemon=True)
    th.start()
    th.join(60)  # without keepalives: the full 600 s, or for ever
    proxy.close()
    assert not th.is_alive(), "ssh run still waiting on a vanished pod"
    [err] = result
    assert isinstance(err, SSHError) and str(err).startswith(f"ssh root@127.0.0.1:{proxy.port}: the pod stopped answering (nothing for 1s, keepalive unanswered)")
