"""One typed settings object, read from the environment (LLMPULSE_*) and a YAML file.

Built once at start-up (`load_settings`) and passed down; nothing else reads the
environment. Precedence: init kwargs > env > YAML file > defaults.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import typing
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Callable

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationError, create_model, field_validator
import yaml
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    YamlConfigSettingsSource,
)

from llmpulse.processors.anomalies.config import AnomalyConfig
from llmpulse.processors.budgets import BudgetRule, BudgetsConfig
from llmpulse.processors.contracts import WorkflowContract
from llmpulse.processors.loops import LoopConfig
from llmpulse.processors.pricing import PriceOverride, PriceOverrides
from llmpulse.processors.redaction_config import RedactionSettings
from llmpulse.processors.dedup import DedupConfig
from llmpulse.processors.gate import GateConfig
from llmpulse.processors.governance import GovernanceConfig
from llmpulse.processors.policies import PoliciesConfig
from llmpulse.processors.validate import Limits
from llmpulse.ingest.otel_gateway_config import GatewayConfig
from llmpulse.ingest.controls_config import ControlsConfig
from llmpulse.processors.runtime.retry import RetryConfig
from llmpulse.processors.runtime.scale_config import ScaleConfig
from llmpulse.config_errors import ConfigError, problems, suggest

DEFAULT_CONFIG_FILE = "llmpulse.yaml"
_CONFIG_FILE: ContextVar[str | None] = ContextVar("llmpulse_config_file", default=None)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMPULSE_", env_nested_delimiter="__", extra="ignore")

    # Where local state lives: chDB data, the local Kafka broker, its jars.
    state_dir: Path = Path(".llmpulse")

    # Kafka
    kafka_bootstrap: str = "127.0.0.1:9092"
    events_topic: str = "llm.events"
    dlq_topic: str = "llm.events.dlq"
    findings_topic: str = "llm.findings"
    controls_topic: str = "llm.controls"  # kill switches, compacted (schemas/controls.py)
    topic_partitions: int = 4
    kafka_version: str = "4.1.1"

    # ClickHouse: `chdb:///abs/path` (embedded, default under state_dir) or `http://host:8123`.
    clickhouse_dsn: str = ""
    clickhouse_user: str = "default"
    clickhouse_password: SecretStr = SecretStr("")
    database: str = "llmpulse"
    retention_days: int = 90
    # A server cluster's name (its remote_servers entry, e.g. `llmpulse`): migrations then run
    # ON CLUSTER, Replicated tables behind Distributed ones (schemas/cluster.py). Empty: one server.
    clickhouse_cluster: str = Field("", pattern=r"^([A-Za-z_][A-Za-z0-9_]*)?$")

    # Worker
    worker_id: str = "llmpulse-worker"
    batch_max_events: int = 10_000
    batch_max_seconds: float = 0.25
    worker_web_port: int = 6066  # /metrics, /healthz, /readyz, /stats/, /query/
    # Bind address of those endpoints: 0.0.0.0 in a container so Prometheus and probes reach them.
    # /query/ still answers this machine only unless `query_token` is set (then any host with it).
    worker_web_host: str = "127.0.0.1"
    query_token: SecretStr = SecretStr("")
    # How long the worker waits for a Kafka broker at start before it exits with a message.
    kafka_wait_seconds: float = Field(30.0, ge=0)
    # Limits of a read-only query (`llmpulse sql`, report; the worker runs them on its ClickHouse thread).
    query_max_seconds: int = 60
    query_max_rows: int = 1_000_000
    # Above this RSS the worker hands freed heap pages back to the OS after every batch
    # (malloc_trim, a few ms), else only when idle. 0: only when idle.
    trim_above_mb: int = 640
    # A dead letter's copy in the DLQ is cut (and marked) beyond this; under the broker's
    # default message.max.bytes (1 MiB) with room for the headers.
    dlq_max_bytes: int = Field(900_000, ge=1024, le=1_000_000)
    # One retry policy for every I/O call of the worker, and when readiness says stalled.
    retry: RetryConfig = Field(default_factory=RetryConfig)
    # After a restart, detectors replay this much recent event time from ClickHouse.
    warmup_minutes: int = 120
    warmup_max_events: int = 500_000
    config_file: Path | None = None

    # Stages after validation, see processors/pipeline.py STAGES (validation always runs).
    stages: list[str] = Field(default_factory=lambda: ["redact", "price", "budgets", "contracts", "governance", "loops", "anomalies"])
    # Processor sections (each validated by its processor's own config model).
    budgets: list[dict[str, Any]] = Field(default_factory=list)  # processors/budgets.py
    contracts: dict[str, dict[str, Any]] = Field(default_factory=dict)  # processors/contracts.py
    eval_gate: GateConfig = Field(default_factory=GateConfig)  # per workflow, processors/gate.py
    governance: GovernanceConfig = Field(default_factory=GovernanceConfig)  # processors/governance.py
    prices: list[dict[str, Any]] = Field(default_factory=list)  # price overrides, processors/pricing.py
    price_overrides_file: Path | None = None
    loops: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per-workflow, processors/loops.py
    anomalies: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per-workflow, processors/anomalies.py
    redaction: RedactionSettings = Field(default_factory=RedactionSettings)  # processors/redaction_config.py
    dedup: DedupConfig = Field(default_factory=DedupConfig)  # duplicates by event_id, processors/dedup.py
    limits: Limits = Field(default_factory=Limits)  # what validation admits, processors/validate.py
    otlp_gateway: GatewayConfig = Field(default_factory=GatewayConfig)  # ingest/otel_gateway_config.py
    controls: ControlsConfig = Field(default_factory=ControlsConfig)  # the SDK's kill switches, ingest/controls_config.py
    policies: PoliciesConfig = Field(default_factory=PoliciesConfig)  # findings -> control actions, processors/policies.py
    scale: ScaleConfig = Field(default_factory=ScaleConfig)  # one worker or several, processors/runtime/scale_config.py

    # Paging and Grafana
    alertmanager_url: str = ""  # e.g. http://127.0.0.1:9093; empty = no direct paging
    grafana_url: str = ""
    grafana_token: SecretStr = SecretStr("")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config = _CONFIG_FILE.get() or os.environ.get("LLMPULSE_CONFIG_FILE") or DEFAULT_CONFIG_FILE
        yaml_source = _CheckedYaml(settings_cls, yaml_file=config)
        return (init_settings, env_settings, yaml_source)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_for_a_number(cls, value: Any, info: Any) -> Any:
        if cls.model_fields[info.field_name].annotation in (int, float):
            return no_boolean(value)
        return value

    @property
    def dsn(self) -> str:
        return self.clickhouse_dsn or f"chdb://{(self.state_dir / 'chdb').resolve()}"

    @property
    def dsn_shown(self) -> str:
        """The DSN for messages: a password in it masked."""
        return masked_url(self.dsn)

    @property
    def embedded(self) -> bool:
        return self.dsn.startswith("chdb:")

    @property
    def kafka_dir(self) -> Path:
        return self.state_dir / "kafka"


# A password in a URL's userinfo (`http://user:pass@host`: a DSN, the Alertmanager URL).
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@/\s]+@", re.IGNORECASE)


def masked_url(text: str) -> str:
    return _URL_PASSWORD.sub(r"\1**********@", text)


def no_boolean(value: Any) -> Any:
    """YAML 1.1 reads yes/on/true as a boolean, which pydantic would take as the number 1."""
    if isinstance(value, bool):
        raise ValueError("expected a number, not a boolean")
    return value


def config_file_in_use(config_file: Path | None = None) -> Path:
    """The YAML file `load_settings` reads (it may not exist: then only env and defaults)."""
    return Path(config_file or os.environ.get("LLMPULSE_CONFIG_FILE") or DEFAULT_CONFIG_FILE)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from env and the YAML file (`config_file`, else $LLMPULSE_CONFIG_FILE, else
    ./llmpulse.yaml), every section validated. Raises ConfigError: one line per problem,
    each naming its entry (`budgets[0].limit_usd: must be > 0 (got -5)`)."""
    used = config_file_in_use(config_file)
    env = sorted(k for k in os.environ if k.startswith("LLMPULSE_") and k != "LLMPULSE_CONFIG_FILE")
    source = " or ".join(([str(used)] if used.exists() else []) + (["LLMPULSE_* variables"] if env else []))
    named = config_file if config_file is not None else os.environ.get("LLMPULSE_CONFIG_FILE") or None
    if named is not None and not Path(named).exists():  # only the default file may be absent
        raise ConfigError([f"config file {named} not found"])
    if used.is_dir():  # pydantic-settings skips it silently: the operator's file would go unread
        raise ConfigError([f"config file {used} is a directory, not a YAML file"])
    token = _CONFIG_FILE.set(str(config_file) if config_file else None)
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(problems(exc, model=Settings), source) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {' '.join(str(exc).split())}"], source) from None
    except SettingsError as exc:  # a list or mapping setting whose variable is not JSON
        field = re.search(r'field "(\w+)"', str(exc))
        var = f"LLMPULSE_{field.group(1).upper()}" if field else "a LLMPULSE_* variable"
        raise ConfigError([f"{var}: not valid JSON (lists and mappings are set as JSON, "
                           f"e.g. LLMPULSE_STAGES='[\"redact\", \"price\"]')"], source) from None
    finally:
        _CONFIG_FILE.reset(token)
    found: list[str] = []
    for name, check in SECTION_CHECKS.items():
        try:
            check(settings)
        except ConfigError as exc:
            found += exc.problems
        except ValidationError as exc:
            found += problems(exc, (name,))
        except (ValueError, TypeError) as exc:
            found.append(f"{name}: {exc}")
    if found:
        raise ConfigError(found, source)
    return settings


