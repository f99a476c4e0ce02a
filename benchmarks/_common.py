"""Shared helpers for the benchmarks: methods, data, preparation, threads, memory, workers, reports.

The methods come from :mod:`mosaicvi.registry` (:func:`registry`, :func:`resolve_methods`,
:func:`setup_model`): a model registered there appears in every script without editing it.
The real data lives outside the repository (``../shared/data`` relative to the repository root,
see that folder's README); it is read from there and never copied.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("MOSAICVI_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


# ---------------------------------------------------------------------------- threads
def auto_threads() -> int:
    """2 threads on an idle 2-core machine, 1 when something else is already running.

    On a 2-core machine torch with 2 threads can be ~10x slower than with 1 when another
    process competes for the cores (DESIGN.md, known trap 7).
    """
    n_cpu = os.cpu_count() or 1
    load = os.getloadavg()[0]
    return max(1, min(2, n_cpu, int(n_cpu - load + 0.5)))


def set_threads(n: int) -> int:
    """Set torch's intra- and inter-op threads (and BLAS threads for children) explicitly."""
    import torch

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # already set once in this process
        pass
    return torch.get_num_threads()


# ---------------------------------------------------------------------------- memory
def _status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def rss_mb() -> float | None:
    """Current resident set size of this process (MB), Linux only."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """Peak RSS of this process so far (MB): ``VmHWM`` if available, else ``ru_maxrss``."""
    hwm = _status_mb("VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class ChildrenPeakRSS:
    """Peak RSS (MB) of this process's child processes (e.g. a DataLoader's reader), polled.

    A child's ``VmHWM`` is read from ``/proc`` every ``interval`` seconds while it lives;
    :attr:`peak_mb` is the largest over all children seen (0 where there were none or on
    systems without ``/proc``). Its pages shared with the parent (a fork) count in both.
    """

    def __init__(self, interval: float = 0.5):
        import threading

        self.interval, self.peak_mb = interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _children(self) -> list[str]:
        pids = []
        for task in Path("/proc/self/task").glob("*/children"):
            try:
                pids += task.read_text().split()
            except OSError:
                pass
        return pids

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            for pid in self._children():
                try:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            self.peak_mb = max(self.peak_mb, int(line.split()[1]) / 1024.0)
                except OSError:  # the child has just ended
                    pass

    def start(self) -> ChildrenPeakRSS:
        self._thread.start()
        return self

    def stop(self) -> float:
        """Stop polling; the peak (MB)."""
        self._stop.set()
        self._thread.join()
        return self.peak_mb


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ``clear_refs``); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------- methods
PEER = "peer"  # --methods alias: the registered peer for the data's second modality
MODELS = "models"  # --methods alias: every registered mosaicvi model


@functools.cache
def registry():
    """:mod:`mosaicvi.registry`, read without importing the mosaicvi package (nor torch).

    The file is that of the mosaicvi Python would import: a worker's frozen copy (first on its
    ``PYTHONPATH``), else the installed one. Loading it by path keeps a parent process free to
    import the rest of mosaicvi later from a frozen copy (:func:`snapshot_source`).
    """
    if "mosaicvi.registry" in sys.modules:
        return sys.modules["mosaicvi.registry"]
    spec = importlib.util.find_spec("mosaicvi")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("mosaicvi is not importable (install it or set PYTHONPATH)")
    path = Path(next(iter(spec.submodule_search_locations))) / "registry.py"
    module_spec = importlib.util.spec_from_file_location("_mosaicvi_registry", path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # dataclasses look their module up
    module_spec.loader.exec_module(module)
    return module


def label(method) -> str:
    """A method's name in results, tables and worker file names.

    The registry's display name (``MultiVAE``, ``TOTALVI``); baselines keep their key in capitals
    (``PCA``), the name earlier results and reports use.
    """
    return method.name.upper() if method.kind == "baseline" else method.display_name


def method_choices(*kinds: str, aliases: bool = True) -> list[str]:
    """Accepted ``--methods`` values (lower case; parse with ``type=str.lower``).

    Registry keys and display names of the methods of ``kinds`` (all kinds if none), plus the
    aliases ``peer`` (where peers are included) and ``models``.
    """
    choices: list[str] = []
    for method in registry().methods():
        if not kinds or method.kind in kinds:
            choices += [method.name, method.display_name.lower(), label(method).lower()]
    if aliases:
        choices += [MODELS] + ([PEER] if not kinds or "peer" in kinds else [])
    return list(dict.fromkeys(choices))


def default_methods(*kinds: str) -> list[str]:
    """``--methods`` default: every registered method of ``kinds`` in registry order (models,
    peers, baselines), the peers as the one alias ``peer``."""
    names = [PEER if m.kind == "peer" else m.name for m in registry().methods() if m.kind in kinds]
    return list(dict.fromkeys(names))


def add_methods_argument(parser, *kinds: str, extra: tuple[str, ...] = (), note: str = "") -> None:
    """The ``--methods`` option every script has: registered methods of ``kinds`` (+ ``extra``).

    Defaults to every registered method of those kinds (see :func:`default_methods`).
    """
    default = default_methods(*kinds) + list(extra)
    aliases = "'models' = every registered model" + (
        ", 'peer' = the data's peer" if "peer" in kinds else ""
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        type=str.lower,
        choices=method_choices(*kinds) + list(extra),
        default=default,
        metavar="METHOD",
        help=f"{note}registered {'/'.join(kinds)} methods (keys or display names, any case); "
        f"{aliases} (default: {' '.join(default)})",
    )


def resolve_methods(tokens, second: str | None = None) -> list:
    """Registry methods named by ``--methods`` tokens, in the order given, without repeats.

    ``peer`` is the registered peer for ``second`` (skipped when none); ``models`` every
    registered model. With ``second``, methods that do not handle RNA + ``second`` are dropped.
    """
    reg, out = registry(), []
    for token in tokens:
        if token == PEER:
            found = [reg.peer_for(second)] if second is not None else reg.methods("peer")
        elif token == MODELS:
            found = reg.models()
        else:
            found = [reg.get(token)]
        for method in found:
            if method is None or (second is not None and not method.handles(second)):
                continue
            if method.name not in [m.name for m in out]:
                out.append(method)
    return out


def accepted(func, **kwargs) -> dict:
    """The ``kwargs`` that ``func``'s signature names (model-specific options found generically)."""
    params = inspect.signature(func).parameters
    return {k: v for k, v in kwargs.items() if k in params}


