"""TileDB-SOMA Experiments as a store: one measurement per modality, read cell block by block.

The CELLxGENE Census layout is a SOMA ``Experiment`` whose ``obs`` table is shared by every
measurement (``ms["RNA"]``, ``ms["ADT"]``, ...), each with its own ``var`` table and ``X`` layers
(sparse ``cells x features`` arrays indexed by ``soma_joinid``). :func:`read_soma` opens such an
Experiment as a MuData whose modalities' ``X`` are :class:`SomaRows`: nothing but ``obs`` and
``var`` is read until a model asks for a block of cells, so a model trains from the store
without an export to a file first. A cell belongs to a modality when its row of that
measurement's ``X`` holds at least one non-zero value (SOMA has no per-measurement cell list),
or, with ``observed=``, where a boolean ``obs`` column says so.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence

import anndata as ad
import mudata
import numpy as np
import pandas as pd
import scipy.sparse as sp
from mudata import MuData

from ._backed import row_key

try:
    from anndata.abc import CSRDataset
except ImportError:  # anndata < 0.11
    from anndata.experimental import CSRDataset

logger = logging.getLogger(__name__)

#: cells read per request when a measurement is scanned whole (presence, library sizes)
_SCAN_CELLS = 20_000


def _tiledbsoma():
    try:
        import tiledbsoma
    except ImportError as error:  # an optional dependency
        raise ImportError(
            "Reading a SOMA Experiment needs the tiledbsoma package: "
            "`pip install 'mosaicvi[soma]'` (or `pip install tiledbsoma`)."
        ) from error
    return tiledbsoma


class SomaRows(CSRDataset):
    """One ``X`` layer of a SOMA measurement, restricted to some cells and read by cell.

    Rows are the cells ``obs_joinids`` (sorted), columns the features ``var_joinids``. A read of
    many cells is one SOMA request with their join ids as point coordinates; the result comes
    back as a float32 CSR block. TileDB decompresses whole tiles (a few hundred cells of a
    typical RNA array), so the out-of-core loader reads a SOMA store in blocks of
    ``block_cells`` consecutive cells rather than its default 64. The array is opened lazily,
    once per process (a pickled ``SomaRows`` reopens the store where it is unpickled), and
    reads are serialised by a lock.

    Parameters
    ----------
    uri
        URI of the SOMA ``SparseNDArray`` (``experiment.ms[name].X[layer].uri``).
    obs_joinids
        ``soma_joinid`` of the cells, one per row, strictly increasing.
    var_joinids
        ``soma_joinid`` of the features, one per column.
    context
        A ``tiledbsoma.SOMATileDBContext`` (credentials, configuration); ``None``: default.
    timestamp
        TileDB timestamp (ms) to open the array at, so that every read sees the same snapshot
        of the store; ``None``: the latest.
    row_sums
        Sum of each row, where a scan of the store already computed it.
    """

    format = "csr"
    block_cells = 256
    backend = "tiledb"  # what anndata shows; reads never go through anndata's backends

    def __init__(
        self, uri: str, obs_joinids, var_joinids, context=None, timestamp=None, row_sums=None
    ):
        self.uri = str(uri)
        self.obs_joinids = np.asarray(obs_joinids, dtype=np.int64)
        if np.any(np.diff(self.obs_joinids) <= 0):
            raise ValueError("obs_joinids must be strictly increasing.")
        self.var_joinids = np.asarray(var_joinids, dtype=np.int64)
        self._column_order = np.argsort(self.var_joinids, kind="stable")
        self._sorted_var = self.var_joinids[self._column_order]
        self._all_features: bool | None = None
        self.context, self.timestamp = context, timestamp
        self.row_sums = None if row_sums is None else np.asarray(row_sums, dtype=np.float64)
        self.shape = (len(self.obs_joinids), len(self.var_joinids))
        self.dtype = np.dtype(np.float32)
        self._array, self._pid, self._lock = None, None, threading.Lock()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_array=None, _pid=None, _lock=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SomaRows({self.shape[0]} cells x {self.shape[1]} features of {self.uri})"

    def _open(self):
        if self._array is None or self._pid != os.getpid():
            tiledbsoma = _tiledbsoma()
            self._array = tiledbsoma.SparseNDArray.open(
                self.uri, tiledb_timestamp=self.timestamp, context=self.context
            )
            self._pid = os.getpid()
            n_features = int(self._array.shape[1])
            self._all_features = len(self.var_joinids) == n_features and np.array_equal(
                self._sorted_var, np.arange(n_features)
            )
        return self._array

    def _tables(self, joinids: np.ndarray) -> Iterator:
        """The stored values of cells ``joinids`` (sorted), as arrow tables."""
        with self._lock:
            array = self._open()
            features = None if self._all_features else self._sorted_var
            yield from array.read(coords=(joinids, features)).tables()

    def _block(self, joinids: np.ndarray) -> sp.csr_matrix:
        """Cells ``joinids`` (strictly increasing) as a CSR block, rows in that order."""
        rows, columns, values = [], [], []
        for table in self._tables(joinids):
            rows.append(np.searchsorted(joinids, table["soma_dim_0"].to_numpy()))
            found = np.searchsorted(self._sorted_var, table["soma_dim_1"].to_numpy())
            columns.append(self._column_order[found])
            values.append(table["soma_data"].to_numpy().astype(np.float32, copy=False))
        if not rows:
            return sp.csr_matrix((len(joinids), self.shape[1]), dtype=np.float32)
        block = sp.coo_matrix(
            (np.concatenate(values), (np.concatenate(rows), np.concatenate(columns))),
            shape=(len(joinids), self.shape[1]),
        )
        return block.tocsr()

    def runs(self, starts: np.ndarray, stops: np.ndarray) -> sp.csr_matrix:
        """Rows ``starts[i]:stops[i]`` of every run, stacked (one SOMA request)."""
        rows = np.concatenate([np.arange(a, b) for a, b in zip(starts, stops)])
        return self._block(self.obs_joinids[rows])

    def __getitem__(self, index) -> sp.csr_matrix:
        index, columns = row_key(index, self.shape[0])
        wanted, order = np.unique(index, return_inverse=True)
        block = self._block(self.obs_joinids[wanted])[order]
        return block if columns is None else block[:, columns]

    def to_memory(self) -> sp.csr_matrix:
        """The whole matrix in memory (read cell chunk by cell chunk)."""
        blocks = [self[start:stop] for start, stop in _spans(self.shape[0])]
        return sp.vstack(blocks, format="csr", dtype=np.float32)

    def stored_values(self, chunk_cells: int = _SCAN_CELLS) -> Iterator[np.ndarray]:
        """The stored values, one request of ``chunk_cells`` cells at a time."""
        for start, stop in _spans(self.shape[0], chunk_cells):
            for table in self._tables(self.obs_joinids[start:stop]):
                yield table["soma_data"].to_numpy()


def _spans(n: int, step: int = _SCAN_CELLS) -> Iterator[tuple[int, int]]:
    for start in range(0, n, step):
        yield start, min(start + step, n)


def _scan_cells(array, joinids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per cell of ``joinids`` (sorted): has it a non-zero value in ``array``, and its row sum."""
    present = np.zeros(len(joinids), dtype=bool)
    sums = np.zeros(len(joinids))
    for start, stop in _spans(len(joinids)):
        chunk = joinids[start:stop]
        for table in array.read(coords=(chunk,)).tables():
            values = table["soma_data"].to_numpy()
            rows = np.searchsorted(chunk, table["soma_dim_0"].to_numpy())
            present[start + rows[values != 0]] = True
            sums[start:stop] += np.bincount(rows, weights=values, minlength=len(chunk))
    return present, sums


