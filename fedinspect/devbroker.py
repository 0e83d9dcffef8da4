"""A Mosquitto child process with a generated config: loopback, a free port, its own persistence and log.

Used by the test suite, the benchmarks and the demo. Not for production brokers: deploy/ has those configs.
Variants: password file + ACL (``users``, ``acl_lines``), TLS (``tls``), and extra config lines.
"""

from __future__ import annotations

import getpass
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from runtime.processes import die_with_parent

INSTALL_HINT = "mosquitto is not installed: run `sudo apt-get install -y mosquitto` (bash .ci/run does this)"


def find_mosquitto() -> str | None:
    """The mosquitto binary; Debian installs it in /usr/sbin, which a non-root PATH often lacks."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_mosquitto(
    binary: str, config_file: Path, host: str, port: int, log_file: Path | None = None, timeout: float = 10.0
) -> subprocess.Popen[bytes]:
    """Start mosquitto with ``config_file`` and wait until it accepts connections on host:port."""
    process = subprocess.Popen(
        [binary, "-c", str(config_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=die_with_parent,  # a killed test run or demo leaves no broker behind
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = process.stderr.read().decode() if process.stderr else ""
            log = log_file.read_text() if log_file is not None and log_file.exists() else ""
            raise RuntimeError(f"mosquitto exited at start-up:\n{err}\n{log}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    process.wait()
    raise RuntimeError(f"mosquitto did not listen on {host}:{port} within {timeout} s")


@dataclass(frozen=True)
class TlsFiles:
    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = True


@dataclass
class MosquittoBroker:
    """One broker process; ``restart()`` keeps the port and the persistence file."""

    workdir: Path
    users: dict[str, str] = field(default_factory=dict)
    acl_lines: list[str] = field(default_factory=list)
    tls: TlsFiles | None = None
    extra_config: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise FileNotFoundError(INSTALL_HINT)
        self.binary = binary
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "data").mkdir(exist_ok=True)
        self.log_file = self.workdir / "mosquitto.log"
        self.config_file = self.workdir / "mosquitto.conf"
        self._write_config()

    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'false' if self.users else 'true'}",
            "persistence true",
            f"persistence_location {self.workdir / 'data'}/",
            "autosave_interval 1",
            "max_queued_messages 100000",
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            # Small messages (acks, transfer statuses) would otherwise wait ~40 ms for a delayed ACK.
            "set_tcp_nodelay true",
            # Started as root, mosquitto switches to this user; keep it the one that owns workdir.
            f"user {getpass.getuser()}",
        ]
        if self.users:
            passwd = self.workdir / "passwd"
            passwd.write_text("")
            for user, password in self.users.items():
                mosquitto_passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
                subprocess.run([mosquitto_passwd, "-b", str(passwd), user, password], check=True)
            passwd.chmod(0o600)
            lines.append(f"password_file {passwd}")
        if self.acl_lines:
            acl = self.workdir / "acl"
            acl.write_text("\n".join(self.acl_lines) + "\n")
            acl.chmod(0o600)
            lines.append(f"acl_file {acl}")
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca_file}",
                f"certfile {self.tls.cert_file}",
                f"keyfile {self.tls.key_file}",
                f"require_certificate {'true' if self.tls.require_certificate else 'false'}",
            ]
        lines += self.extra_config
        self.config_file.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> None:
        assert self.process is None, "broker already running"
        self.process = start_mosquitto(self.binary, self.config_file, self.host, self.port, self.log_file, timeout)

    def _end(self, sig: int) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def stop(self) -> None:
        """Graceful stop (SIGTERM): mosquitto saves its persistence file."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        self._end(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""
