"""Keys shared by the data contract and the models."""

OBSERVED_KEY = "observed"  # registry key of the per-cell, per-modality observed mask
OBSERVED_OBSM_KEY = "_mosaicvi_observed"
LIBRARY_OBSM_KEY = "_mosaicvi_library"  # per-cell, per-modality sum of the registered values
ROWS_UNS_KEY = "_mosaicvi_rows"  # an assembled AnnData whose features stay on disk keeps them here
BATCH_COLUMN = "_mosaicvi_batch"
MODALITY_VAR_COLUMN = "modality"

# Default likelihood by (lower-case) modality name; other names fall back on the data type.
DEFAULT_LIKELIHOOD_BY_NAME = {
    "rna": "nb",
    "gex": "nb",
    "gene": "nb",
    "genes": "nb",
    "expression": "nb",
    "adt": "nb",
    "protein": "nb",
    "proteins": "nb",
    "prot": "nb",
    "cite": "nb",
    "atac": "poisson",
    "peaks": "poisson",
    "chromatin": "poisson",
    "accessibility": "poisson",
}
