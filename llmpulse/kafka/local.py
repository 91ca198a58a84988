"""A real single-node Apache Kafka (KRaft) broker on 127.0.0.1 for dev, demo and tests.

No release tarball is needed: the broker jars are resolved from Maven Central with
`mvn dependency:copy-dependencies`, KRaft storage is formatted once, and the broker
runs as `java kafka.Kafka server.properties`. Readiness is asked of the broker
itself (metadata request), not read from its log. Every step is idempotent and a
broker already answering on the port is reused.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from confluent_kafka.admin import AdminClient


class LocalKafkaError(RuntimeError):
    pass


@dataclass(frozen=True)
class LocalKafka:
    home: Path  # e.g. .llmpulse/kafka
    bootstrap: str = "127.0.0.1:9092"
    version: str = "4.1.1"

    @property
    def host(self) -> str:
        return self.bootstrap.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.bootstrap.rsplit(":", 1)[1])

    @property
    def libs(self) -> Path:
        return self.home / "libs" / self.version

    @property
    def data_dir(self) -> Path:
        return self.home / f"data-{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.home / f"broker-{self.port}.pid"

    @property
    def log_file(self) -> Path:
        return self.home / f"broker-{self.port}.log"

    # -- jars -------------------------------------------------------------------
    def fetch(self) -> Path:
        """Resolve the broker jars with Maven (once per version)."""
        marker = self.libs / f"kafka_2.13-{self.version}.jar"
        if marker.exists():
            return self.libs
        mvn = shutil.which("mvn")
        if not mvn:
            raise LocalKafkaError("Maven (`mvn`) is required to fetch the Kafka broker jars: apt-get install maven")
        _require_java()
        self.home.mkdir(parents=True, exist_ok=True)
        pom = self.home / "pom.xml"
        pom.write_text(resources.files("llmpulse.kafka").joinpath("pom.xml").read_text())
        cmd = [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
               f"-Dkafka.version={self.version}", f"-DoutputDirectory={self.libs.resolve()}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not marker.exists():
            raise LocalKafkaError(f"mvn could not resolve kafka_2.13:{self.version}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        return self.libs

    # -- lifecycle ----------------------------------------------------------------
    def is_up(self, timeout: float = 1.0) -> bool:
        return broker_answers(self.bootstrap, timeout)

    def up(self, timeout: float = 90.0) -> str:
        """Start the broker unless one answers already. Returns 'reused' or 'started'."""
        if self.is_up():
            return "reused"
        java = _require_java()
        self.fetch()
        props = self._write_config()
        if not (self.data_dir / "meta.properties").exists():
            self._format(java, props)
        log4j = self.home / "log4j2.properties"
        log4j.write_text(resources.files("llmpulse.kafka").joinpath("log4j2.properties").read_text())
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                [java, "-Xms256m", "-Xmx768m", f"-Dlog4j2.configurationFile={log4j.resolve()}",
                 "-cp", f"{self.libs.resolve()}/*", "kafka.Kafka", str(props.resolve())],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LocalKafkaError(f"broker exited with {proc.returncode}; see {self.log_file}:\n{_tail(self.log_file)}")
            if self.is_up():
                return "started"
            time.sleep(0.5)
        raise LocalKafkaError(f"broker did not answer on {self.bootstrap} within {timeout:.0f}s; see {self.log_file}")

    def down(self, timeout: float = 30.0) -> bool:
        """Stop the broker this project started. Returns False when none was running."""
        pid = self._pid()
        if pid is None:
            return False
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            self.pid_file.unlink(missing_ok=True)
            return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True

    def status(self) -> dict:
        return {"bootstrap": self.bootstrap, "answering": self.is_up(), "pid": self._pid(),
                "version": self.version, "jars": self.libs.exists(), "log": str(self.log_file)}

    # -- internals ----------------------------------------------------------------
    def _pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) else None

    def _write_config(self) -> Path:
        self.home.mkdir(parents=True, exist_ok=True)
        controller = f"{self.host}:{self.port + 1}"
        props = self.home / f"server-{self.port}.properties"
        props.write_text("\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers={controller}",
            f"listeners=PLAINTEXT://{self.bootstrap},CONTROLLER://{controller}",
            f"advertised.listeners=PLAINTEXT://{self.bootstrap}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=PLAINTEXT",
            f"log.dirs={self.data_dir.resolve()}",
            "num.partitions=4",
            # Single node: every internal topic has one replica.
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=true",
            "",
        ]))
        return props

    def _format(self, java: str, props: Path) -> None:
        cluster_id = new_cluster_id()
        proc = subprocess.run(
            [java, "-cp", f"{self.libs.resolve()}/*", "kafka.tools.StorageTool", "format",
             "-t", cluster_id, "-c", str(props.resolve()), "--standalone"],
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            raise LocalKafkaError(f"formatting KRaft storage failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def new_cluster_id() -> str:
    """A KRaft cluster id (16 random bytes, URL-safe base64) that the storage tool's argument
    parser cannot take for an option: one in 64 of them starts with '-' (Kafka's own
    Uuid.randomUuid draws again in that case too)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def broker_answers(bootstrap: str, timeout: float = 1.0) -> bool:
    """Does a broker (any, not only ours) answer a metadata request? Silent while it does not."""
    try:
        meta = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0,
                            "logger": _quiet}).list_topics(timeout=timeout)
        return bool(meta.brokers)
    except Exception:
        return False


class BrokerUnreachable(RuntimeError):
    """No Kafka broker answered within `kafka_wait_seconds`; the message says what to do."""


def wait_for_broker(bootstrap: str, wait_seconds: float) -> None:
    """Return once a broker answers at `bootstrap`; raise BrokerUnreachable after `wait_seconds`
    (the worker at start, and the commands that publish, rather than queue events forever)."""
    deadline = time.monotonic() + wait_seconds
    while not broker_answers(bootstrap, timeout=2.0):
        if time.monotonic() >= deadline:
            raise BrokerUnreachable(
                f"no Kafka broker answered at {bootstrap} within {wait_seconds:g}s. "
                "Start the local one with `llmpulse kafka up`, or point llmpulse at yours with "
                "LLMPULSE_KAFKA_BOOTSTRAP=host:port (or `kafka_bootstrap:` in the config file).")
        time.sleep(1.0)


def _require_java() -> str:
    java = shutil.which("java")
    if not java:
        raise LocalKafkaError("Java 17+ is required to run the local Kafka broker: apt-get install openjdk-17-jre-headless")
    return java


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class _Quiet:
    """librdkafka logger that swallows 'connection refused' noise while polling readiness."""

    def log(self, *args: object, **kwargs: object) -> None:
        pass

    def __getattr__(self, name: str):
        return self.log


_quiet = _Quiet()
