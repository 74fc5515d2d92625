"""Run configuration: pydantic v2 models, loadable from YAML, buildable in Python.

Unknown keys are rejected, and every validation error is turned into one
`ConfigError` whose lines name the field (``task.lr``) and what to do about it.
Environment variables are read here and nowhere else (`Environment`).
"""

from __future__ import annotations

import difflib
import math
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .adaptive_clip import adaptive_noise_params
from .errors import ConfigError

__all__ = [
    "RunConfig",
    "RunSection",
    "ClassificationTaskConfig",
    "CustomTaskConfig",
    "DataConfig",
    "PartitionConfig",
    "SyntheticConfig",
    "CohortConfig",
    "UniformSelectionConfig",
    "SpeedSelectionConfig",
    "OortSelectionConfig",
    "PowerOfChoiceSelectionConfig",
    "SelectionConfig",
    "ExecutorShape",
    "ExecutorConfig",
    "PoolConfig",
    "ClientRule",
    "DEFAULT_POOL",
    "FedAvgConfig",
    "FedAvgMConfig",
    "FedProxConfig",
    "FedAdamConfig",
    "FedYogiConfig",
    "FedAdagradConfig",
    "FedNovaConfig",
    "ScaffoldConfig",
    "StrategyConfig",
    "MedianConfig",
    "TrimmedMeanConfig",
    "KrumConfig",
    "RobustConfig",
    "SimulationConfig",
    "CompressionConfig",
    "AsynchronousConfig",
    "CheckpointConfig",
    "ClusterConfig",
    "EvaluationConfig",
    "PrivacyConfig",
    "AdaptiveClippingConfig",
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


class SyntheticConfig(_Section):
    """Synthetic(alpha, beta) of the FedProx paper: one device's data per client."""

    alpha: float = Field(1.0, ge=0)  # spread of the devices' models (u_k ~ N(0, alpha))
    beta: float = Field(1.0, ge=0)  # spread of the devices' inputs (B_k ~ N(0, beta))


class DataConfig(_Section):
    dataset: str = "digits"  # digits | mnist | cifar10 | synthetic | none | import path returning a Dataset
    root: str | None = None  # folder holding mnist/cifar10 files
    num_clients: int = Field(100, ge=1)
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)  # dataset: synthetic only

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        if v in ("digits", "mnist", "cifar10", "synthetic", "none"):
            return v
        return _check_import_path(v, "dataset (or one of digits, mnist, cifar10, synthetic, none)")  # type: ignore[return-value]

    @model_validator(mode="after")
    def _natural(self) -> "DataConfig":
        if self.dataset == "synthetic" and self.partition.name != "iid":
            raise ValueError(
                "data.dataset 'synthetic' is split per device already (client k gets device k's rows); "
                "remove data.partition.name"
            )
        return self

    def loader_params(self, seed: int) -> dict[str, Any]:
        """What load_dataset passes the data set's loader besides root."""
        if self.dataset == "synthetic":
            return {"num_devices": self.num_clients, "alpha": self.synthetic.alpha, "beta": self.synthetic.beta, "seed": seed}
        return {}


class UniformSelectionConfig(_Section):
    """Every client equally likely (one generator seeded by the run seed, drawn once per round)."""

    name: Literal["uniform"] = "uniform"


class SpeedSelectionConfig(_Section):
    """Availability- and speed-aware: weight ∝ measured throughput × reliability, at least `floor`."""

    name: Literal["speed"]
    floor: float = Field(0.1, gt=0, le=1)  # the least weight (relative to the median client) any client keeps


class OortSelectionConfig(_Section):
    """Oort (Lai et al., OSDI'21): statistical utility × system speed, exploring unseen clients."""

    name: Literal["oort"]
    exploration_factor: float = Field(0.9, ge=0, le=1)  # share of the cohort for never-seen clients in round 1
    exploration_decay: float = Field(0.98, gt=0, le=1)  # that share is multiplied by this each round
    exploration_min: float = Field(0.3, ge=0, le=1)  # ... but stays at least this
    round_penalty: float = Field(2.0, ge=0)  # alpha: a client slower than T scores × (T / its duration)^alpha
    preferred_duration_s: float | None = Field(None, gt=0)  # T; default: the median measured client duration
    staleness_weight: float = Field(0.1, ge=0)  # bonus sqrt(w · ln(round) / the last round it was picked)
    cut_off: float = Field(0.95, gt=0, le=1)  # exploit among clients scoring at least this × the k-th best