def takes_labels(model_cls) -> bool:
    """Whether a model is (semi-)supervised: its ``setup_mudata`` takes ``labels_key``."""
    return "labels_key" in inspect.signature(model_cls.setup_mudata).parameters


def setup_model(model_cls, mdata, modalities, labels=None, batch_key="batch", **setup) -> bool:
    """Register ``mdata`` with a mosaicvi model class; returns whether it got labels.

    ``labels`` (a column of ``mdata.obs``, or values per cell with NaN for unlabelled cells,
    written to ``obs["benchmark_label"]``) go only to models whose ``setup_mudata`` takes
    ``labels_key``; ``setup`` options only where its signature names them. Warnings of the
    set-up (e.g. JAE: few cell-cycle genes among the features) are silenced.
    """
    setup = accepted(model_cls.setup_mudata, **setup)
    if labels is not None and takes_labels(model_cls):
        if not isinstance(labels, str):
            mdata.obs["benchmark_label"] = labels
            labels = "benchmark_label"
        setup["labels_key"] = labels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model_cls.setup_mudata(mdata, modalities=modalities, batch_key=batch_key, **setup)
    return "labels_key" in setup


def impute(model, modality: str, fallback_library: float, **kwargs):
    """``get_normalized_expression`` of ``modality`` at each cell's (predicted) library size.

    Models that predict no library sizes (``library_size="latent"`` raises ``ValueError``) give
    proportions times ``fallback_library``. Returns ``(DataFrame, description of the call)``.
    """
    try:
        values = model.get_normalized_expression(modality=modality, library_size="latent", **kwargs)
        return values, f"get_normalized_expression(modality={modality!r}, library_size='latent')"
    except ValueError:
        values = model.get_normalized_expression(modality=modality, **kwargs) * fallback_library
        return values, (
            f"get_normalized_expression(modality={modality!r}) x {fallback_library:.0f} (median "
            "measured library; the model predicts no library sizes)"
        )


# ---------------------------------------------------------------------------- datasets
@dataclass(frozen=True)
class DatasetSpec:
    """One benchmark dataset and the protocol applied to it."""

    key: str
    file: str
    second: str  # key of the second modality ("adt" or "atac")
    epochs: int  # default equal epoch budget for the trained methods
    n_hidden_batches: int = 1  # last batches (sorted) whose second modality is hidden
    max_atac_peaks: int | None = None  # keep the most frequently open peaks (all methods)
    notes: list[str] = field(default_factory=list)

    @property
    def peer(self) -> str:
        """Display name of the registered peer for this data (TOTALVI for adt, MULTIVI for atac)."""
        return label(registry().peer_for(self.second))


DATASETS: dict[str, DatasetSpec] = {
    spec.key: spec
    for spec in [
        DatasetSpec("bmmc_cite", "neurips2021_bmmc_cite_600.h5mu", "adt", 200),
        DatasetSpec("sln_cite", "mouse_sln_cite_512.h5mu", "adt", 200),
        DatasetSpec("bmmc_multiome", "neurips2021_bmmc_multiome_500.h5mu", "atac", 200),
        DatasetSpec(
            "snare_cortex",
            "snareseq_mouse_cortex_10k.h5mu",
            "atac",
            30,
            n_hidden_batches=3,
            max_atac_peaks=5000,
        ),
    ]
}


