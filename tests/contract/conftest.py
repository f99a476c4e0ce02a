"""Contract suite: what every model in :func:`mosaicvi.registry.models` must do.

Every test here takes the ``method`` fixture, which is parametrised over the registry, so a model
registered there gets the whole suite without any change to the tests. Per-model knowledge lives
in one place only, :data:`MODEL_OVERRIDES`; architecture arguments are filtered with
:func:`inspect.signature`, so a model only receives the small-architecture arguments its
``__init__`` accepts.

Trained models are cached per (model, data shape) for the session: each model trains once per
shape, whatever the number of tests that read it. Helpers are reached through the ``contract``
fixture (importing from a ``conftest`` module is ambiguous when ``tests/`` has one too).
"""

from __future__ import annotations

import copy
import inspect
import logging
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from mosaicvi import registry

MODELS = registry.models()

# ------------------------------------------------------------------ the per-model table
#: The only per-model data of the suite, by registry name: ``"setup"`` holds extra
#: ``setup_mudata`` arguments, ``"init"`` extra constructor arguments (they override
#: :data:`SMALL_ARCHITECTURE`). A new model needs an entry only if it cannot be set up with
#: ``batch_key`` alone.
MODEL_OVERRIDES: dict[str, dict[str, dict]] = {
    "jae": {"setup": {"labels_key": "cell_type"}},
}

#: setup_mudata arguments every model gets.
COMMON_SETUP = {"batch_key": "batch"}

#: Small networks for fast CPU tests; each model gets the ones its ``__init__`` names.
SMALL_ARCHITECTURE = {"n_hidden": 32, "n_latent": 8, "n_layers": 1, "n_components": 20}

#: Likelihoods whose normalised expression must be non-negative.
COUNT_LIKELIHOODS = {"nb", "zinb", "poisson", "bernoulli"}

# ------------------------------------------------------------------ data shapes
#: Simulated data sets. ``hide``: batch -> modalities whose cells are removed from the MuData
#: the model sees (the complete simulation is kept as ground truth). ``epochs`` and
#: ``batch_size``: how every model is trained on it (MultiVAE needs ~250 optimiser steps on the
#: three-modality mosaic for its RNA imputation to be measurable: batch size 32).
SHAPES: dict[str, dict] = {
    "paired": {
        "simulate": dict(n_cells=240, n_genes=60, n_proteins=12, n_batches=3, seed=0),
        "hide": {},
        "epochs": 20,
        "batch_size": 64,
    },
    "mosaic": {
        "simulate": dict(n_cells=300, n_genes=60, n_proteins=12, n_batches=3, seed=0),
        "hide": {"batch_2": ("adt",)},
        "epochs": 25,
        "batch_size": 32,
    },
    "trimodal": {
        "simulate": dict(
            n_cells=300,
            modalities=("rna", "adt", "atac"),
            n_genes=60,
            n_proteins=12,
            n_peaks=200,
            n_batches=3,
            seed=1,
        ),
        "hide": {"batch_0": ("atac",), "batch_1": ("adt",), "batch_2": ("rna",)},
        "epochs": 25,
        "batch_size": 32,
    },
}
#: Shapes in which some cells lack a modality.
MOSAIC_SHAPES = [name for name, shape in SHAPES.items() if shape["hide"]]

#: Query mapping: the reference is trained on ``batch_0`` and three quarters of ``batch_1``;
#: ``"new"`` queries are ``batch_2`` (a batch category the reference never saw), ``"known"``
#: queries are the held-out quarter of ``batch_1``.
QUERY_SIMULATION = dict(n_cells=240, n_genes=60, n_proteins=12, n_batches=3, seed=2)
QUERY_EPOCHS = {"reference": 15, "query": 2}
N_DROPPED_GENES = 5