def _duplicate_keys(node: yaml.Node | None, where: str = "") -> list[str]:
    """`path: duplicate key (line N)` for a key given twice in one mapping (PyYAML keeps the
    last one silently); keys brought in by a `<<:` merge may still be overridden."""
    found: list[str] = []
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found += _duplicate_keys(item, f"{where}[{i}]")
    elif isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if key.tag == "tag:yaml.org,2002:merge" or not isinstance(key, yaml.ScalarNode):
                continue
            at = f"{where}.{key.value}" if where else key.value
            if key.value in seen:
                found.append(f"{at}: duplicate key (line {key.start_mark.line + 1})")
            seen.add(key.value)
            found += _duplicate_keys(value, at)
    return found


class _CheckedYaml(YamlConfigSettingsSource):
    """The YAML file, refusing keys that are no setting (`budget:` for `budgets:`), a key given
    twice and a document that is no mapping."""

    def _read_file(self, file_path: Path) -> dict[str, Any]:
        text = Path(file_path).read_text(encoding="utf-8")
        duplicates = _duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader))
        if duplicates:
            raise ConfigError(duplicates, str(file_path))
        data = yaml.safe_load(text)
        if data is not None and not isinstance(data, dict):
            raise ConfigError([f"(top level): expected a mapping of settings (`key: value` lines), "
                               f"got a {type(data).__name__}"], str(file_path))
        unknown = [str(k) for k in data or {} if k not in Settings.model_fields]
        if unknown:
            raise ConfigError([f"{k}: unknown key{suggest(k, Settings.model_fields)}" for k in unknown],
                              str(file_path))
        return data or {}


