"""The methods mosaicvi knows: its models, the scvi-tools peers and the baselines.

One list, read by the CLI (``mosaicvi fit --model``, ``mosaicvi benchmark --methods``), by
:mod:`mosaicvi.benchmark`, by every script in ``benchmarks/`` and by the contract test suite
(``tests/contract``). A method added here appears in all of them; a new model is one folder
under :mod:`mosaicvi.methods` plus one line in ``_METHODS``.

Entries name their model class and benchmark runner as ``"module:attribute"`` strings so that
reading the registry imports neither scvi-tools nor torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

MethodKind = Literal["model", "peer", "baseline"]


def _resolve(target: str) -> Any:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class Method:
    """One registered method.

    Attributes
    ----------
    name
        Lower-case key used on the command line and in results (``"multivae"``).
    display_name
        Name in tables and figures (``"MultiVAE"``).
    kind
        ``"model"`` (a mosaicvi model class), ``"peer"`` (a published model from another
        package) or ``"baseline"`` (no training, e.g. RNA PCA).
    runner
        ``"module:function"`` of the benchmark runner: it takes a
        :class:`~mosaicvi.benchmark.BenchmarkTask` (and, for a model, the model class) and
        returns a :class:`~mosaicvi.benchmark.MethodOutput`.
    model
        ``"module:Class"`` of the model class (``kind="model"`` only).
    second_modalities
        Second modalities (besides RNA) the method handles, e.g. ``("adt",)`` for TOTALVI;
        ``None``: any.
    summary
        One line for ``--help`` texts and reports.
    """

    name: str
    display_name: str
    kind: MethodKind
    runner: str
    model: str | None = None
    second_modalities: tuple[str, ...] | None = None
    summary: str = ""

    def model_class(self) -> type:
        """The model class (imports it)."""
        if self.model is None:
            raise TypeError(f"{self.display_name} is a {self.kind}, not a mosaicvi model.")
        return _resolve(self.model)

    def run(self, task: Any) -> Any:
        """Train (or compute) the method on a benchmark task; returns a ``MethodOutput``.

        A model's runner is called as ``runner(task, model_class)``, any other as
        ``runner(task)``.
        """
        runner: Callable[..., Any] = _resolve(self.runner)
        if self.kind == "model":
            return runner(task, self.model_class())
        return runner(task)

    def handles(self, second_modality: str) -> bool:
        """Whether the method handles RNA + ``second_modality`` data."""
        return self.second_modalities is None or second_modality in self.second_modalities


_RUN = "mosaicvi.benchmark._methods"

_METHODS: tuple[Method, ...] = (
    Method(
        "multivae",
        "MultiVAE",
        "model",
        f"{_RUN}:run_model",
        "mosaicvi.model:MultiVAE",
        summary="product/mixture-of-experts VAE with MMD integration",
    ),
    Method(
        "clue",
        "CLUE",
        "model",
        f"{_RUN}:run_model",
        "mosaicvi.model:CLUE",
        summary="cross-linked encoders with an adversarial modality discriminator",
    ),
    Method(
        "jae",
        "JAE",
        "model",
        f"{_RUN}:run_model",
        "mosaicvi.model:JAE",
        summary="autoencoder regularised by cell type, batch and cell-cycle phase",
    ),
    Method(
        "totalvi",
        "TOTALVI",
        "peer",
        f"{_RUN}:run_totalvi",
        second_modalities=("adt",),
        summary="scvi-tools TOTALVI (RNA + protein)",
    ),
    Method(
        "multivi",
        "MULTIVI",
        "peer",
        f"{_RUN}:run_multivi",
        second_modalities=("atac",),
        summary="scvi-tools MULTIVI (RNA + ATAC)",
    ),
    Method(
        "pca",
        "RNA PCA",
        "baseline",
        f"{_RUN}:run_pca",
        summary="PCA of log-normalised RNA; imputation by the mean of 15 nearest measured cells",
    ),
)


def methods(kind: MethodKind | None = None) -> list[Method]:
    """Registered methods, in registry order, optionally of one kind."""
    return [m for m in _METHODS if kind is None or m.kind == kind]


def models() -> list[Method]:
    """The registered mosaicvi models."""
    return methods("model")


def names(kind: MethodKind | None = None) -> list[str]:
    """Keys of the registered methods (optionally of one kind)."""
    return [m.name for m in methods(kind)]


def get(name: str) -> Method:
    """A method by key or display name (case-insensitive)."""
    wanted = name.lower()
    for method in _METHODS:
        if wanted in (method.name, method.display_name.lower()):
            return method
    raise KeyError(f"Unknown method {name!r}; registered: {', '.join(names())}.")


def peer_for(second_modality: str) -> Method | None:
    """The peer that models RNA + ``second_modality`` (TOTALVI for adt, MULTIVI for atac)."""
    for method in methods("peer"):
        if method.handles(second_modality):
            return method
    return None
