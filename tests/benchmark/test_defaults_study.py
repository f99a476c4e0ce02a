"""The held-out selection rule of ``benchmarks/defaults_study.py``, on made-up scores."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import defaults_study as study  # noqa: E402


def _records(totals: dict) -> dict:
    """``{(method, dataset, setting): total}`` -> the study's run records."""
    return {key: {"scores": {"total": value}} for key, value in totals.items()}


@pytest.fixture
def two_settings(monkeypatch):
    monkeypatch.setattr(
        study,
        "SETTINGS",
        {"multivae": {"defaults": {}, "n_latent 32": {"init": {"n_latent": 32}}}},
    )
    return list(study.STUDY_DATASETS)


def test_the_held_out_dataset_does_not_vote_for_its_own_setting(two_settings):
    first, *others = two_settings
    totals = {("multivae", key, "defaults"): 0.5 for key in two_settings}
    # the change helps only the first dataset, by a lot: its mean gain over all is positive
    totals.update({("multivae", key, "n_latent 32"): 0.49 for key in others})
    totals[("multivae", first, "n_latent 32")] = 0.9
    records = _records(totals)
    assert study.held_out_choice(records, "multivae", first) == "defaults"
    # every other dataset sees the first one's gain among its training datasets
    mean_gain_without_one = (0.4 - 0.01 * (len(others) - 1)) / len(others)
    assert mean_gain_without_one > 0
    assert study.held_out_choice(records, "multivae", others[0]) == "n_latent 32"


def test_an_atac_setting_is_chosen_only_from_atac_datasets(monkeypatch):
    monkeypatch.setattr(
        study, "SETTINGS", {"clue": {"defaults": {}, "ATAC bernoulli": {"atac": "bernoulli"}}}
    )
    atac = [k for k, (spec, _) in study.STUDY_DATASETS.items() if spec.second == "atac"]
    cite = [k for k, (spec, _) in study.STUDY_DATASETS.items() if spec.second == "adt"]
    assert len(atac) >= 2 and cite
    totals = {("clue", key, "defaults"): 0.5 for key in study.STUDY_DATASETS}
    totals.update({("clue", key, "ATAC bernoulli"): 0.6 for key in atac})
    records = _records(totals)
    assert study.held_out_choice(records, "clue", atac[0]) == "ATAC bernoulli"
    assert study.held_out_choice(records, "clue", cite[0]) == "defaults"
    assert ("clue", cite[0], "ATAC bernoulli") not in {t for t in study.tasks(["clue"])}
    report = study.render(records, ["clue"], None)
    assert "ATAC bernoulli" in report and "held-out choice" in report
