"""MultiVAE on real CITE-seq (NeurIPS 2021 BMMC): integration, imputation, unimodal latents.

Reads ``../shared/data``; skips when it is absent.
"""

import mudata as md
import numpy as np
import pytest
import scanpy as sc
from scipy.stats import pearsonr
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from _shared_data import require_shared_data
from mosaicvi.metrics import imputation_scores, knn_overlap, silhouette_label
from mosaicvi.model import MultiVAE
from mosaicvi.tools import label_transfer

QUERY_DONOR = "s1d2"


@pytest.fixture(scope="module")
def cite():
    full = md.read_h5mu(require_shared_data("neurips2021_bmmc_cite_600.h5mu"))
    hidden = (full.obs["batch"] == QUERY_DONOR).to_numpy()
    # mosaic: donor s1d2 keeps RNA only; its ADT is the held-out truth
    mosaic = md.MuData({"rna": full["rna"].copy(), "adt": full["adt"][~hidden].copy()})
    mosaic.obs["batch"] = full.obs["batch"].to_numpy()
    mosaic.obs["cell_type"] = full.obs["cell_type"].to_numpy()
    before = mosaic.copy()
    MultiVAE.setup_mudata(mosaic, modalities=["rna", "adt"], batch_key="batch")
    model = MultiVAE(mosaic)
    model.train(max_epochs=150, enable_progress_bar=False)
    return {"full": full, "mosaic": mosaic, "before": before, "hidden": hidden, "model": model}


def _nmi(embedding, labels, seeds=(0, 1, 2)):
    n_types = len(np.unique(labels))
    return np.mean(
        [
            normalized_mutual_info_score(
                labels, KMeans(n_types, n_init=3, random_state=s).fit_predict(embedding)
            )
            for s in seeds
        ]
    )


def test_latent_beats_pca_of_log_normalised_rna(cite):
    labels = cite["mosaic"].obs["cell_type"].to_numpy()
    rna = cite["full"]["rna"].copy()
    sc.pp.normalize_total(rna, target_sum=1e4)
    sc.pp.log1p(rna)
    sc.pp.pca(rna, n_comps=16, random_state=0)
    latent = cite["model"].get_latent_representation()
    asw_model, asw_pca = (
        silhouette_label(latent, labels),
        silhouette_label(rna.obsm["X_pca"], labels),
    )
    nmi_model, nmi_pca = _nmi(latent, labels), _nmi(rna.obsm["X_pca"], labels)
    print(
        f"ASW model {asw_model:.3f} PCA {asw_pca:.3f}; NMI model {nmi_model:.3f} PCA {nmi_pca:.3f}"
    )
    assert asw_model > asw_pca or nmi_model > nmi_pca


def test_imputed_adt_of_held_out_donor_correlates_with_truth(cite):
    hidden = cite["hidden"]
    truth = np.asarray(cite["full"]["adt"].X[hidden])
    predicted = cite["model"].get_normalized_expression(modality="adt", library_size="latent")
    predicted = predicted.to_numpy()[hidden]
    scores = imputation_scores(predicted, truth)
    # baseline: every held-out cell gets the mean protein profile of the training donor
    reference_mean = np.log1p(np.asarray(cite["full"]["adt"].X[~hidden])).mean(0)
    log_truth, log_pred = np.log1p(truth), np.log1p(predicted)
    per_cell_model = np.mean([pearsonr(p, t)[0] for p, t in zip(log_pred, log_truth)])
    per_cell_baseline = np.mean([pearsonr(reference_mean, t)[0] for t in log_truth])
    print(
        f"per-protein Pearson {scores['pearson']:.3f}; per-cell {per_cell_model:.3f} "
        f"vs reference-mean baseline {per_cell_baseline:.3f}"
    )
    # a constant reference-mean prediction has zero per-protein correlation
    assert scores["pearson"] > 0.4
    assert per_cell_model > per_cell_baseline + 0.1


def test_rna_only_embedding_lands_near_joint_embedding(cite):
    paired = np.flatnonzero(~cite["hidden"])
    model = cite["model"]
    joint = model.get_latent_representation(indices=paired)
    from_rna = model.get_latent_representation(indices=paired, modality="rna")
    overlap = knn_overlap(from_rna, joint, k=15)
    print(f"RNA-only vs joint 15-NN overlap {overlap:.3f}")
    assert overlap > 0.7


def test_user_mudata_unchanged_after_training(cite):
    mosaic, before = cite["mosaic"], cite["before"]
    assert list(mosaic.mod) == list(before.mod)
    assert mosaic.obs.equals(before.obs)
    for key in mosaic.mod:
        assert (mosaic[key].X != before[key].X).sum() == 0
        assert mosaic[key].obs.equals(before[key].obs)
        assert mosaic[key].var.equals(before[key].var)
        assert set(mosaic[key].obsm) == set(before[key].obsm)
    assert set(mosaic.uns) == set(before.uns)


# ---------------------------------------------------------------- query mapping (s1d1 -> s1d2)


@pytest.fixture(scope="module")
def cite_reference():
    full = md.read_h5mu(require_shared_data("neurips2021_bmmc_cite_600.h5mu"))
    in_query = (full.obs["batch"] == QUERY_DONOR).to_numpy()
    reference, query = full[~in_query].copy(), full[in_query].copy()
    MultiVAE.setup_mudata(reference, modalities=["rna", "adt"], batch_key="batch")
    model = MultiVAE(reference)
    model.train(max_epochs=150, enable_progress_bar=False)
    return reference, query, model


@pytest.mark.parametrize("kind", ["paired", "rna_only"])
def test_query_donor_maps_onto_reference(cite_reference, kind):
    reference, query, model = cite_reference
    if kind == "rna_only":
        mapped = md.MuData({"rna": query["rna"].copy()})
        mapped.obs["batch"] = query.obs["batch"].to_numpy()
    else:
        mapped = query
    query_model = MultiVAE.load_query_data(mapped, model)
    query_model.train(max_epochs=100, enable_progress_bar=False)
    transferred = label_transfer(
        model.get_latent_representation(),
        reference.obs["cell_type"],
        query_model.get_latent_representation(),
        reference_index=reference.obs_names,
    )
    truth = query.obs["cell_type"].astype(str).to_numpy()
    accuracy = float((transferred["label"].to_numpy() == truth).mean())
    majority = query.obs["cell_type"].value_counts(normalize=True).max()
    print(f"{kind} query: label transfer {accuracy:.3f} vs majority class {majority:.3f}")
    assert accuracy > majority + 0.15
    if kind == "rna_only":
        truth_adt = np.asarray(query["adt"].X)
        imputed = query_model.get_normalized_expression(modality="adt", library_size="latent")
        scores = imputation_scores(imputed.to_numpy(), truth_adt)
        reference_mean = np.log1p(np.asarray(reference["adt"].X)).mean(0)
        per_cell_model = np.mean(
            [pearsonr(p, t)[0] for p, t in zip(np.log1p(imputed.to_numpy()), np.log1p(truth_adt))]
        )
        per_cell_baseline = np.mean([pearsonr(reference_mean, t)[0] for t in np.log1p(truth_adt)])
        print(
            f"RNA-only query ADT imputation: per-protein Pearson {scores['pearson']:.3f}; "
            f"per-cell {per_cell_model:.3f} vs reference-mean {per_cell_baseline:.3f}"
        )
        assert scores["pearson"] > 0.4
        assert per_cell_model > per_cell_baseline + 0.1
