"""Starts a real Redis, a real nginx gRPC balancer and avatar-server instances on loopback.

Used by the scale-out benchmark and the scale-out tests: every part is the real
program (redis-server, Debian's nginx, `avatar-server` as `python -m avatar_server`
of this interpreter), each on a free loopback port, with its files in one temporary
folder. Each part may be pinned to CPUs of its own (`cpus`, a taskset list such as
"4-7"), so a benchmark's parts do not compete for cores.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

REPO = Path(__file__).resolve().parents[1]
NGINX_TEMPLATE = REPO / "deploy" / "nginx" / "avatar-grpc.conf.template"


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, *, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    """Waits until something accepts connections on the loopback port."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"{process.args[0]} exited with {process.returncode} before listening"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


def missing_programs() -> list[str]:
    """Which of redis-server and nginx are not installed."""
    return [name for name in ("redis-server", "nginx") if which_program(name) is None]


def which_program(name: str) -> str | None:
    """The program on PATH (the carried one first, on the GPU machine), else Debian's place."""
    return shutil.which(name) or next(
        (
            str(path)
            for path in (Path("/usr/sbin") / name, Path("/usr/bin") / name)
            if path.exists()
        ),
        None,
    )


def pinned(argv: list[str], cpus: str | None) -> list[str]:
    """`argv` run on the CPUs listed in `cpus` (taskset's list format), or as is."""
    if not cpus:
        return argv
    taskset = shutil.which("taskset")
    if taskset is None:
        raise FileNotFoundError("taskset is not installed (util-linux); it pins processes to CPUs")
    return [taskset, "--cpu-list", cpus, *argv]  # taskset execs argv: the pid stays the same


def _launch_quiet(argv: list[str], port: int) -> subprocess.Popen:
    """Starts a helper daemon with its output discarded and waits until it listens on `port`."""
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, timeout_s=10, process=process)
    return process


def _stop(process: subprocess.Popen, *, timeout_s: float = 10.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class RedisServer:
    """A throw-away redis-server without persistence."""

    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    cpus: str | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = which_program("redis-server")
        if binary is None:
            raise FileNotFoundError(
                "redis-server is not installed (apt-get install -y redis-server)"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = _launch_quiet(
            pinned([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--dir", str(self.workdir), "--loglevel", "warning"],
                   self.cpus),
            self.port,
        )
        return self

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)


def render_nginx_conf(listen_port: int, upstream_ports: list[int], workdir: Path) -> Path:
    """A full nginx.conf: the deploy template's http{} part in a main part for a local run."""
    servers = "\n    ".join(
        f"server 127.0.0.1:{port} max_fails=1 fail_timeout=10s;" for port in upstream_ports
    )
    http_part = Template(NGINX_TEMPLATE.read_text()).safe_substitute(
        AVATAR_BALANCER_PORT=f"127.0.0.1:{listen_port}",
        AVATAR_UPSTREAM_SERVERS=servers,
        AVATAR_RESOLVER="",
    )
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "avatar-grpc.conf").write_text(http_part)
    # Run as root, nginx's workers would switch to its built-in user nobody:nogroup, which a
    # bare machine may lack and which cannot use the caller's temporary folders: keep root.
    workers_user = "user root root;\n" if os.geteuid() == 0 else ""
    main = f"""# Local run of deploy/nginx/avatar-grpc.conf.template (by bench/local_cluster.py).
{workers_user}daemon off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log info;
events {{ worker_connections 4096; }}
http {{
    access_log {workdir}/access.log;
    client_body_temp_path {workdir}/client_body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    include {workdir}/avatar-grpc.conf;
}}
"""
    conf = workdir / "nginx.conf"
    conf.write_text(main)
    return conf


def check_nginx_conf(conf: Path) -> subprocess.CompletedProcess:
    """`nginx -t` on a rendered config; the result's stderr says why it failed."""
    binary = which_program("nginx")
    if binary is None:
        raise FileNotFoundError("nginx is not installed (apt-get install -y nginx-light)")
    return subprocess.run(
        [
            binary,
            "-t",
            "-c",
            str(conf),
            "-p",
            str(conf.parent),
            "-e",
            str(conf.parent / "error.log"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


@dataclass
class NginxBalancer:
    """Debian's nginx running the deploy template in front of the given instance ports."""

    workdir: Path
    upstream_ports: list[int]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    cpus: str | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> NginxBalancer:
        conf = render_nginx_conf(self.port, self.upstream_ports, self.workdir)
        checked = check_nginx_conf(conf)
        if checked.returncode != 0:
            raise RuntimeError(f"nginx -t failed: {checked.stderr}")
        self.process = _launch_quiet(
            pinned([which_program("nginx") or "nginx", "-c", str(conf), "-p", str(self.workdir),
                    "-e", str(self.workdir / "error.log")], self.cpus),
            self.port,
        )
        return self

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)

    def error_log(self) -> str:
        path = self.workdir / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


@dataclass
class ServerInstance:
    """One `avatar-server` process with its own instance id and port."""

    instance_id: str
    workdir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    cpus: str | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, *, wait_s: float = 120.0) -> ServerInstance:
        self.start_process()
        self.wait_ready(timeout_s=wait_s)
        return self

    def start_process(self) -> None:
        """Starts the process without waiting, so several instances load their models at once."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env, "AVATAR_INSTANCE_ID": self.instance_id}
        # This interpreter, not a console script: on a machine where the project is only on
        # PYTHONPATH (the GPU machine's install, bench/device/) there is none.
        command = pinned([sys.executable, "-m", "avatar_server", "--port", str(self.port)], self.cpus)
        self.log_path = self.workdir / f"{self.instance_id}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, *, timeout_s: float) -> None:
        """Waits for the gRPC port (the server opens it only once its models are loaded)."""
        assert self.process is not None
        try:
            wait_for_port(self.port, timeout_s=timeout_s, process=self.process)
        except (RuntimeError, TimeoutError) as error:
            raise RuntimeError(
                f"{self.instance_id} did not start: {error}\n{self.log()[-3000:]}"
            ) from error

    def signal(self, signum: int) -> None:
        """Sends SIGTERM (drain) or SIGKILL (crash) to the instance's process only."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signum)

    def wait(self, timeout_s: float) -> int | None:
        """The exit code, or None if still running after `timeout_s`."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.signal(signal.SIGTERM)
            if self.wait(30) is None:
                self.signal(signal.SIGKILL)
                self.process.wait()
        if getattr(self, "_log", None) is not None:
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if hasattr(self, "log_path") else ""