def _index_of(frame: pd.DataFrame, column: str | None, what: str, where: str) -> pd.Index:
    if column is None:
        return pd.Index(frame["soma_joinid"].astype(str), name="soma_joinid")
    if column not in frame.columns:
        raise KeyError(
            f"{where} has no column {column!r} for {what} names (it has {list(frame.columns)}). "
            f"Pass `{what}_index=` with one of them, or None to name them by soma_joinid."
        )
    index = pd.Index(frame[column].astype(str), name=column)
    if not index.is_unique:
        raise ValueError(
            f"Column {column!r} of {where} has duplicated values, so it cannot name {what}s. "
            f"Pass another `{what}_index=`, or None to name them by soma_joinid."
        )
    return index


def read_soma(
    experiment,
    measurements: Sequence[str] | Mapping[str, str] | None = None,
    *,
    X_layer: str = "raw",
    obs_value_filter: str | None = None,
    obs_column_names: Sequence[str] | None = None,
    obs_index: str | None = "obs_id",
    var_index: str | None = "var_id",
    observed: Mapping[str, str] | None = None,
    context=None,
) -> MuData:
    """Open measurements of a TileDB-SOMA Experiment as a MuData whose ``X`` stay in the store.

    Only ``obs`` (the cells that pass ``obs_value_filter``) and each measurement's ``var`` are
    read; every modality's ``X`` is a :class:`SomaRows` that models read block by block, as
    they do a backed ``.h5mu`` (``data_loader="out_of_core"``).

    Parameters
    ----------
    experiment
        URI of a SOMA Experiment (a local folder, ``s3://...``), or an open
        ``tiledbsoma.Experiment``.
    measurements
        Measurements to read, each becoming a modality of the same name; a mapping
        ``{modality: measurement}`` renames them. Default: every measurement.
    X_layer
        The ``X`` layer with raw counts in each measurement (``"raw"`` in CELLxGENE Census;
        ``tiledbsoma.io.from_anndata`` writes ``"data"`` unless told otherwise).
    obs_value_filter
        A SOMA value filter on ``obs``, e.g. ``"tissue == 'blood' and is_primary_data == True"``.
    obs_column_names
        ``obs`` columns to read into ``mdata.obs``; default all.
    obs_index, var_index
        Columns that name cells and features (``tiledbsoma.io`` writes ``obs_id`` and
        ``var_id``; Census names features ``feature_id``); ``None``: their ``soma_joinid``.
    observed
        ``{modality: boolean obs column}`` saying which cells a modality measured. Default: the
        cells whose row of the modality's ``X`` holds a non-zero value (one scan of the store).
    context
        A ``tiledbsoma.SOMATileDBContext`` for remote stores.

    Returns
    -------
    MuData with one modality per measurement; cells that no chosen measurement has are left
    out (their number is logged). Pass it to ``setup_mudata`` as any other MuData.
    """
    tiledbsoma = _tiledbsoma()
    if isinstance(experiment, str | os.PathLike):
        uri = str(experiment)
        if not tiledbsoma.Experiment.exists(uri, context=context):
            raise FileNotFoundError(
                f"{uri} is not a SOMA Experiment. Write one with `mosaicvi.data.write_soma` or "
                "`tiledbsoma.io.from_anndata`, or pass the URI of an existing Experiment."
            )
        with tiledbsoma.Experiment.open(uri, context=context) as opened:
            return read_soma(
                opened, measurements, X_layer=X_layer, obs_value_filter=obs_value_filter,
                obs_column_names=obs_column_names, obs_index=obs_index, var_index=var_index,
                observed=observed, context=context,
            )  # fmt: skip
    exp = experiment
    available = list(exp.ms.keys())
    if measurements is None:
        measurements = available
    mapping = (
        dict(measurements) if isinstance(measurements, Mapping) else {m: m for m in measurements}
    )
    missing = sorted(set(mapping.values()) - set(available))
    if missing:
        raise KeyError(f"Measurements {missing} are not in {exp.uri}, which has {available}.")
    observed = dict(observed or {})
    unknown = sorted(set(observed) - set(mapping))
    if unknown:
        raise KeyError(
            f"`observed` names {unknown}, which are not among the modalities {list(mapping)}."
        )

    columns = None
    if obs_column_names is not None:
        wanted = ["soma_joinid", *obs_column_names, *observed.values()]
        columns = list(dict.fromkeys(wanted + ([obs_index] if obs_index else [])))
    obs = exp.obs.read(value_filter=obs_value_filter, column_names=columns).concat().to_pandas()
    if len(obs) == 0:
        raise ValueError(
            f"No cell of {exp.uri} passes obs_value_filter={obs_value_filter!r}. Check the filter "
            "against `experiment.obs.schema`."
        )
    obs = obs.sort_values("soma_joinid", kind="stable")
    obs.index = _index_of(obs, obs_index, "obs", f"The obs of {exp.uri}")
    joinids = obs["soma_joinid"].to_numpy(dtype=np.int64)
    for name, column in observed.items():
        if column not in obs.columns or obs[column].dtype != bool:
            raise ValueError(
                f"observed[{name!r}] = {column!r} must be a boolean column of obs "
                f"(obs has {list(obs.columns)})."
            )

    mods = {}
    in_any = np.zeros(len(obs), dtype=bool)
    for name, measurement in mapping.items():
        ms = exp.ms[measurement]
        if X_layer not in ms.X:
            raise KeyError(
                f"Measurement {measurement!r} has no X layer {X_layer!r} (it has "
                f"{list(ms.X.keys())}). Pass `X_layer=` with the layer of raw counts."
            )
        array = ms.X[X_layer]
        var = ms.var.read().concat().to_pandas().sort_values("soma_joinid", kind="stable")
        var.index = _index_of(var, var_index, "var", f"The var of measurement {measurement!r}")
        present, sums = _scan_cells(array, joinids)
        if name in observed:
            present = obs[observed[name]].to_numpy()
        cells = obs.index[present]
        in_any |= present
        rows = SomaRows(
            array.uri, joinids[present], var["soma_joinid"].to_numpy(), context,
            timestamp=exp.tiledb_timestamp_ms, row_sums=sums[present],
        )  # fmt: skip
        var = var.drop(columns=["soma_joinid"] + ([var_index] if var_index else []))
        mods[name] = ad.AnnData(X=rows, obs=pd.DataFrame(index=cells), var=var)
        logger.info(
            "SOMA measurement %r: %d of %d cells have values", measurement, len(cells), len(obs)
        )

    # cells in store order (not the union order of MuData), so blocks of cells are contiguous
    with mudata.set_options(pull_on_update=False):
        mdata = MuData(mods, obs=pd.DataFrame(index=obs.index[in_any]))
        mdata.update()
    left_out = len(obs) - mdata.n_obs
    if left_out:
        logger.warning(
            "%d of the %d cells that pass the obs filter have values in none of the "
            "measurements %s; they are left out.", left_out, len(obs), list(mapping.values()),
        )  # fmt: skip
    annotations = obs.drop(columns=[c for c in (obs_index,) if c]).loc[mdata.obs_names]
    for column in annotations.columns:
        mdata.obs[column] = annotations[column].to_numpy()
    return mdata


