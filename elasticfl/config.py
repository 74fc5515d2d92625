"""Run configuration: pydantic v2 models, loadable from YAML, buildable in Python.

Unknown keys are rejected, and every validation error is turned into one
`ConfigError` whose lines name the field (``task.lr``) and what to do about it.
Environment variables are read here and nowhere else (`Environment`).
"""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

__all__ = [
    "RunConfig",
    "RunSection",
    "ClassificationTaskConfig",
    "CustomTaskConfig",
    "DataConfig",
    "PartitionConfig",
    "CohortConfig",
    "ExecutorConfig",
    "FedAvgConfig",
    "FedAvgMConfig",
    "StrategyConfig",
    "CheckpointConfig",
    "ClusterConfig",
    "EvaluationConfig",
    "Environment",
    "DEFAULT_STORAGE",
]

DEFAULT_STORAGE = "elasticfl-runs"
IMPORT_PATH_HINT = "an import path like 'package.module:name'"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _check_import_path(value: str | None, field: str) -> str | None:
    if value is None:
        return value
    module, sep, attr = value.partition(":")
    if not sep or not module or not attr.replace(".", "").replace("_", "a").isalnum():
        raise ValueError(f"{field} must be {IMPORT_PATH_HINT}, got {value!r}")
    return value


class RunSection(_Section):
    """What the run is called, the seed every random choice derives from, how long it lasts."""

    name: str = Field("run", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = Field(0, ge=0)
    rounds: int = Field(10, ge=1)


class ClassificationTaskConfig(_Section):
    """The built-in torch classifier: a model, SGD local training, accuracy/loss evaluation."""

    type: Literal["classification"] = "classification"
    model: str = "mlp"  # "mlp", "linear", or an import path to a factory(input_dim, num_classes) -> nn.Module
    hidden: list[int] = Field(default_factory=lambda: [64])
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    train: str | None = None  # optional import path replacing the built-in local training loop
    evaluate: str | None = None  # optional import path replacing the built-in evaluation

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if v in ("mlp", "linear"):
            return v
        return _check_import_path(v, "model (or one of 'mlp', 'linear')")  # type: ignore[return-value]

    @field_validator("train", "evaluate")
    @classmethod
    def _paths(cls, v: str | None) -> str | None:
        return _check_import_path(v, "this field")


class CustomTaskConfig(_Section):
    """User code implementing the numpy Task protocol (see elasticfl.tasks.Task)."""

    type: Literal["custom"]
    path: str  # import path of a class or factory returning a Task
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return _check_import_path(v, "path")  # type: ignore[return-value]


TaskConfig = Annotated[Union[ClassificationTaskConfig, CustomTaskConfig], Field(discriminator="type")]


class PartitionConfig(_Section):
    """How training rows are split over clients: iid, dirichlet (alpha), shards (shards_per_client)."""

    name: Literal["iid", "dirichlet", "shards"] = "iid"
    alpha: float = Field(0.5, gt=0)
    shards_per_client: int = Field(2, ge=1)
    seed: int | None = Field(None, ge=0)  # default: the run seed

    def params(self) -> dict[str, Any]:
        return {"dirichlet": {"alpha": self.alpha}, "shards": {"shards_per_client": self.shards_per_client}}.get(
            self.name, {}
        )


class DataConfig(_Section):
    dataset: str = "digits"  # digits | mnist | cifar10 | none | import path returning a Dataset
    root: str | None = None  # folder holding mnist/cifar10 files
    num_clients: int = Field(100, ge=1)
    partition: PartitionConfig = Field(default_factory=PartitionConfig)

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        if v in ("digits", "mnist", "cifar10", "none"):
            return v
        return _check_import_path(v, "dataset (or one of digits, mnist, cifar10, none)")  # type: ignore[return-value]


class CohortConfig(_Section):
    """Who trains each round. Give clients_per_round or fraction (of data.num_clients), not both."""

    clients_per_round: int | None = Field(None, ge=1)
    fraction: float | None = Field(None, gt=0, le=1)
    min_clients: int | None = Field(None, ge=1)  # fewer successful updates than this fails the round

    @model_validator(mode="after")
    def _one_of(self) -> "CohortConfig":
        if self.clients_per_round is not None and self.fraction is not None:
            raise ValueError("set either cohort.clients_per_round or cohort.fraction, not both")
        return self

    def size(self, num_clients: int) -> int:
        if self.clients_per_round is not None:
            return self.clients_per_round
        if self.fraction is not None:
            return max(1, math.ceil(self.fraction * num_clients))
        return num_clients


class ExecutorConfig(_Section):
    """Executor actors and the resources each asks Ray for."""

    count: int | None = Field(None, ge=1)  # default: as many as the cluster's resources fit
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    accelerator_type: str | None = None  # e.g. "A100", "H100", "TPU-V4"
    resources: dict[str, float] = Field(default_factory=dict)  # custom resources, e.g. {site_a: 1}
    unit_size: int | None = Field(None, ge=1)  # clients per work unit; default ~25 (see selection.py)
    max_unit_retries: int = Field(3, ge=0)  # re-runs of one work unit whose executor died
    placement_timeout_s: float = Field(120.0, gt=0)  # executors not placed by then: a clear error, not a hang

    @field_validator("num_gpus")
    @classmethod
    def _gpus(cls, v: float) -> float:
        if v > 1 and not float(v).is_integer():
            raise ValueError("num_gpus above 1 must be a whole number (Ray only splits a single GPU)")
        return v


class _WeightedMeanConfig(_Section):
    # Precision of the weighted sums: "auto" is float64 up to 2**24 parameters, float32 above.
    accumulate: Literal["auto", "float64", "float32"] = "auto"


class FedAvgConfig(_WeightedMeanConfig):
    name: Literal["fedavg"] = "fedavg"


class FedAvgMConfig(_WeightedMeanConfig):
    name: Literal["fedavgm"]
    server_lr: float = Field(1.0, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)


StrategyConfig = Annotated[Union[FedAvgConfig, FedAvgMConfig], Field(discriminator="name")]


class CheckpointConfig(_Section):
    storage: str | None = None  # file:// path, s3://bucket/prefix or gs://bucket/prefix; default ./elasticfl-runs
    every: int = Field(1, ge=1)  # checkpoint every N rounds (the last round is always saved)
    keep_last: int = Field(3, ge=1)
    endpoint_url: str | None = None  # S3-compatible endpoint; default $AWS_ENDPOINT_URL

    @field_validator("storage")
    @classmethod
    def _scheme(cls, v: str | None) -> str | None:
        if v and "://" in v and v.split("://", 1)[0] not in ("file", "s3", "gs"):
            raise ValueError("storage must be a local path, file://, s3:// or gs:// URI")
        return v


class ClusterConfig(_Section):
    address: str | None = None  # None: start an embedded local Ray; "auto" or host:port: join a cluster
    namespace: str = "elasticfl"
    dashboard: bool = True  # start the Ray dashboard with the embedded local Ray
    runtime_env: dict[str, Any] = Field(default_factory=dict)  # working_dir / py_modules / pip for user code


class EvaluationConfig(_Section):
    every: int = Field(1, ge=0)  # centralised evaluation every N rounds; 0 turns it off


class RunConfig(_Section):
    run: RunSection = Field(default_factory=RunSection)
    task: TaskConfig = Field(default_factory=ClassificationTaskConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    cohort: CohortConfig = Field(default_factory=CohortConfig)
    executors: ExecutorConfig = Field(default_factory=ExecutorConfig)
    strategy: StrategyConfig = Field(default_factory=FedAvgConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)

    @model_validator(mode="after")
    def _consistent(self) -> "RunConfig":
        n = self.data.num_clients
        size = self.cohort.size(n)
        if size > n:
            raise ValueError(
                f"cohort.clients_per_round ({size}) exceeds data.num_clients ({n}); lower it or add clients"
            )
        if self.cohort.min_clients is not None and self.cohort.min_clients > size:
            raise ValueError(
                f"cohort.min_clients ({self.cohort.min_clients}) exceeds the cohort size ({size}); lower it"
            )
        if self.data.dataset == "none" and isinstance(self.task, ClassificationTaskConfig):
            raise ValueError("data.dataset 'none' needs a task of type 'custom' that brings its own data")
        return self

    # -- loading -----------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> "RunConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of sections (run, task, data, ...), got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_explain(exc, source)) from None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> "RunConfig":
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} not found; pass the path of a YAML file like examples/digits.yaml")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from None
        return cls.from_dict(data, source=str(p))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def with_overrides(self, **sections: dict[str, Any]) -> "RunConfig":
        """A copy with some fields replaced, e.g. ``with_overrides(run={"rounds": 5})``."""
        data = self.to_dict()
        for section, values in sections.items():
            if section not in data:
                raise ConfigError(f"unknown config section {section!r}")
            data[section] = {**data[section], **values}
        return RunConfig.from_dict(data, source="overrides")

    def resolved_storage(self, env: "Environment | None" = None) -> str:
        env = env or Environment.read()
        return self.checkpoint.storage or env.storage or DEFAULT_STORAGE

    def resolved_endpoint(self, env: "Environment | None" = None) -> str | None:
        env = env or Environment.read()
        return self.checkpoint.endpoint_url or env.s3_endpoint_url


@dataclass(frozen=True)
class Environment:
    """The environment variables elasticfl honours, read in this one place."""

    storage: str | None  # ELASTICFL_STORAGE: default checkpoint storage
    s3_endpoint_url: str | None  # AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL
    ray_address: str | None  # RAY_ADDRESS: the cluster the CLI talks to

    @classmethod
    def read(cls) -> "Environment":
        e = os.environ
        return cls(
            storage=e.get("ELASTICFL_STORAGE") or None,
            s3_endpoint_url=e.get("AWS_ENDPOINT_URL_S3") or e.get("AWS_ENDPOINT_URL") or None,
            ray_address=e.get("RAY_ADDRESS") or None,
        )


# -- error messages ------------------------------------------------------------------

def _explain(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: {exc.error_count()} problem(s) in the config"]
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not _is_union_tag(p)]
        field = ".".join(loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {field}: unknown field. {_suggest(loc)}")
        elif err["type"] == "union_tag_invalid":
            ctx = err.get("ctx", {})
            lines.append(
                f"  {field}: {ctx.get('tag')!r} is not a known {ctx.get('discriminator', 'kind').strip(chr(39))}; "
                f"use one of {ctx.get('expected_tags')}"
            )
        else:
            got = err.get("input")
            shown = f" (got {got!r})" if not isinstance(got, dict) and got is not None else ""
            lines.append(f"  {field}: {err['msg'].removeprefix('Value error, ')}{shown}")
    return "\n".join(lines)


def _is_union_tag(part: Any) -> bool:
    # pydantic puts the discriminator value ("fedavg", "classification") in the location path.
    return part in ("fedavg", "fedavgm", "classification", "custom")


def _suggest(loc: list[str]) -> str:
    model: Any = RunConfig
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return "Remove it."
        model = _model_of(field.annotation)
        if model is None:
            return "Remove it."
    fields = sorted(getattr(model, "model_fields", {}))
    close = difflib.get_close_matches(loc[-1], fields, n=1)
    hint = f"Did you mean {close[0]!r}? " if close else ""
    return f"{hint}Valid fields here: {', '.join(fields)}."


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    return None