# ---------------------------------------------------------------- sections checked at load
# Sections held as plain dicts (their processors build models from them) are validated here,
# entry by entry, so a mistake fails `load_settings` and names the entry. A check may
# normalise its section (types coerced as the processor expects). Add yours: name -> check.


def _check_budgets(s: Settings) -> None:
    _listed("budgets", s.budgets, BudgetRule)
    BudgetsConfig.from_config(s.budgets)  # across rules: unique ids


def _check_contracts(s: Settings) -> None:
    _each("contracts", s.contracts, WorkflowContract)


def _check_prices(s: Settings) -> None:
    _listed("prices", s.prices, PriceOverride)
    if s.price_overrides_file is not None:
        try:
            PriceOverrides.from_config(None, s.price_overrides_file)
        except (OSError, ValueError) as exc:
            raise ConfigError([f"price_overrides_file: {' '.join(str(exc).split())}"]) from None


def _check_overrides(section: str, cls: type) -> Callable[[Settings], None]:
    """Per-workflow overrides of a detector's dataclass config: known keys, right types, >= 0."""
    def check(s: Settings) -> None:
        model = _override_model(cls)
        setattr(s, section, _each(section, getattr(s, section), model, normalise=True))
    return check


def _listed(section: str, entries: list[Any], model: type[BaseModel]) -> None:
    """Each entry of a list section against `model`; every problem named `section[i].field`."""
    found = []
    for i, entry in enumerate(entries):
        try:
            model.model_validate(entry)
        except ValidationError as exc:
            found += problems(exc, (section, i), model)
    if found:
        raise ConfigError(found)


def _each(section: str, entries: dict[str, Any], model: type[BaseModel], normalise: bool = False) -> dict:
    if not isinstance(entries, dict):
        raise ConfigError([f"{section}: expected a mapping of workflow name -> settings"])
    found, out = [], {}
    for key, value in entries.items():
        try:
            checked = model.model_validate(value or {})
            out[key] = checked.model_dump(exclude_unset=True) if normalise else value
        except ValidationError as exc:
            found += problems(exc, (section, key), model)
    if found:
        raise ConfigError(found)
    return out


@functools.lru_cache(maxsize=None)
def _override_model(cls: type) -> type[BaseModel]:
    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        fields[f.name] = (Annotated[t, Field(ge=0), BeforeValidator(no_boolean)] if t in (int, float) else t, None)
    return create_model(f"{cls.__name__}Override", __config__=ConfigDict(extra="forbid"), **fields)


def _check_stages(s: Settings) -> None:
    from llmpulse.processors.pipeline import STAGES  # the pipeline imports this module

    bad = [f"stages[{i}]: unknown stage `{st}`{suggest(st, STAGES)}; known: {', '.join(STAGES)}"
           for i, st in enumerate(s.stages) if st not in STAGES]
    if bad:
        raise ConfigError(bad)


SECTION_CHECKS: dict[str, Callable[[Settings], None]] = {
    "stages": _check_stages,
    "budgets": _check_budgets,
    "contracts": _check_contracts,
    "prices": _check_prices,
    "loops": _check_overrides("loops", LoopConfig),
    "anomalies": _check_overrides("anomalies", AnomalyConfig),
}
