"""Runs the evaluations of a train state: the kNN monitor and the final report.

The encoder is frozen and used in eval mode (BatchNorm running statistics); features are
the backbone's pooled output, computed from the variables ``variables_of(state)`` picks
(the trained encoder by default; a method may choose another, as DINO its teacher). The
final report puts the pretrained encoder beside the same architecture at its random
initialisation, so the gain from pretraining is visible. A classifier (the supervised
method: ``classifier_protocol`` set, the model has ``classify``) also reports ``top1``, its
own predictions on ``input.eval_test_split``. With an online linear probe in the state
(``evaluate/online.py``), every kNN evaluation and the report add its top-1 on the same
test features (``online_linear_test_top1``, ``online_linear_top1`` in the report).

``Evaluator.poll`` runs between two batches of every evaluation and between the linear
probe's epochs; the trainer sets it to its preemption watcher's, which raises to stop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh

from ssl_jax import console, parallel
from ssl_jax.data import eval_pipeline
from ssl_jax.evaluate import online
from ssl_jax.evaluate.features import extract_features
from ssl_jax.evaluate.knn import knn_accuracy
from ssl_jax.evaluate.linear import linear_probe


class Evaluator:
    def __init__(
        self,
        config: ml_collections.ConfigDict,
        model: nn.Module,
        mesh: Mesh,
        variables_of: Callable[[Any], dict] | None = None,
        *,
        classifier_protocol: str | None = None,
    ):
        parallel.check_global_batch(config.evals.batch_size, mesh.devices.size, "evals.batch_size")
        self.config, self.mesh = config, mesh
        self.poll: Callable[[], None] = lambda: None
        self.variables_of = variables_of or (
            lambda state: {"params": state.params, "batch_stats": state.batch_stats}
        )
        self._embed = jax.jit(
            lambda variables, x: model.apply(variables, x, train=False, method="embed")
        )
        self.classifier_protocol = classifier_protocol
        self._classify = jax.jit(
            lambda variables, x: model.apply(variables, x, train=False, method="classify")
        )

    def classifier_top1(self, state: Any) -> float:
        """Top-1 (%) of the model's own ``classify`` logits on ``input.eval_test_split``."""
        variables = self.variables_of(state)
        batches = eval_pipeline.eval_iterator(
            self.config.input,
            self.config.input.eval_test_split,
            global_batch_size=self.config.evals.batch_size,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        logits, labels = extract_features(
            lambda x: self._classify(variables, x), batches, self.mesh, self.poll
        )
        return float(100.0 * np.mean(np.argmax(logits, axis=-1) == labels))

    def features(self, state: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
        variables = self.variables_of(state)
        input_cfg, batch_size = self.config.input, self.config.evals.batch_size
        batches = eval_pipeline.eval_iterator(
            input_cfg,
            split,
            global_batch_size=batch_size,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        batches = console.progress_bar(
            batches,
            total=eval_pipeline.eval_num_batches(
                input_cfg, split, global_batch_size=batch_size, process_count=jax.process_count()
            ),
            desc=f"features of {split}",
            enabled=jax.process_index() == 0,
        )
        return extract_features(lambda x: self._embed(variables, x), batches, self.mesh, self.poll)

    def _splits(self, state: Any):
        train = self.features(state, self.config.input.eval_train_split)
        test = self.features(state, self.config.input.eval_test_split)
        return train, test

    def knn(self, state: Any, prefix: str = "knn") -> dict[str, float]:
        """kNN top-1 and, with an online probe, its top-1 on the same test features."""
        (train_x, train_y), (test_x, test_y) = self._splits(state)
        if not _labelled(train_y, test_y):
            return {}
        scores = {f"{prefix}_top1": self._knn(train_x, train_y, test_x, test_y)}
        if _has_probe(state):
            scores["online_linear_test_top1"] = online.top1(state.probe, test_x, test_y)
        return scores

    @staticmethod
    def summary(scores: dict[str, float]) -> str:
        """One line for the console: 'kNN top-1 93.10%, online linear 91.20%'."""
        names = {"knn_top1": "kNN top-1", "online_linear_test_top1": "online linear"}
        return ", ".join(f"{names[k]} {v:.2f}%" for k, v in scores.items() if k in names)

    def _knn(self, train_x, train_y, test_x, test_y) -> float:
        cfg = self.config.evals
        return float(
            knn_accuracy(
                train_x,
                train_y,
                test_x,
                test_y,
                num_classes=_num_classes(train_y, test_y),
                k=cfg.knn_k,
                temperature=cfg.knn_temperature,
            )
        )

    def _linear(self, train_x, train_y, test_x, test_y) -> float:
        cfg = self.config.evals
        result = linear_probe(
            train_x,
            train_y,
            test_x,
            test_y,
            num_classes=_num_classes(train_y, test_y),
            epochs=cfg.linear_epochs,
            batch_size=cfg.linear_batch_size,
            lr=cfg.linear_lr,
            weight_decay=cfg.linear_weight_decay,
            seed=self.config.seed,
            poll=self.poll,
        )
        return float(result["top1"])

    def scores(self, state: Any, *, online_probe: bool = True) -> dict[str, float]:
        """The classifier's top-1 (if any), kNN, linear probe and (with ``online_probe``
        and a probe in the state) the online probe's top-1 on the test split."""
        (train_x, train_y), (test_x, test_y) = self._splits(state)
        if not _labelled(train_y, test_y):
            return {}
        args = (train_x, train_y, test_x, test_y)
        top1 = {"top1": self.classifier_top1(state)} if self.classifier_protocol else {}
        scores = {**top1, "knn_top1": self._knn(*args), "linear_top1": self._linear(*args)}
        if online_probe and _has_probe(state):
            scores["online_linear_top1"] = online.top1(state.probe, test_x, test_y)
        return scores

    def final_report(self, state: Any, init_state: Any, writer: Any) -> dict[str, Any]:
        """kNN and linear-probe top-1 of the trained and the random-init encoder."""
        cfg = self.config
        with writer.phase("Final evaluation: kNN and linear probe of the pretrained encoder"):
            trained = self.scores(state)
        step = int(np.asarray(state.step.addressable_data(0)))
        if not trained:
            print("The evaluation splits have no labels: kNN and linear probe skipped.")
            return {}
        writer.write(step, {f"final_{k}": v for k, v in trained.items()})
        # The random-init network has no trained online probe to compare.
        baseline = {}
        if cfg.evals.random_init_baseline:
            with writer.phase("The same for a random-init encoder (the baseline)"):
                baseline = self.scores(init_state, online_probe=False)
        protocol = {
            **({"top1": self.classifier_protocol} if self.classifier_protocol else {}),
            "knn_top1": f"kNN k={cfg.evals.knn_k} T={cfg.evals.knn_temperature}, cosine, weighted",
            "linear_top1": f"linear probe on frozen features, {cfg.evals.linear_epochs} epochs",
            "online_linear_top1": "linear classifier trained alongside, stop-gradient",
        }
        protocol = {name: text for name, text in protocol.items() if name in trained}
        rows = [
            (
                name,
                f"{trained[name]:.2f}",
                f"{baseline[name]:.2f}" if name in baseline else "-",
                protocol[name],
            )
            for name in protocol
        ]
        writer.report(
            f"{cfg.method} on {cfg.input.dataset}: train {cfg.input.eval_train_split}, "
            f"test {cfg.input.eval_test_split}",
            rows,
            header=("metric", "pretrained", "random init", "protocol"),
        )
        return {
            "pretrained": trained,
            "random_init": baseline,
            "protocol": protocol,
        }


def _has_probe(state: Any) -> bool:
    return bool(state.probe)


def _labelled(*labels: np.ndarray) -> bool:
    return all(len(y) and np.min(y) >= 0 for y in labels)


def _num_classes(*labels: np.ndarray) -> int:
    return int(max(np.max(y) for y in labels)) + 1