@dataclass
class Prepared:
    """A paired dataset after the shared preprocessing, plus which cells hide modality 2."""

    spec: DatasetSpec
    mdata: object  # mudata.MuData, paired, raw counts in X (CSR float32 / dense float32)
    hidden: np.ndarray  # bool per cell: second modality hidden during training
    hidden_batches: list[str]
    notes: list[str]

    @property
    def second(self) -> str:
        return self.spec.second


def paired_cell_types(prep: Prepared) -> np.ndarray:
    """Cell types of the paired cells, NaN for the hidden ones (what semi-supervised models see)."""
    return prep.mdata.obs["cell_type"].astype(object).where(~prep.hidden, np.nan).to_numpy()


def _to_csr32(x):
    import scipy.sparse as sp

    if sp.issparse(x):
        return sp.csr_matrix(x, dtype=np.float32)
    return np.asarray(x, dtype=np.float32)


def prepare_dataset(
    key: str, subsample: int | None = None, seed: int = 0, spec: DatasetSpec | None = None
) -> Prepared:
    """Read a dataset from the shared data folder and apply the shared preprocessing.

    Every method sees exactly the same cells and features:

    - counts as float32, sparse modalities as CSR (row slicing for minibatches);
    - ``batch`` and ``cell_type`` copied from ``mdata.obs``;
    - hidden cells: all cells of the last ``n_hidden_batches`` batches in sorted order;
    - optionally only the ``max_atac_peaks`` most frequently open peaks, counted on the cells
      whose ATAC is *not* hidden (no peek at held-out data);
    - optionally a random subsample of cells (smoke runs, or a study's compute budget).

    ``spec``: a dataset outside :data:`DATASETS` (``key`` is then only its name).
    """
    import anndata as ad
    import mudata as md

    spec = DATASETS[key] if spec is None else spec
    path = DATA_DIR / spec.file
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (set MOSAICVI_DATA_DIR to the data folder)")
    md.set_options(pull_on_update=False)
    raw = md.read_h5mu(path)
    notes = list(spec.notes)
    obs = raw.obs[["batch", "cell_type"]].copy()
    obs["batch"] = obs["batch"].astype(str).astype("category")
    cells = raw.obs_names
    if subsample is not None and subsample < len(cells):
        rng = np.random.default_rng(seed)
        cells = cells[np.sort(rng.choice(len(cells), subsample, replace=False))]
        notes.append(f"random subsample of {subsample} of {len(raw.obs_names)} cells")
    obs = obs.loc[cells]
    mods = {}
    for name in ("rna", spec.second):
        a = raw.mod[name][cells]
        mods[name] = ad.AnnData(X=_to_csr32(a.X), obs=obs[[]].copy(), var=a.var[[]].copy())
    batches = sorted(obs["batch"].unique())
    hidden_batches = batches[-spec.n_hidden_batches :]
    hidden = obs["batch"].isin(hidden_batches).to_numpy()
    if spec.max_atac_peaks is not None and mods[spec.second].n_vars > spec.max_atac_peaks:
        x = mods[spec.second].X[~hidden]
        n_open = np.asarray((x > 0).sum(0)).ravel()
        keep = np.sort(np.argsort(-n_open, kind="stable")[: spec.max_atac_peaks])
        n_before = mods[spec.second].n_vars
        mods[spec.second] = mods[spec.second][:, keep].copy()
        notes.append(
            f"ATAC restricted to the {spec.max_atac_peaks} most frequently open of {n_before} "
            "peaks (counted on non-hidden cells), for all methods alike"
        )
    mdata = md.MuData(mods)
    mdata.obs = obs.copy()
    return Prepared(spec, mdata, hidden, list(hidden_batches), notes)


def fmt(value, digits: int = 3) -> str:
    """Format a number for a markdown table (``n/a`` for None/NaN)."""
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not np.isfinite(value):
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def ratio(a, b) -> float | None:
    """``a / b``, or None where either is missing/non-finite or ``b <= 0``."""
    if a is None or b is None or not np.isfinite(a) or not np.isfinite(b) or b <= 0:
        return None
    return a / b


def met(flag: bool | None) -> str:
    """``MET`` / ``NOT MET`` / ``n/a`` for a target check."""
    return "n/a" if flag is None else ("MET" if flag else "NOT MET")


