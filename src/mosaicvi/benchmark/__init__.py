"""Benchmark mosaicvi's models against scvi-tools peers on your own paired data.

:func:`prepare_task` hides one modality in held-out cells, :func:`run_benchmark` trains and
scores every method the same way, :func:`write_report` writes a markdown report with figures.
``mosaicvi benchmark --data FILE.h5mu --out DIR`` does all three. The methods are those of
:mod:`mosaicvi.registry`.
"""

from ._methods import (
    BenchmarkTask,
    MethodOutput,
    epochs_run_of,
    hide_second_modality,
    is_semi_supervised,
    run_model,
    zero_second_modality,
)
from ._report import umap_coordinates, write_report
from ._run import (
    BenchmarkResult,
    default_epochs,
    default_methods,
    prepare_task,
    resolve_methods,
    run_benchmark,
)

__all__ = [
    "BenchmarkResult",
    "BenchmarkTask",
    "MethodOutput",
    "default_epochs",
    "default_methods",
    "epochs_run_of",
    "hide_second_modality",
    "is_semi_supervised",
    "run_model",
    "zero_second_modality",
    "prepare_task",
    "resolve_methods",
    "run_benchmark",
    "umap_coordinates",
    "write_report",
]