#: Query scenarios: cells (``"new"``/``"known"`` batch), modalities kept, feature layout, how it
#: is mapped (``unfrozen=None``: the model's default) and the warning ``load_query_data`` must
#: give (a regex, or None). A query of known batches has no new parameters, so it is mapped
#: with ``unfrozen=True`` (with the frozen default there is nothing to train).
QUERY_SCENARIOS: dict[str, dict] = {
    "new_batch": dict(batch="new", modalities=("rna", "adt"), features="same", unfrozen=None),
    "rna_only": dict(batch="new", modalities=("rna",), features="same", unfrozen=None),
    "reordered_missing_features": dict(
        batch="new",
        modalities=("rna", "adt"),
        features="reordered_missing",
        unfrozen=None,
        warns=rf"(?s)(?=.*\b{N_DROPPED_GENES}\b)(?=.*'rna')(?=.*missing)",
    ),
    "rna_only_known_batch": dict(
        batch="known", modalities=("rna",), features="same", unfrozen=True
    ),
}
#: Scenarios whose query brings new categories, hence trainable parameters with unfrozen=False.
NEW_CATEGORY_SCENARIOS = [k for k, v in QUERY_SCENARIOS.items() if v["batch"] == "new"]

QUIET = {"enable_progress_bar": False}


# ------------------------------------------------------------------ model arguments
def _named_parameters(function: Callable) -> set[str]:
    """Names a function accepts explicitly (``**kwargs`` does not count)."""
    return {
        name
        for name, p in inspect.signature(function).parameters.items()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }


def setup_kwargs(method) -> dict:
    """``setup_mudata`` arguments for ``method``."""
    return {**COMMON_SETUP, **MODEL_OVERRIDES.get(method.name, {}).get("setup", {})}


def init_kwargs(method) -> dict:
    """Constructor arguments: the small architecture the ``__init__`` accepts, plus overrides."""
    accepted = _named_parameters(method.model_class().__init__)
    small = {k: v for k, v in SMALL_ARCHITECTURE.items() if k in accepted}
    return {**small, **MODEL_OVERRIDES.get(method.name, {}).get("init", {})}


def seed(value: int = 0) -> None:
    import scvi

    scvi.settings.seed = value


def setup(method, mdata: md.MuData, **extra) -> None:
    """Register ``mdata`` for ``method`` (setup warnings, e.g. no cell-cycle genes, silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        method.model_class().setup_mudata(mdata, **{**setup_kwargs(method), **extra})


def make_model(method, mdata: md.MuData):
    seed(0)
    return method.model_class()(mdata, **init_kwargs(method))


def fit(model, epochs: int, batch_size: int = 64, **kwargs):
    """Train without early stopping or progress bar."""
    seed(0)
    model.train(max_epochs=epochs, batch_size=batch_size, early_stopping=False, **QUIET, **kwargs)
    return model


# ------------------------------------------------------------------ MuData builders
def rebuild(mods: Mapping, obs: pd.DataFrame, obsm: Mapping | None = None) -> md.MuData:
    """A MuData of ``mods`` whose global obs is ``obs`` (its order and its label columns)."""
    with md.set_options(pull_on_update=False):
        mdata = md.MuData(dict(mods), obs=pd.DataFrame(index=obs.index))
        mdata.update()
    for column in obs.columns:
        mdata.obs[column] = obs[column].reindex(mdata.obs_names).array
    for key, value in (obsm or {}).items():
        mdata.obsm[key] = np.asarray(value)
    return mdata


def hide_cells(truth: md.MuData, hide: Mapping[str, Sequence[str]]) -> md.MuData:
    """Copy of ``truth`` whose modalities lack the cells of the batches named in ``hide``."""
    mods = {}
    for key, adata in truth.mod.items():
        lacking = [batch for batch, mods_ in hide.items() if key in mods_]
        batch = truth.obs.loc[adata.obs_names, "batch"].astype(str)
        mods[key] = adata[~batch.isin(lacking).to_numpy()].copy()
    return rebuild(mods, truth.obs, {"X_true": truth.obsm["X_true"]})


@dataclass
class Case:
    """A data set: what the model sees (``mdata``) and the complete simulation (``truth``)."""

    shape: str
    mdata: md.MuData
    truth: md.MuData

    def hidden(self, modality: str) -> pd.Index:
        """Cells the simulation measured in ``modality`` but the model's MuData lacks there."""
        names = self.mdata.obs_names
        return names[~names.isin(self.mdata[modality].obs_names)]

    def observed_positions(self, modality: str) -> np.ndarray:
        return np.flatnonzero(self.mdata.obs_names.isin(self.mdata[modality].obs_names))


