"""Default settings chosen by leave-one-dataset-out: are the package defaults the best choice?

Each registered model is trained with its package defaults and with a few one-at-a-time changes
of them (loss and KL/MMD weights, latent size, epochs, minibatch size, the ATAC likelihood) on
every labelled multimodal file of the shared data folder, in ``integration.py``'s mosaic
protocol: the second modality (ADT or ATAC) of the last batch(es) is hidden, and the score is
the scIB total (0.6 bio + 0.4 batch) of the joint embedding of all cells.

Held-out selection: for each dataset D, the setting chosen for D is the one with the largest
mean gain over the defaults on the *other* datasets (a setting that concerns ATAC only on the
other ATAC datasets); the report gives D's score under that choice, under the defaults, under
the best setting for D itself (an optimistic bound no protocol can reach) and the RNA PCA's.
A held-out gain that is positive on most datasets is evidence to change a default; one that is
not says the defaults stand.

Usage::

    .venv/bin/python benchmarks/defaults_study.py                    # every model, ~45 min
    .venv/bin/python benchmarks/defaults_study.py --methods multivae --parallel 2
    .venv/bin/python benchmarks/defaults_study.py --report-only      # re-render saved runs

Each (dataset, method, setting) runs once in a fresh subprocess (1 torch thread; ``--parallel``
of them at a time) and saves its scores to ``<out>_work/runs/``; a rerun skips saved runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS_DIR,
    DatasetSpec,
    fmt,
    label,
    markdown_table,
    paired_cell_types,
    prepare_dataset,
    registry,
    run_in_parallel,
    setup_model,
    snapshot_source,
    source_note,
)

#: Labelled multimodal files (``pbmc10k_cite`` and ``reapseq_pbmc`` carry no cell types).
STUDY_DATASETS = {
    "bmmc_cite": (DatasetSpec("bmmc_cite", "neurips2021_bmmc_cite_600.h5mu", "adt", 200), None),
    "sln_cite": (DatasetSpec("sln_cite", "mouse_sln_cite_512.h5mu", "adt", 200), None),
    "bmmc_multiome": (
        DatasetSpec("bmmc_multiome", "neurips2021_bmmc_multiome_500.h5mu", "atac", 200),
        None,
    ),
    "scicar_kidney": (
        DatasetSpec("scicar_kidney", "scicar_mouse_kidney_554.h5mu", "atac", 200),
        None,
    ),
    # a 2,500-nucleus subsample (4 of its 12 libraries hidden) keeps the study within budget
    "snare_cortex": (
        DatasetSpec(
            "snare_cortex",
            "snareseq_mouse_cortex_10k.h5mu",
            "atac",
            60,
            n_hidden_batches=3,
            max_atac_peaks=5000,
        ),
        2500,
    ),
}

#: One-at-a-time changes of a model's defaults. ``init``: constructor options; ``plan``:
#: ``train(plan_kwargs=...)``; ``train``: other ``train`` options; ``epochs``: factor on the
#: dataset's epoch budget; ``atac``: likelihood of the ATAC modality (RNA + ATAC data only).
#: Every registered model gets the shared ones; a model's own options are added by name.
SHARED_SETTINGS = {"defaults": {}, "epochs x0.5": {"epochs": 0.5}}
MODEL_SETTINGS = {
    "multivae": {
        "mmd_weight 10": {"plan": {"mmd_weight": 10.0}},
        "max_kl_weight 1": {"plan": {"max_kl_weight": 1.0}},
        "n_latent 32": {"init": {"n_latent": 32}},
        "batch_size 256": {"train": {"batch_size": 256}},
        "ATAC bernoulli": {"atac": "bernoulli"},
    },
    "clue": {
        "adversarial_weight 0": {"init": {"adversarial_weight": 0.0}},
        "alignment_weight 0": {"init": {"alignment_weight": 0.0}},
        "ATAC bernoulli": {"atac": "bernoulli"},
    },
    "jae": {"batch_weight 0.2": {"plan": {"batch_weight": 0.2}}},
}
SETTINGS = {
    name: {**SHARED_SETTINGS, **MODEL_SETTINGS.get(name, {})} for name in registry().names("model")
}


def applies(setting: dict, second: str) -> bool:
    """Whether a setting concerns a dataset whose second modality is ``second``."""
    return "atac" not in setting or second == "atac"


def prepared(key: str):
    spec, subsample = STUDY_DATASETS[key]
    return prepare_dataset(key, subsample=subsample, spec=spec)


# ============================================================================ worker
def run_worker(method_name: str, key: str, setting_name: str, result: Path) -> None:
    """Train one setting on one dataset's mosaic and save its scIB scores."""
    import torch

    from mosaicvi.benchmark import hide_second_modality
    from mosaicvi.metrics import integration_scores

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    prep = prepared(key)
    obs = prep.mdata.obs
    t0 = time.perf_counter()
    if method_name == "pca":
        from mosaicvi.benchmark._baselines import rna_pca

        z, epochs = rna_pca(prep.mdata["rna"].X, n_comps=16, seed=0), None
    else:
        import scvi

        scvi.settings.seed = 0
        setting = SETTINGS[method_name][setting_name]
        cls = registry().get(method_name).model_class()
        mosaic = hide_second_modality(prep)
        seen = paired_cell_types(prep)
        second = prep.second
        setup = {"likelihoods": {second: setting["atac"]}} if "atac" in setting else {}
        setup_model(cls, mosaic, {"rna": "rna", second: second}, labels=seen, **setup)
        model = cls(mosaic, **setting.get("init", {}))
        epochs = max(1, round(prep.spec.epochs * setting.get("epochs", 1.0)))
        model.train(
            max_epochs=epochs,
            early_stopping=False,
            enable_progress_bar=False,
            plan_kwargs=setting.get("plan") or None,
            **setting.get("train", {}),
        )
        z = model.get_latent_representation()
    train_s = time.perf_counter() - t0
    scores = integration_scores(z, labels=obs["cell_type"], batch=obs["batch"], n_jobs=1)
    record = {
        "dataset": key,
        "method": method_name,
        "setting": setting_name,
        "epochs": epochs,
        "train_s": train_s,
        "n_cells": int(prep.mdata.n_obs),
        "scores": {k: float(v) for k, v in scores.items()},
    }
    result.write_text(json.dumps(record, indent=1))


