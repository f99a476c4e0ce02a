"""End-to-end smoke runs of benchmark scripts (their --quick modes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_sample_size_quick_runs_end_to_end(shared_data, tmp_path):
    env = dict(os.environ, MOSAICVI_DATA_DIR=str(shared_data), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        # one dataset (CITE-seq, TOTALVI as peer) and one method of each kind keep the smoke run
        # short; every model and MULTIVI as peer are run by the benchmark-command tests
        [
            sys.executable,
            str(BENCHMARKS / "sample_size.py"),
            "--quick",
            "--datasets",
            "reapseq",
            "--methods",
            "multivae",
            "peer",
            "pca",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = json.loads((tmp_path / "sample_size.json").read_text())["records"]
    # 1 dataset x 3 methods (a model, the peer, the baseline) x 2 sizes, one subsample
    assert len(records) == 6
    assert {r["method"] for r in records} == {"MultiVAE", "TOTALVI", "PCA"}
    for r in records:
        for metric in ("nmi", "asw_label", "asw_batch", "graph_connectivity", "overall"):
            assert np.isfinite(r[metric]) and 0.0 <= r[metric] <= 1.0, (r["method"], metric)
    report = (tmp_path / "sample_size.md").read_text()
    assert "| MultiVAE | 150 |" in report and "| TOTALVI | 300 |" in report
    for key in ("reapseq",):
        png = (tmp_path / f"sample_size_{key}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_differential_expression_quick_runs_and_finds_markers(shared_data, tmp_path):
    env = dict(os.environ, MOSAICVI_DATA_DIR=str(shared_data), OMP_NUM_THREADS="1")
    command = [
        sys.executable,
        str(BENCHMARKS / "differential_expression.py"),
        "--quick",
        "--methods",
        "multivae",
        "jae",
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "JAE: no differential expression to compare (skipped)" in proc.stdout
    records = json.loads((tmp_path / "differential_expression.json").read_text())["records"]
    assert {r["method"] for r in records} == {"multivae"}
    assert {r["group"] for r in records} == {"B", "monocytes", "NK", "T"}
    # even 20 epochs put known markers on top for most groups (random ranking: ~0.5 per group)
    assert sum(r["hits"] for r in records) >= 8, records