def build(shape: str, seed: int | None = None, cell_prefix: str = "") -> Case:
    """A fresh MuData object of the given shape.

    Another ``seed`` and ``cell_prefix`` give data no other test sets up (a model may recognise
    a MuData by its content and names, not only by its identity).
    """
    import mosaicvi as mv

    spec = SHAPES[shape]
    simulate = dict(spec["simulate"])
    if seed is not None:
        simulate["seed"] = seed
    truth = mv.data.simulate(**simulate)
    if cell_prefix:
        mods = {}
        for key, adata in truth.mod.items():
            adata = adata.copy()
            adata.obs_names = cell_prefix + adata.obs_names
            mods[key] = adata
        obs = truth.obs.copy()
        obs.index = cell_prefix + obs.index
        truth = rebuild(mods, obs, {"X_true": truth.obsm["X_true"]})
    return Case(shape, hide_cells(truth, spec["hide"]), truth)


def dense(x) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


# ------------------------------------------------------------------ snapshots (user data intact)
def _copy_matrix(x):
    if x is None:
        return None
    return x.copy() if sp.issparse(x) else np.array(x, copy=True)


def _adata_state(adata) -> dict:
    return {
        "obs_names": list(adata.obs_names),
        "var_names": list(adata.var_names),
        "X": _copy_matrix(adata.X),
        "obs": adata.obs.copy(deep=True),
        "var": adata.var.copy(deep=True),
        "layers": {k: _copy_matrix(v) for k, v in adata.layers.items()},
        "obsm": {k: copy.deepcopy(v) for k, v in adata.obsm.items()},
        "varm": {k: copy.deepcopy(v) for k, v in adata.varm.items()},
        "uns": copy.deepcopy(dict(adata.uns)),
    }


def snapshot(mdata: md.MuData) -> dict:
    """Deep copy of everything a user can see in ``mdata`` (global and per modality)."""
    return {
        "mod_keys": list(mdata.mod),
        "obs_names": list(mdata.obs_names),
        "var_names": list(mdata.var_names),
        "obs": mdata.obs.copy(deep=True),
        "var": mdata.var.copy(deep=True),
        "obsm": {k: copy.deepcopy(v) for k, v in mdata.obsm.items()},
        "uns": copy.deepcopy(dict(mdata.uns)),
        "mods": {k: _adata_state(a) for k, a in mdata.mod.items()},
    }


def _assert_matrix_equal(a, b, where: str) -> None:
    assert (a is None) == (b is None), f"{where}: presence changed"
    if a is None:
        return
    assert sp.issparse(a) == sp.issparse(b), f"{where}: sparse/dense changed"
    assert a.shape == b.shape, f"{where}: shape {a.shape} -> {b.shape}"
    assert a.dtype == b.dtype, f"{where}: dtype {a.dtype} -> {b.dtype}"
    if sp.issparse(a):
        assert a.format == b.format, f"{where}: format {a.format} -> {b.format}"
        assert (a != b).nnz == 0, f"{where}: values changed"
    else:
        np.testing.assert_array_equal(a, b, err_msg=f"{where}: values changed")


def _assert_value_equal(a, b, where: str) -> None:
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, obj=where)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys changed"
        for key in a:
            _assert_value_equal(a[key], b[key], f"{where}[{key!r}]")
    elif sp.issparse(a) or isinstance(a, np.ndarray):
        _assert_matrix_equal(a, b, where)
    else:
        assert type(a) is type(b) and a == b, f"{where}: {a!r} -> {b!r}"