# ============================================================================ parent
def tasks(methods: list[str]) -> list[tuple[str, str, str]]:
    out = []
    for key, (spec, _) in STUDY_DATASETS.items():
        out.append(("pca", key, "RNA PCA"))
        for name in methods:
            out += [(name, key, s) for s, v in SETTINGS[name].items() if applies(v, spec.second)]
    return out


def run_path(runs: Path, task: tuple[str, str, str]) -> Path:
    method, key, setting = task
    return runs / f"{key}__{method}__{setting.replace(' ', '_')}.json"


def run_all(todo: list, runs: Path, source: dict, parallel: int) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join([source["path"], *filter(None, [env.get("PYTHONPATH")])])
    commands = []
    for task in todo:
        path = run_path(runs, task)
        cmd = [sys.executable, __file__, "--worker", *task, "--result", str(path)]
        commands.append((" / ".join(task), cmd, path.with_suffix(".log")))
    run_in_parallel(commands, env, parallel)


def load_runs(runs: Path) -> dict:
    records = {}
    for path in sorted(runs.glob("*.json")):
        r = json.loads(path.read_text())
        records[(r["method"], r["dataset"], r["setting"])] = r
    return records


def total(records: dict, method: str, key: str, setting: str) -> float | None:
    r = records.get((method, key, setting))
    return None if r is None else r["scores"]["total"]