class PowerOfChoiceSelectionConfig(_Section):
    """Power-of-choice (Cho et al. 2020): draw `candidates` uniformly, keep those with the highest last loss."""

    name: Literal["power_of_choice"]
    candidates: int | None = Field(None, ge=1)  # d; default twice the selected count (at least it, at most everyone)


SelectionConfig = Annotated[
    Union[UniformSelectionConfig, SpeedSelectionConfig, OortSelectionConfig, PowerOfChoiceSelectionConfig],
    Field(discriminator="name"),
]


class CohortConfig(_Section):
    """Who trains each round. Give clients_per_round or fraction (of data.num_clients), not both."""

    clients_per_round: int | None = Field(None, ge=1)
    fraction: float | None = Field(None, gt=0, le=1)
    # fewer successful updates than this fails the round (default 1); 0: a round with none keeps the weights
    min_clients: int | None = Field(None, ge=0)
    over_select: float = Field(0.0, ge=0, le=1)  # select this fraction more; the round closes at the target
    deadline_s: float | None = Field(None, gt=0)  # close the round then, if min_clients have reported
    selection: SelectionConfig = Field(default_factory=UniformSelectionConfig)  # how the cohort is picked

    @model_validator(mode="after")
    def _one_of(self) -> "CohortConfig":
        if self.clients_per_round is not None and self.fraction is not None:
            raise ValueError("set either cohort.clients_per_round or cohort.fraction, not both")
        return self

    def size(self, num_clients: int) -> int:
        """The target: how many updates a round wants."""
        if self.clients_per_round is not None:
            return self.clients_per_round
        if self.fraction is not None:
            return max(1, math.ceil(self.fraction * num_clients))
        return num_clients

    def selected(self, num_clients: int) -> int:
        """How many clients a round selects: the target plus over-selection, at most everyone."""
        return min(num_clients, math.ceil(self.size(num_clients) * (1 + self.over_select)))


class ExecutorShape(_Section):
    """What one executor actor asks Ray for."""

    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    accelerator_type: str | None = None  # e.g. "A100", "H100", "TPU-V4"
    resources: dict[str, float] = Field(default_factory=dict)  # custom resources, e.g. {site_a: 1} or {TPU: 4}
    labels: dict[str, str] = Field(default_factory=dict)  # node labels the executor must run on (Ray label selector)

    @field_validator("num_gpus")
    @classmethod
    def _gpus(cls, v: float) -> float:
        if v > 1 and not float(v).is_integer():
            raise ValueError("num_gpus above 1 must be a whole number (Ray only splits a single GPU)")
        return v

    def shape(self) -> "ExecutorShape":
        return ExecutorShape(**{name: getattr(self, name) for name in ExecutorShape.model_fields})


class ExecutorConfig(ExecutorShape):
    """Executor actors: their shape when no `pools` are given, and run-wide work and failure knobs."""

    count: int | None = Field(None, ge=1)  # default: as many as the cluster's resources fit (without pools)
    unit_size: int | None = Field(None, ge=1)  # clients per work unit; default ~25 (see selection.py)
    max_unit_retries: int = Field(3, ge=0)  # re-runs of a work unit whose executor failed (not preempted)
    max_preemptions: int = Field(20, ge=0)  # re-runs of a work unit whose node was preempted or drained
    placement_timeout_s: float = Field(120.0, gt=0)  # executors not placed by then: a clear error, not a hang


class PoolConfig(ExecutorShape):
    """A named group of nodes (a site, a node type) and the executors placed on it."""

    min: int = Field(0, ge=0)  # executors the pool keeps asking the autoscaler for, even when idle
    max: int | None = Field(None, ge=1)  # at most this many executors; default: as many as fit and have work
    spot: bool = False  # nodes may be preempted: their losses count as preemptions, not failures

    @model_validator(mode="after")
    def _bounds(self) -> "PoolConfig":
        if self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) exceeds max ({self.max}); lower min or raise max")
        return self