def write_soma(
    mdata: MuData,
    uri: str | os.PathLike,
    *,
    X_layer: str = "raw",
    layers: Mapping[str, str | None] | None = None,
    context=None,
) -> str:
    """Write a MuData as a SOMA Experiment: ``mdata.obs`` as ``obs``, one measurement per modality.

    A thin sequence of ``tiledbsoma.io`` calls: the first modality creates the Experiment and
    each further one is registered against the cells already there, so a cell measured by
    several modalities has one ``soma_joinid``. Backed modalities are written chunk by chunk.

    Parameters
    ----------
    mdata
        The MuData (only read). Its modalities' ``obs`` columns are not written; cell
        annotations come from ``mdata.obs``.
    uri
        Where to create the Experiment (must not exist).
    X_layer
        Name of the ``X`` layer written in each measurement.
    layers
        ``{modality: layer}`` to write a layer instead of ``X`` (``None``: ``X``).
    context
        A ``tiledbsoma.SOMATileDBContext``.

    Returns
    -------
    The URI of the Experiment.
    """
    tiledbsoma = _tiledbsoma()
    import tiledbsoma.io as soma_io

    uri = str(uri)
    if tiledbsoma.Experiment.exists(uri, context=context):
        raise FileExistsError(f"{uri} already holds a SOMA Experiment. Choose a new URI.")
    layers = dict(layers or {})
    cells = mdata.obs.copy()
    cells.index = cells.index.astype(str)
    for i, (name, mod) in enumerate(mdata.mod.items()):
        layer = layers.get(name)
        matrix = mod.X if layer is None else mod.layers[layer]
        piece = ad.AnnData(
            X=matrix,
            obs=cells.loc[mod.obs_names.astype(str)],
            var=pd.DataFrame(index=mod.var_names.astype(str)),
        )
        common = dict(X_layer_name=X_layer, context=context)
        if i == 0:
            soma_io.from_anndata(uri, piece, name, **common)
            continue
        soma_io.from_anndata(uri, piece, name, ingest_mode="schema_only", **common)
        mapping = soma_io.register_anndatas(
            uri, [piece], measurement_name=name, obs_field_name="obs_id",
            var_field_name="var_id", allow_duplicate_obs_ids=True, context=context,
        )  # fmt: skip
        mapping.prepare_experiment(uri, context=context)
        soma_io.from_anndata(uri, piece, name, registration_mapping=mapping, **common)
    return uri
