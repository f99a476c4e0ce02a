"""The real trimodal mosaic: NeurIPS 2021 BMMC CITE-seq + Multiome joined with feature masks.

The CITE-seq (1,000 genes + 134 proteins) and Multiome (600 genes + 600 peaks) files are joined
by :func:`mosaicvi.data.concat_mosaic`: the gene panels overlap in 90 genes, no cell has all
three modalities. What a model does with it is asserted where it is shown, in
``tutorials/06_trimodal_feature_masks.ipynb`` (run by ``tests/tutorials``): MultiVAE with masks
transfers labels between the studies better than without them in both directions and than a
PCA of the shared genes on average, and imputes the other panel's genes at their measured level.
``benchmarks/trimodal_mosaic.py`` runs every model over seeds. Reads ``../shared/data``; skips
when absent.
"""

import mudata as md
import pytest

from _shared_data import require_shared_data
from mosaicvi.data import concat_mosaic

FILES = {"cite": "neurips2021_bmmc_cite_600.h5mu", "multiome": "neurips2021_bmmc_multiome_500.h5mu"}


@pytest.fixture(scope="module")
def mosaic():
    md.set_options(pull_on_update=False)
    datasets = {name: md.read_h5mu(require_shared_data(file)) for name, file in FILES.items()}
    shared = datasets["cite"]["rna"].var_names.intersection(datasets["multiome"]["rna"].var_names)
    joined, masks = concat_mosaic(datasets, batch_key="batch")
    return joined, masks, shared, datasets["cite"]["rna"].var_names


def test_concat_mosaic_marks_the_other_panel_unmeasured(mosaic):
    joined, masks, shared, cite_genes = mosaic
    frame = masks["rna"]
    cite_batches = [b for b in frame.index if b.startswith("cite:")]
    assert frame.loc[cite_batches, cite_genes].to_numpy().all()
    only_multiome = joined["rna"].var_names.difference(cite_genes)
    assert len(only_multiome) > 0
    assert not frame.loc[cite_batches, only_multiome].to_numpy().any()
    assert frame[shared].to_numpy().all()