def assert_unchanged(before: dict, mdata: md.MuData, label: str = "mdata") -> None:
    """``mdata`` still equals the snapshot ``before`` (obs, var, X, layers, uns, obsm...)."""
    after = snapshot(mdata)
    assert after["mod_keys"] == before["mod_keys"], f"{label}: modalities changed"
    for key in ("obs_names", "var_names"):
        assert after[key] == before[key], f"{label}.{key} changed"
    for key in ("obs", "var", "obsm", "uns"):
        _assert_value_equal(before[key], after[key], f"{label}.{key}")
    for mod, state in before["mods"].items():
        now = after["mods"][mod]
        for key in ("obs_names", "var_names"):
            assert now[key] == state[key], f"{label}[{mod!r}].{key} changed"
        _assert_matrix_equal(state["X"], now["X"], f"{label}[{mod!r}].X")
        for key in ("obs", "var", "layers", "obsm", "varm", "uns"):
            _assert_value_equal(state[key], now[key], f"{label}[{mod!r}].{key}")


# ------------------------------------------------------------------ metrics
def knn_accuracy(z: np.ndarray, labels: np.ndarray, k: int = 15) -> float:
    """Label accuracy of a k-NN classifier fitted on every other cell, tested on the rest."""
    from sklearn.neighbors import KNeighborsClassifier

    train = np.arange(len(z)) % 2 == 0
    classifier = KNeighborsClassifier(k).fit(z[train], labels[train])
    return float(classifier.score(z[~train], labels[~train]))


def majority_rate(labels: np.ndarray) -> float:
    return float(pd.Series(labels).value_counts(normalize=True).max())


def pseudobulk_correlation(
    predicted: np.ndarray, truth: np.ndarray, groups: np.ndarray, min_mean_count: float = 0.2
) -> float:
    """Mean over features of the correlation, across groups of cells, of predicted and true means.

    ``truth`` are counts (normalised by each cell's total), ``predicted`` normalised expression.
    Features with fewer than ``min_mean_count`` counts per cell on average carry too little
    signal to be compared (e.g. most simulated peaks); groups need 3 cells. A model whose
    imputation ignores the cells' biology scores about 0.
    """
    keep = truth.mean(0) >= min_mean_count
    assert keep.sum() >= 5, "too few informative features to measure the imputation"
    truth = (truth / np.maximum(truth.sum(1, keepdims=True), 1.0))[:, keep]
    predicted = predicted[:, keep]
    names = [g for g in np.unique(groups) if (groups == g).sum() >= 3]
    assert len(names) >= 3, "too few groups to measure the imputation"
    t = np.stack([truth[groups == g].mean(0) for g in names])
    p = np.stack([predicted[groups == g].mean(0) for g in names])
    r = [
        np.corrcoef(p[:, j], t[:, j])[0, 1]
        for j in range(t.shape[1])
        if t[:, j].std() > 0 and p[:, j].std() > 0
    ]
    return float(np.mean(r)) if r else 0.0


def words(*required: str) -> str:
    """Regex for ``pytest.raises(match=...)``: every word appears, in any order."""
    return "(?is)" + "".join(f"(?=.*{re.escape(w)})" for w in required)


#: An error raised because the MuData changed after setup_mudata must say so.
EDIT_MESSAGE = re.compile(r"(?i)(chang|modif|edit|stale|since|no longer|out of date|re-?run|again)")


# ------------------------------------------------------------------ fixtures
def pytest_generate_tests(metafunc):
    """Parametrise from the tables above: ``shape`` (every data shape), ``mosaic_shape``
    (shapes that hide cells), ``query_scenario`` and ``new_category_scenario``."""
    tables = {
        "shape": list(SHAPES),
        "mosaic_shape": MOSAIC_SHAPES,
        "query_scenario": list(QUERY_SCENARIOS),
        "new_category_scenario": NEW_CATEGORY_SCENARIOS,
    }
    for name, values in tables.items():
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, values)


@pytest.fixture(params=MODELS, ids=[m.name for m in MODELS])
def method(request):
    """Every registered mosaicvi model."""
    return request.param