# ---------------------------------------------------------------------------- workers
class Timer:
    """Wall-clock timer: ``with Timer() as t: ...; t.seconds``."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


WARMUP_STEPS = 10


def step_timer():
    """Lightning callback timing minibatches after a warm-up (steady-state throughput)."""
    from lightning.pytorch.callbacks import Callback

    class StepTimer(Callback):
        def __init__(self):
            self.n_batches, self.n_cells, self.t0, self.t1 = 0, 0, None, None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if self.n_batches == WARMUP_STEPS:
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.n_batches += 1
            if self.n_batches > WARMUP_STEPS:
                self.n_cells += len(next(iter(batch.values())))
                self.t1 = time.perf_counter()

    return StepTimer()


def epochs_run(model, requested: int) -> int:
    """Epochs a model actually trained (early stopping may cut ``requested``)."""
    from mosaicvi.benchmark import epochs_run_of

    return epochs_run_of(model, requested)


def snapshot_source(mode: str, workdir: Path) -> dict:
    """Freeze the mosaicvi source for a whole benchmark run (others may edit src/ meanwhile).

    ``mode="head"``: ``git archive HEAD src/mosaicvi`` into ``workdir/source``; ``"worktree"``:
    a copy of the working tree's ``src/mosaicvi``. Workers and the parent's scoring import
    mosaicvi from that copy (``info["path"]``, first on ``PYTHONPATH`` / ``sys.path``).
    """
    dest = workdir / "source"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)

    def git(*cmd: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO_ROOT), *cmd], capture_output=True, text=True, check=True
        ).stdout.strip()

    info: dict = {"mode": mode}
    try:
        info["commit"] = git("rev-parse", "--short", "HEAD")
        info["dirty_src"] = bool(git("status", "--porcelain", "--", "src/mosaicvi"))
    except (OSError, subprocess.CalledProcessError):
        info["commit"], info["dirty_src"] = None, None
    if mode == "head" and info["commit"]:
        archive = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "archive", "HEAD", "src/mosaicvi"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    else:
        info["mode"] = "worktree"
        shutil.copytree(REPO_ROOT / "src" / "mosaicvi", dest / "src" / "mosaicvi")
    info["path"] = str(dest / "src")
    return info


def source_note(source: dict | None) -> str:
    """One markdown bullet saying which mosaicvi code a report was computed with."""
    if not source:
        return "- mosaicvi source: working tree at run time (not frozen)."
    return (
        f"- mosaicvi source: frozen at start from {source['mode']} (commit {source['commit']}; "
        f"uncommitted changes in src/mosaicvi at the time: {source['dirty_src']})."
    )


def launch_worker(
    script: Path,
    worker_args: list[str],
    result: Path,
    log: Path,
    threads: int,
    source_path: str,
    label: str | None = None,
) -> tuple[dict | None, dict]:
    """Run ``script --worker ...`` in a fresh subprocess with mosaicvi from ``source_path``.

    The worker must write ``<result>.npz`` (arrays) and ``<result>.json`` (metadata). Returns
    ``(arrays, meta)``, or ``(None, {"error": last log line, "wall_s": ...})`` if it failed;
    stdout/stderr go to ``log``. ``label`` names the run in the failure message (default: the
    worker arguments).
    """
    cmd = [sys.executable, str(script), *worker_args, "--result", str(result)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join([source_path, *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("PYTHONWARNINGS", "ignore")
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log.read_text().splitlines()[-25:]
        label = label or " ".join(worker_args)
        print(f"  !! {label} failed (exit {proc.returncode}); log {log}:", flush=True)
        print("\n".join("     " + line for line in tail), flush=True)
        return None, {"error": tail[-1] if tail else f"exit {proc.returncode}", "wall_s": wall}
    with np.load(str(result) + ".npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    with open(str(result) + ".json") as fh:
        meta = json.load(fh)
    meta["wall_s"] = wall
    return arrays, meta


def run_in_parallel(runs: list[tuple[str, list[str], Path]], env: dict, parallel: int) -> dict:
    """Run ``(label, command, log path)`` subprocesses, ``parallel`` at a time.

    Output goes to each run's log; a line per finished run is printed (with the log's tail for a
    failed one). Returns ``{label: exit code}``.
    """
    pending, running, codes = list(runs), [], {}
    t_start = time.perf_counter()
    while pending or running:
        while pending and len(running) < parallel:
            name, cmd, log_path = pending.pop(0)
            log = open(log_path, "w")  # noqa: SIM115 - closed when the run ends
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            running.append((name, proc, log, log_path, time.perf_counter()))
        time.sleep(0.5)
        for item in list(running):
            name, proc, log, log_path, t0 = item
            if proc.poll() is None:
                continue
            log.close()
            running.remove(item)
            codes[name] = proc.returncode
            status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
            now = time.perf_counter()
            print(f"[{now - t_start:6.0f}s] {name}: {status}, {now - t0:.0f} s", flush=True)
            if proc.returncode != 0:
                print(Path(log_path).read_text()[-2000:], flush=True)
    return codes