def held_out_choice(records: dict, method: str, key: str) -> str:
    """The setting with the largest mean gain over the defaults on the other datasets."""
    second = STUDY_DATASETS[key][0].second
    best, best_gain = "defaults", 0.0
    for name, setting in SETTINGS[method].items():
        if name == "defaults" or not applies(setting, second):
            continue
        gains = []
        for other, (spec, _) in STUDY_DATASETS.items():
            if other == key or not applies(setting, spec.second):
                continue
            a, b = total(records, method, other, name), total(records, method, other, "defaults")
            if a is not None and b is not None:
                gains.append(a - b)
        if gains and np.mean(gains) > best_gain:
            best, best_gain = name, float(np.mean(gains))
    return best


def render(records: dict, methods: list[str], source: dict | None) -> str:
    lines = [
        "## Defaults study: leave-one-dataset-out",
        "",
        "scIB total (0.6 bio + 0.4 batch) of the joint embedding, mosaic protocol of "
        "`integration.py` (second modality of the last batch(es) hidden), seed 0.",
        "",
        source_note(source),
        "",
    ]
    datasets = list(STUDY_DATASETS)
    for method in methods:
        name_of = label(registry().get(method))
        header = ["setting", *datasets, "mean gain vs defaults"]
        rows = []
        for name, setting in SETTINGS[method].items():
            cells, gains = [], []
            for key in datasets:
                value = total(records, method, key, name)
                base = total(records, method, key, "defaults")
                cells.append(fmt(value) if applies(setting, STUDY_DATASETS[key][0].second) else "")
                if value is not None and base is not None and name != "defaults":
                    gains.append(value - base)
            rows.append([name, *cells, fmt(np.mean(gains)) if gains else ""])
        rows.append(["RNA PCA", *[fmt(total(records, "pca", k, "RNA PCA")) for k in datasets], ""])
        lines += [
            f"### {name_of}: every setting on every dataset",
            "",
            markdown_table(header, rows),
        ]
        header = ["held-out dataset", "chosen on the others", "held out", "defaults", "best"]
        header += ["PCA"]
        rows, gains = [], []
        for key in datasets:
            chosen = held_out_choice(records, method, key)
            base = total(records, method, key, "defaults")
            picked = total(records, method, key, chosen)
            second = STUDY_DATASETS[key][0].second
            options = [s for s, v in SETTINGS[method].items() if applies(v, second)]
            scored = {s: total(records, method, key, s) for s in options}
            scored = {s: v for s, v in scored.items() if v is not None}
            oracle = max(scored, key=scored.get) if scored else None
            if picked is not None and base is not None:
                gains.append(picked - base)
            rows.append(
                [
                    key,
                    chosen,
                    fmt(picked),
                    fmt(base),
                    f"{fmt(scored.get(oracle))} ({oracle})" if oracle else "",
                    fmt(total(records, "pca", key, "RNA PCA")),
                ]
            )
        lines += [
            "",
            f"### {name_of}: held-out choice",
            "",
            markdown_table(header, rows),
            "",
            f"Mean held-out gain over the defaults: {fmt(np.mean(gains) if gains else None)}; "
            f"positive on {sum(g > 0 for g in gains)} of {len(gains)} datasets, negative on "
            f"{sum(g < 0 for g in gains)}.",
            "",
        ]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--datasets", nargs="+", default=list(STUDY_DATASETS))
    p.add_argument("--parallel", type=int, default=2, help="workers at a time (1 thread each)")
    p.add_argument("--out", default=str(RESULTS_DIR / "defaults_study.md"))
    p.add_argument("--source", choices=["head", "worktree"], default="head")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        run_worker(*args.worker, Path(args.result))
        return
    out = Path(args.out)
    workdir = out.with_name(out.stem + "_work")
    runs = workdir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    source = None
    if not args.report_only:
        source = snapshot_source(args.source, workdir)
        (workdir / "source.json").write_text(json.dumps(source))
        todo = [t for t in tasks(args.methods) if t[1] in args.datasets]
        todo = [t for t in todo if not run_path(runs, t).exists()]
        print(f"{len(todo)} runs to do, {args.parallel} at a time", flush=True)
        run_all(todo, runs, source, args.parallel)
    elif (workdir / "source.json").exists():
        source = json.loads((workdir / "source.json").read_text())
    report = render(load_runs(runs), args.methods, source)
    out.write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