@pytest.fixture(autouse=True, scope="session")
def _quiet_logs():
    for name in ("lightning.pytorch", "lightning.fabric", "mosaicvi", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.set_num_threads(1)


@dataclass
class Trained:
    method: object
    case: Case
    model: object


@pytest.fixture(scope="session")
def trained():
    """``trained(method, shape)``: the model set up and trained on ``build(shape)`` (cached)."""
    cache: dict[tuple[str, str], Trained] = {}

    def get(method, shape: str) -> Trained:
        key = (method.name, shape)
        if key not in cache:
            case = build(shape)
            setup(method, case.mdata)
            model = make_model(method, case.mdata)
            fit(model, SHAPES[shape]["epochs"], SHAPES[shape]["batch_size"])
            cache[key] = Trained(method, case, model)
        return cache[key]

    return get


@dataclass
class QueryReference:
    """A reference model plus the cells (of the complete simulation) used for queries."""

    method: object
    truth: md.MuData
    mdata: md.MuData
    model: object
    new_cells: pd.Index
    known_cells: pd.Index


@pytest.fixture(scope="session")
def query_reference():
    """``query_reference(method)``: a reference trained without batch_2 and 1/4 of batch_1."""
    cache: dict[str, QueryReference] = {}

    def get(method) -> QueryReference:
        if method.name not in cache:
            import mosaicvi as mv

            truth = mv.data.simulate(**QUERY_SIMULATION)
            batch = truth.obs["batch"].astype(str).to_numpy()
            in_1 = np.flatnonzero(batch == "batch_1")
            known = truth.obs_names[in_1[::4]]
            new = truth.obs_names[batch == "batch_2"]
            ref_names = truth.obs_names[~truth.obs_names.isin(known.union(new))]
            mods = {k: a[ref_names].copy() for k, a in truth.mod.items()}
            reference = rebuild(mods, truth.obs.loc[ref_names])
            setup(method, reference)
            model = make_model(method, reference)
            fit(model, QUERY_EPOCHS["reference"])
            cache[method.name] = QueryReference(method, truth, reference, model, new, known)
        return cache[method.name]

    return get


def build_query(ref: QueryReference, scenario: str) -> md.MuData:
    """The query MuData of a scenario in :data:`QUERY_SCENARIOS` (a fresh object)."""
    spec = QUERY_SCENARIOS[scenario]
    cells = ref.new_cells if spec["batch"] == "new" else ref.known_cells
    mods = {k: ref.truth[k][cells].copy() for k in spec["modalities"]}
    if spec["features"] == "reordered_missing":
        rna = mods["rna"][:, ::-1]  # reversed gene order ...
        mods["rna"] = rna[:, N_DROPPED_GENES:].copy()  # ... without the last reference genes
        order = np.random.default_rng(0).permutation(mods["adt"].n_vars)
        mods["adt"] = mods["adt"][:, order].copy()
    return rebuild(mods, ref.truth.obs.loc[cells])


def dropped_genes(ref: QueryReference) -> pd.Index:
    """Reference genes absent from the ``reordered_missing`` query."""
    return ref.truth["rna"].var_names[-N_DROPPED_GENES:]


@pytest.fixture(scope="session")
def contract():
    """The suite's helpers (see this module)."""
    return SimpleNamespace(
        SHAPES=SHAPES,
        COUNT_LIKELIHOODS=COUNT_LIKELIHOODS,
        QUERY_SCENARIOS=QUERY_SCENARIOS,
        QUERY_EPOCHS=QUERY_EPOCHS,
        EDIT_MESSAGE=EDIT_MESSAGE,
        MODELS=MODELS,
        build=build,
        build_query=build_query,
        dropped_genes=dropped_genes,
        rebuild=rebuild,
        setup=setup,
        setup_kwargs=setup_kwargs,
        init_kwargs=init_kwargs,
        make_model=make_model,
        fit=fit,
        seed=seed,
        dense=dense,
        snapshot=snapshot,
        assert_unchanged=assert_unchanged,
        knn_accuracy=knn_accuracy,
        majority_rate=majority_rate,
        pseudobulk_correlation=pseudobulk_correlation,
        words=words,
    )
