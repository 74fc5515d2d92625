"""The built-in torch classifier: model factory, SGD local training, central evaluation.

Weights cross this boundary as numpy in ``state_dict`` order; torch is imported
only here, so the controller and the driver never load it.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..weights import Weights
from ..errors import TaskError
from ._base import ClientData, TrainContext, TrainResult, load_object

__all__ = ["ClassificationTask", "mlp", "linear"]


def mlp(input_dim: int, num_classes: int, hidden: list[int]) -> nn.Module:
    layers: list[nn.Module] = []
    width = input_dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def linear(input_dim: int, num_classes: int, hidden: list[int]) -> nn.Module:
    return nn.Linear(input_dim, num_classes)


class ClassificationTask:
    def __init__(self, config, proximal_mu: float = 0.0) -> None:  # a ClassificationTaskConfig
        self.config = config
        # FedProx's mu (strategy.mu): the local loss gains (mu/2)·||w - w_global||²; 0 is plain SGD
        self.proximal_mu = float(proximal_mu)
        self._model: nn.Module | None = None
        self._tensors: list[torch.Tensor] = []
        self._opt: torch.optim.Optimizer | None = None
        self._device = torch.device("cpu")
        self._train_fn: Callable | None = load_object(config.train, "task.train") if config.train else None
        self._eval_fn: Callable | None = load_object(config.evaluate, "task.evaluate") if config.evaluate else None
        self._dims: tuple[int, int] | None = None  # (input_dim, num_classes) of the model built
        self._serving: Weights | None = None  # the weights predict() last loaded into the model

    # -- model -------------------------------------------------------------------
    def _factory(self) -> Callable[..., nn.Module]:
        if self.config.model == "mlp":
            return mlp
        if self.config.model == "linear":
            return linear
        factory = load_object(self.config.model, "task.model")
        return lambda i, c, hidden: factory(i, c)

    def init_weights(self, seed: int, data_shape: tuple[int, int] | None) -> Weights:
        if data_shape is None:
            raise TaskError("the classification task needs a dataset (data.dataset) to size its model")
        torch.manual_seed(seed)
        self._build(*data_shape)
        return [t.detach().cpu().numpy().copy() for t in self._tensors]

    def _build(self, input_dim: int, num_classes: int) -> nn.Module:
        """One model and one optimizer per executor, reused for every client it serves."""
        # The GPU Ray assigned this executor (executors.num_gpus), else the CPU.
        self._device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self._model = self._factory()(input_dim, num_classes, list(self.config.hidden)).to(self._device)
        self._dims = (input_dim, num_classes)
        self._tensors = list(self._model.state_dict().values())  # model order, shared storage
        cfg = self.config
        self._opt = torch.optim.SGD(self._model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        return self._model

    def _load(self, weights: Weights, data: ClientData) -> nn.Module:
        self._serving = None  # the model's tensors are about to change
        if self._model is None:  # an executor that did not initialise the run builds the skeleton here
            self._build(data.x.shape[1], data.num_classes)
        if len(self._tensors) != len(weights):
            raise TaskError(f"the model has {len(self._tensors)} tensors but the weights have {len(weights)} arrays")
        on_cpu = self._device.type == "cpu"
        with torch.no_grad():
            for tensor, array in zip(self._tensors, weights):
                array = np.asarray(array).reshape(tensor.shape)
                if on_cpu:
                    # through the tensor's numpy view: one copy, and the read-only arrays that
                    # come zero-copy from Ray's object store are never aliased
                    np.copyto(tensor.numpy(), array)
                else:
                    tensor.copy_(torch.from_numpy(np.array(array)))
        return self._model

    def warm_up(self, data: ClientData) -> None:
        """One throw-away step, so torch's one-off start-up (autograd engine, the
        optimizer's lazy imports) is paid before round 1 instead of inside it."""
        if len(data) == 0:
            return
        model = self._model or self._build(data.x.shape[1], data.num_classes)
        rows = slice(0, min(len(data), 2))
        x, y = torch.from_numpy(data.x[rows]).to(self._device), torch.from_numpy(data.y[rows]).to(self._device)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        self._opt.step()  # the weights it changes are overwritten by the next _load
        self._opt.zero_grad(set_to_none=True)
        self._opt.state.clear()

    # -- client training ---------------------------------------------------------
    def train(self, weights: Weights, data: ClientData, ctx: TrainContext) -> TrainResult:
        n = len(data)
        if n == 0:
            return TrainResult(list(weights), 0)  # nothing to learn from: weight 0
        model = self._load(weights, data)
        if self._train_fn is not None:
            metrics = self._train_fn(model, data, ctx, self.config) or {}
        else:
            metrics = self._sgd(model, data, ctx)
        return TrainResult([t.detach().cpu().numpy().copy() for t in self._tensors], n, metrics)

    def _sgd(self, model: nn.Module, data: ClientData, ctx: TrainContext) -> dict[str, float]:
        cfg = self.config
        x, y = torch.from_numpy(data.x).to(self._device), torch.from_numpy(data.y).to(self._device)
        opt = self._opt
        opt.state.clear()  # momentum buffers belong to one client's training, never the next's
        if not model.training:
            model.train()
        mu = self.proximal_mu
        params = [p for p in model.parameters() if p.requires_grad] if mu else []
        anchors = [p.detach().clone() for p in params]  # the global weights this round started from
        corrections = self._corrections(model, ctx.correction)
        steps_per_epoch = -(-len(data) // cfg.batch_size)
        steps = cfg.epochs * steps_per_epoch
        if ctx.work is not None:  # a straggler: a share of the steps, at least one
            steps = max(1, math.ceil(ctx.work * steps))
        total, batches = 0.0, 0
        while batches < steps:
            order = torch.from_numpy(ctx.rng.permutation(len(data))).to(self._device)
            for start in range(0, len(data), cfg.batch_size):
                if batches == steps:
                    break
                idx = order[start : start + cfg.batch_size]
                opt.zero_grad(set_to_none=True)
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                loss.backward()
                for p, g in zip(params, anchors):
                    if p.grad is None:  # a parameter this batch did not reach
                        continue
                    # FedProx: the gradient of (mu/2)·||w - w_global||² is mu·(w - w_global)
                    p.grad.add_(p.detach() - g, alpha=mu)
                for p, c in corrections:  # SCAFFOLD: g − c_i + c
                    if p.grad is not None:
                        p.grad.add_(c)
                opt.step()
                total = total + loss.detach()
                batches += 1
        return {"train_loss": float(total) / max(batches, 1), "local_steps": float(batches)}

    def _corrections(self, model: nn.Module, correction) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Pair each trainable parameter with its slice of a model-order correction."""
        if correction is None:
            return []
        index = {name: i for i, name in enumerate(model.state_dict())}
        return [
            (p, torch.from_numpy(np.asarray(correction[index[name]], np.float32)).to(self._device).reshape(p.shape))
            for name, p in model.named_parameters()
            if p.requires_grad
        ]

    # -- central evaluation ------------------------------------------------------
    def evaluate(self, weights: Weights, data: ClientData) -> dict[str, float]:
        model = self._load(weights, data)
        if self._eval_fn is not None:
            return dict(self._eval_fn(model, data, self.config))
        model.eval()
        with torch.no_grad():
            logits = model(torch.from_numpy(data.x).to(self._device))
            loss = nn.functional.cross_entropy(logits, torch.from_numpy(data.y).to(self._device))
            acc = (logits.argmax(1).cpu().numpy() == data.y).mean()
        return {"loss": float(loss), "accuracy": float(acc)}

    # -- serving -----------------------------------------------------------------
    def input_shape(self, weights: Weights) -> tuple[int, ...] | None:
        """One input row's shape: (input_dim,), read off the first layer of ``mlp``/``linear``
        (their first array is a (width, input_dim) matrix); None for a ``task.model`` factory."""
        if self.config.model in ("mlp", "linear") and weights and np.ndim(weights[0]) == 2:
            return (int(np.shape(weights[0])[1]),)
        return None

    def predict(self, weights: Weights, x: np.ndarray) -> np.ndarray:
        """Class probabilities (softmax of the logits), float32, shape (n, num_classes).

        ``x`` is a float32 batch of shape (n, input_dim), scaled as the training data
        was (digits: pixels / 16). The argmax of a row is its predicted label. The model
        is built with input_dim from ``x`` and num_classes from the last (bias) array.
        Calls with the same ``weights`` object reuse the model loaded by the first one.
        """
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2:
            raise TaskError(f"predict takes a batch of shape (n, input_dim); got shape {x.shape}")
        if not weights or np.ndim(weights[-1]) != 1:
            raise TaskError("predict: the weights' last array should be the output bias (num_classes,)")
        if self._serving is not weights or self._dims is None or self._dims[0] != x.shape[1]:
            num_classes = int(np.shape(weights[-1])[0])
            if self._model is None or self._dims != (x.shape[1], num_classes):
                self._build(x.shape[1], num_classes)
            try:
                self._load(weights, ClientData(x[:0], np.empty(0, np.int64), num_classes))
            except (TaskError, ValueError, RuntimeError) as exc:
                raise TaskError(
                    f"the weights do not fit task.model={self.config.model!r} built for rows of "
                    f"{x.shape[1]} values and {num_classes} classes: {exc}"
                ) from exc
            self._serving = weights
        model = self._model
        if model.training:
            model.eval()
        with torch.no_grad():
            try:
                logits = model(torch.from_numpy(x).to(self._device))
            except RuntimeError as exc:  # e.g. a task.model factory's layers do not fit the rows
                raise TaskError(f"task.model={self.config.model!r} cannot take rows of shape {x.shape[1:]}: {exc}") from exc
            return torch.softmax(logits.float(), dim=1).cpu().numpy()