class ClientRule(_Section):
    """Where some clients may run: one pool, or pools in order of preference."""

    ids: str  # "0-49", "7", "0-9,20-29"
    pool: str | list[str]

    @field_validator("ids")
    @classmethod
    def _ids(cls, v: str) -> str:
        parse_id_ranges(v)
        return v

    @field_validator("pool")
    @classmethod
    def _pool(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and (not v or len(set(v)) != len(v)):
            raise ValueError("pool must be a pool name or a non-empty list of distinct pool names")
        return v

    def pools(self) -> tuple[str, ...]:
        return (self.pool,) if isinstance(self.pool, str) else tuple(self.pool)


def parse_id_ranges(text: str) -> list[int]:
    """'0-3,7' -> [0, 1, 2, 3, 7]; raises ValueError naming the bad part."""
    ids: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        try:
            start, end = int(lo), int(hi) if dash else int(lo)
        except ValueError:
            raise ValueError(f"ids must look like '0-49' or '0-9,20-29', got {text!r}") from None
        if start < 0 or end < start:
            raise ValueError(f"ids range {part!r} is empty or negative; write it low-high")
        ids.extend(range(start, end + 1))
    return ids


DEFAULT_POOL = "default"


class MedianConfig(_Section):
    """Coordinate-wise median of the cohort's updates (Yin et al., 2018)."""

    name: Literal["median"]


class TrimmedMeanConfig(_Section):
    """Coordinate-wise mean after dropping the largest and smallest ``beta`` share (Yin et al., 2018)."""

    name: Literal["trimmed_mean"]
    beta: float = Field(0.1, ge=0, lt=0.5)


class KrumConfig(_Section):
    """(Multi-)Krum (Blanchard et al., 2017): keep the updates closest to their neighbours."""

    name: Literal["krum"]
    num_malicious: int = Field(1, ge=0)  # f, the Byzantine clients to tolerate per round
    num_to_keep: int = Field(1, ge=1)  # m; above 1 this is multi-Krum (the kept updates are averaged)


RobustConfig = Annotated[Union[MedianConfig, TrimmedMeanConfig, KrumConfig], Field(discriminator="name")]


class _WeightedMeanConfig(_Section):
    # Precision of the weighted sums: "auto" is float64 up to 2**24 parameters, float32 above.
    accumulate: Literal["auto", "float64", "float32"] = "auto"
    # Robust aggregation replaces the weighted mean under any strategy; it needs every
    # client's update at the controller (no pre-aggregation in work units).
    robust: RobustConfig | None = None
    # Norm bounding (Sun et al., 2019): each client's change is scaled to at most this L2 norm.
    norm_bound: float | None = Field(None, gt=0)


class FedAvgConfig(_WeightedMeanConfig):
    name: Literal["fedavg"] = "fedavg"


class FedAvgMConfig(_WeightedMeanConfig):
    name: Literal["fedavgm"]
    server_lr: float = Field(1.0, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)


class FedProxConfig(_WeightedMeanConfig):
    name: Literal["fedprox"]
    mu: float = Field(0.01, ge=0)  # proximal coefficient: clients minimise loss + (mu/2)·||w - w_global||²


class _ServerOptConfig(_WeightedMeanConfig):
    # Reddi et al. 2021, Algorithm 2: eta, beta1, tau as in its experiments (tau there: 1e-3).
    server_lr: float = Field(0.1, gt=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    tau: float = Field(1e-3, gt=0)


class FedAdamConfig(_ServerOptConfig):
    name: Literal["fedadam"]
    beta2: float = Field(0.99, ge=0, lt=1)


class FedYogiConfig(_ServerOptConfig):
    name: Literal["fedyogi"]
    beta2: float = Field(0.99, ge=0, lt=1)


class FedAdagradConfig(_ServerOptConfig):
    name: Literal["fedadagrad"]


class FedNovaConfig(_WeightedMeanConfig):
    name: Literal["fednova"]


class ScaffoldConfig(_WeightedMeanConfig):
    name: Literal["scaffold"]
    server_lr: float = Field(1.0, gt=0)
    # the learning rate of the clients' local SGD; default task.lr (the built-in task)
    local_lr: float | None = Field(None, gt=0)


StrategyConfig = Annotated[
    Union[
        FedAvgConfig, FedAvgMConfig, FedProxConfig, FedAdamConfig, FedYogiConfig, FedAdagradConfig,
        FedNovaConfig, ScaffoldConfig,
    ],
    Field(discriminator="name"),
]


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


class AdaptiveClippingConfig(_Section):
    """The clip norm follows a quantile of the clients' update norms (privately estimated)."""

    target_quantile: float = Field(0.5, gt=0, lt=1)  # γ: the share of clients whose update should fit unclipped
    learning_rate: float = Field(0.2, gt=0)  # η_C: C ← C·exp(−η_C·(noisy unclipped share − γ))
    count_noise_std: float | None = Field(None, ge=0)  # σ_b, the noise on the unclipped count; default cohort / 20


class PrivacyConfig(_Section):
    """Central differential privacy (DP-FedAvg): per-client clipping, Gaussian noise on the sum, an accountant."""

    enabled: bool = False
    clip_norm: float = Field(1.0, gt=0)  # L2 bound C on each client's update (client weights - global weights)
    noise_multiplier: float = Field(1.0, ge=0)  # z: the round's noise is N(0, (z*C)^2) on the sum of clipped updates
    delta: float = Field(1e-5, gt=0, lt=1)  # the target delta the accountant reports epsilon for
    # Adaptive clipping (Andrew et al., 2021): clip_norm is then the starting clip norm.
    adaptive_clipping: AdaptiveClippingConfig | None = None


class AsynchronousConfig(_Section):
    """Buffered asynchronous training (FedBuff): no rounds to wait for; the server steps
    every ``buffer_size`` arrivals. ``run.rounds`` counts those server steps."""

    enabled: bool = False
    buffer_size: int = Field(10, ge=1)  # K: the server steps after this many client updates
    concurrency: int = Field(20, ge=1)  # clients training at any time
    staleness_exponent: float = Field(0.5, ge=0)  # an update τ versions old counts (1 + τ)^−a
    max_staleness: int | None = Field(None, ge=0)  # older updates are dropped (status "stale")


class CompressionConfig(_Section):
    """How clients encode their updates for the uplink (see elasticfl/compression.py)."""

    codec: Literal["none", "fp16", "int8", "topk"] = "none"
    topk_fraction: float = Field(0.01, gt=0, le=1)  # topk: the share of each array's values sent
    # keep what the codec dropped and send it with the next update (per client, checkpointed)
    error_feedback: bool = True


class SimulationConfig(_Section):
    """System heterogeneity for research runs: clients that can only do part of their local work."""

    # The chance that a client is a straggler in a round, drawn from (run seed, round, client id).
    stragglers: float = Field(0.0, ge=0, le=1)
    # partial: a straggler does a random share of its local steps and that partial work is
    # aggregated (FedProx, FedNova); drop: stragglers are left out of the round (FedAvg's way).
    straggler_policy: Literal["partial", "drop"] = "partial"
    # Clients on slow hardware (ids like "0-19"): each of their trainings takes slow_s longer.
    slow_clients: str | None = None
    slow_s: float = Field(0.0, ge=0)
    # Clients that attack (ids like "0-4"): they send a sign-flipped or noise update every round.
    byzantine: str | None = None
    attack: Literal["sign_flip", "gaussian"] = "sign_flip"
    attack_scale: float = Field(10.0, gt=0)

    @field_validator("byzantine", "slow_clients")
    @classmethod
    def _ids(cls, v: str | None) -> str | None:
        if v is not None:
            parse_id_ranges(v)
        return v

    def byzantine_ids(self) -> frozenset[int]:
        return frozenset(parse_id_ranges(self.byzantine)) if self.byzantine else frozenset()

    def slow_ids(self) -> frozenset[int]:
        return frozenset(parse_id_ranges(self.slow_clients)) if self.slow_clients else frozenset()


class RunConfig(_Section):
    run: RunSection = Field(default_factory=RunSection)
    task: TaskConfig = Field(default_factory=ClassificationTaskConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    cohort: CohortConfig = Field(default_factory=CohortConfig)
    executors: ExecutorConfig = Field(default_factory=ExecutorConfig)
    pools: dict[str, PoolConfig] = Field(default_factory=dict)  # named node pools; none: one pool from executors
    clients: list[ClientRule] = Field(default_factory=list)  # which pools clients may run in (default: any)
    strategy: StrategyConfig = Field(default_factory=FedAvgConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    compression: CompressionConfig = Field(default_factory=CompressionConfig)
    asynchronous: AsynchronousConfig = Field(default_factory=AsynchronousConfig)
    simulation: SimulationConfig = Field(default_factory=SimulationConfig)

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
        self._check_pools()
        if self.privacy.enabled and self.privacy.adaptive_clipping is not None:
            adaptive_noise_params(self.privacy.noise_multiplier, size, self.privacy.adaptive_clipping.count_noise_std)
        if self.privacy.enabled and self.cohort.selection.name != "uniform":
            raise ValueError(
                f"privacy.enabled needs cohort.selection.name 'uniform': '{self.cohort.selection.name}' picks "
                "clients by their past losses and speeds, which the privacy accountant does not cover"
            )
        self._check_strategy(size)
        self._check_asynchronous()
        for field, ids in (("byzantine", self.simulation.byzantine_ids()), ("slow_clients", self.simulation.slow_ids())):
            past = sorted(c for c in ids if c >= n)
            if past:
                raise ValueError(f"simulation.{field}: client {past[0]} is past data.num_clients ({n}); ids count from 0")
        if self.data.dataset == "none" and isinstance(self.task, ClassificationTaskConfig):
            raise ValueError("data.dataset 'none' needs a task of type 'custom' that brings its own data")
        return self

    def _check_strategy(self, cohort_size: int) -> None:
        strategy, builtin = self.strategy, isinstance(self.task, ClassificationTaskConfig)
        if strategy.robust is not None and self.privacy.enabled:
            raise ValueError(
                "strategy.robust cannot be combined with privacy.enabled: the privacy accountant covers the "
                "clipped, noised mean, not a median or Krum; drop one of them"
            )
        if isinstance(strategy.robust, KrumConfig) and cohort_size < 2 * strategy.robust.num_malicious + 3:
            raise ValueError(
                f"strategy.robust.num_malicious: Krum tolerates f Byzantine clients among n > 2f + 2; "
                f"the cohort has {cohort_size}, so f may be at most {max((cohort_size - 3) // 2, 0)}"
            )
        if self.privacy.enabled and strategy.name in ("fednova", "scaffold"):
            raise ValueError(
                f"privacy.enabled works with strategies that only need the clients' mean change; "
                f"'{strategy.name}' also collects per-client step counts or control variates, which the "
                "accountant does not cover: pick fedavg, fedavgm, fedprox or a server optimiser"
            )
        if strategy.name == "scaffold":
            if not builtin and strategy.local_lr is None:
                raise ValueError("strategy.local_lr: scaffold needs the custom task's local learning rate; set it")
            if builtin and self.task.momentum:
                raise ValueError("strategy 'scaffold' assumes plain local SGD (Karimireddy et al.); set task.momentum to 0")

    def _check_asynchronous(self) -> None:
        if not self.asynchronous.enabled:
            return
        n, a = self.data.num_clients, self.asynchronous
        if a.concurrency > n:
            raise ValueError(f"asynchronous.concurrency ({a.concurrency}) exceeds data.num_clients ({n}); lower it")
        refused = [
            (self.privacy.enabled, "privacy.enabled", "the accountant assumes rounds of sampled clients"),
            (self.strategy.robust is not None, "strategy.robust", "a buffer of stale updates has no cohort to take a median of"),
            (self.strategy.name == "scaffold", "strategy 'scaffold'", "its control variates assume synchronous rounds"),
            (self.cohort.selection.name != "uniform", "cohort.selection", "clients are drawn uniformly as slots free up"),
            (self.cohort.deadline_s is not None or self.cohort.over_select > 0, "cohort.deadline_s / cohort.over_select",
             "nobody waits for stragglers in asynchronous training"),
        ]
        for bad, field, why in refused:
            if bad:
                raise ValueError(f"asynchronous.enabled cannot be combined with {field}: {why}; drop one of them")

    def _check_pools(self) -> None:
        names = set(self.pools)
        for name in names:
            if not name.replace("_", "a").replace("-", "a").isalnum():
                raise ValueError(f"pools: name {name!r} may only hold letters, digits, '-' and '_'")
        if self.clients and not self.pools:
            raise ValueError("clients: rules name pools, but no `pools` section defines any; add one")
        seen: dict[int, int] = {}
        for i, rule in enumerate(self.clients):
            unknown = [p for p in rule.pools() if p not in names]
            if unknown:
                raise ValueError(f"clients.{i}.pool: unknown pool {unknown[0]!r}; defined pools: {sorted(names)}")
            for cid in parse_id_ranges(rule.ids):
                if cid >= self.data.num_clients:
                    raise ValueError(
                        f"clients.{i}.ids: client {cid} does not exist (data.num_clients is {self.data.num_clients})"
                    )
                if cid in seen:
                    raise ValueError(f"clients.{i}.ids: client {cid} is already placed by clients.{seen[cid]}")
                seen[cid] = i
        if self.pools and self.executors.count is not None:
            raise ValueError("executors.count applies without pools; with pools, set pools.<name>.min / max")

    def pool_shapes(self) -> dict[str, "PoolConfig"]:
        """The pools executors are placed in: the `pools` section, or one pool from `executors`."""
        if self.pools:
            return dict(self.pools)
        count = self.executors.count
        return {DEFAULT_POOL: PoolConfig(**self.executors.shape().model_dump(), min=count or 0, max=count)}

    def client_pools(self) -> dict[int, tuple[str, ...]]:
        """Client id -> its pools in order of preference, for clients a rule places."""
        placed: dict[int, tuple[str, ...]] = {}
        for rule in self.clients:
            for cid in parse_id_ranges(rule.ids):
                placed[cid] = rule.pools()
        return placed

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
    serve_token: str | None = None  # ELASTICFL_SERVE_TOKEN (or the variable named): the Serve app's bearer token

    @classmethod
    def read(cls, serve_token_var: str = "ELASTICFL_SERVE_TOKEN") -> "Environment":
        e = os.environ
        return cls(
            storage=e.get("ELASTICFL_STORAGE") or None,
            s3_endpoint_url=e.get("AWS_ENDPOINT_URL_S3") or e.get("AWS_ENDPOINT_URL") or None,
            ray_address=e.get("RAY_ADDRESS") or None,
            serve_token=e.get(serve_token_var) or None,
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
        elif not loc:  # a check across sections: its message names the fields itself
            lines.append(f"  {err['msg'].removeprefix('Value error, ')}")
        else:
            got = err.get("input")
            shown = f" (got {got!r})" if not isinstance(got, dict) and got is not None else ""
            lines.append(f"  {field}: {err['msg'].removeprefix('Value error, ')}{shown}")
    return "\n".join(lines)


def _union_tags(*unions: Any) -> frozenset[str]:
    """The discriminator values of the config's tagged unions ("fedavg", "classification", ...)."""
    tags: set[str] = set()
    for union in unions:
        for model in typing.get_args(typing.get_args(union)[0]):
            tag = next(iter(f for f in ("name", "type") if f in model.model_fields))
            tags.update(typing.get_args(model.model_fields[tag].annotation))
    return frozenset(tags)


_UNION_TAGS = _union_tags(TaskConfig, StrategyConfig, SelectionConfig, RobustConfig)


def _is_union_tag(part: Any) -> bool:
    # pydantic puts the discriminator value ("fedavg", "classification") in the location path.
    return part in _UNION_TAGS


def _suggest(loc: list[str]) -> str:
    annotation: Any = RunConfig
    for part in loc[:-1]:
        container = typing.get_origin(annotation)
        if container in (dict, list):  # a pool name or a list index: step into the values
            annotation = typing.get_args(annotation)[-1]
            continue
        model = _model_of(annotation)
        field = getattr(model, "model_fields", {}).get(part) if model else None
        if field is None:
            return "Remove it."
        annotation = field.annotation
    model = _model_of(annotation)
    fields = sorted(getattr(model, "model_fields", {}))
    if not fields:
        return "Remove it."
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
