"""Audit a classifier for bias: fairness metrics plus attribute explanations (seed 000 §3.2).

The audit predicts the target on one split, measures group fairness with respect to the protected
attribute (:mod:`fairloop.tools.metrics`) and explains the predictions over the semantic attribute
table (:mod:`fairloop.tools.explain`). Any ``nn.Module`` that maps float images in [0, 1] to
logits can be audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fairloop.data.datasets import FaceDataset
from fairloop.errors import ConfigError
from fairloop.manifest import build_manifest
from fairloop.tools.explain import AttributeExplanation, explain_attributes
from fairloop.tools.metrics import FairnessReport, fairness_report


@dataclass
class AuditResult:
    """Everything an audit found; ``as_dict`` is the content of ``audit.json``.

    ``predictions`` has one row per audited image: ``path``, ``y_true``, ``protected``, ``prob``.
    """

    target: str
    protected: str
    split: str
    metrics: FairnessReport
    explanation: AttributeExplanation
    predictions: pd.DataFrame
    manifest: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """Metric keys at the top level (as in every fairloop summary), then explanation and manifest."""
        return {
            "target": self.target,
            "protected": self.protected,
            "split": self.split,
            **self.metrics.as_dict(),
            "importances": self.explanation.as_dict(),
            "manifest": self.manifest,
        }

    def misclassified(self, per_group: int = 8) -> dict[str, pd.DataFrame]:
        """The most confidently wrong predictions of each target × protected group."""
        p = self.predictions
        wrong = p[(p["prob"] >= 0.5) != (p["y_true"] == 1)].assign(confidence=lambda d: (d["prob"] - 0.5).abs() * 2)
        out = {}
        for (y, a), rows in wrong.groupby(["y_true", "protected"]):
            out[f"{self.target}={y}, {self.protected}={a}"] = rows.nlargest(per_group, "confidence")
        return out


def audit(model, dataset: FaceDataset, *, target: str, protected: str, privileged_value: int = 1,
          split: str = "test", image_size: int = 64, n_bootstrap: int = 200, explain_rows: int = 200,
          lime_samples: int = 500, seed: int = 0, device=None, batch_size: int = 256, progress=None,
          model_info: dict[str, Any] | None = None) -> AuditResult:
    """Audit ``model`` on ``split`` of ``dataset`` for bias in ``target`` with respect to ``protected``.

    ``model_info`` (architecture, checkpoint path, training data hash) goes into the manifest.
    """
    from fairloop.vision.train import predict_proba

    part = dataset.split(split)
    part.require_attribute(target, "target")
    part.require_attribute(protected, "protected")
    if protected == target:
        raise ConfigError(f"--protected {protected} is the target itself", "choose a different protected attribute")

    probs = predict_proba(model, part.images(image_size), batch_size=batch_size, device=device, progress=progress)
    y_true, groups = part.labels(target), part.labels(protected)
    metrics = fairness_report(y_true=y_true, y_pred=(probs >= 0.5).astype(int), protected=groups,
                              privileged_value=privileged_value, target_name=target, protected_name=protected,
                              n_bootstrap=n_bootstrap, seed=seed)
    if progress:
        progress("explain", 0, 1)
    explanation = explain_attributes(attributes=part.table[[a for a in part.attributes if a != target]],
                                     scores=probs, protected=protected, n_explain=min(explain_rows, len(part)),
                                     num_samples=lime_samples, seed=seed)
    if progress:
        progress("explain", 1, 1)
    predictions = pd.DataFrame({"path": part.table["path"], "y_true": y_true, "protected": groups,
                                "prob": np.round(probs, 6)}, index=part.table.index)
    config = {"dataset": dataset.name, "root": str(dataset.root), "target": target, "protected": protected,
              "privileged_value": privileged_value, "split": split, "image_size": image_size,
              "n_bootstrap": n_bootstrap, "explain_rows": explain_rows, "lime_samples": lime_samples}
    manifest = build_manifest(config, seeds={"audit": seed}, data_hash=dataset.fingerprint(),
                              model=model_info or {"class": type(model).__name__})
    return AuditResult(target, protected, split, metrics, explanation, predictions, manifest)
