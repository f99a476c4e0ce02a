"""scArches-style surgery: a query module that holds the reference's weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from scvi.nn import FCLayers
from torch import nn


class IncompatibleReferenceError(ValueError):
    """The reference's parameters do not fit the query model (e.g. another mosaicvi version)."""


def _owning_fclayers(module: nn.Module, name: str) -> FCLayers | None:
    owners = {n: m for n, m in module.named_modules() if isinstance(m, FCLayers)}
    prefixes = [p for p in owners if name.startswith(p + ".")]
    return owners[max(prefixes, key=len)] if prefixes else None


#: state added to the modules after models were first saved, and its neutral start value in a
#: module: encoders' ``missing_value`` and JAE transforms' ``feature_mean`` (feature masks)
_ADDED_STATE = ("missing_value", "feature_mean")


def complete_state_dict(module: nn.Module, state: dict[str, torch.Tensor]) -> dict:
    """``state`` with the entries it predates taken from ``module`` (their start values).

    Lets a model saved before feature masks existed load: without masks they are unused.
    """
    added = {
        name: value.detach().clone()
        for name, value in module.state_dict().items()
        if name not in state and name.rsplit(".", 1)[-1] in _ADDED_STATE
    }
    return {**state, **added} if added else state


def transfer_reference_weights(
    reference_state: dict[str, torch.Tensor],
    module: nn.Module,
    reference_n_cat_list: Sequence[int],
    unfrozen: bool | Sequence[str] = False,
) -> dict[str, torch.Tensor]:
    """Copy reference weights into a query module whose covariates have new categories.

    Covariates enter every :class:`scvi.nn.FCLayers` layer as one-hot columns appended to the
    input, category blocks in order (batch first), new categories at the end of their block. The
    reference's columns are copied to their new positions; the columns of new categories start
    at zero and are the only entries that train, so reference cells are decoded exactly as
    before.

    Parameters
    ----------
    reference_state
        ``state_dict`` of the reference module.
    module
        Freshly built query module (same architecture, more categories).
    reference_n_cat_list
        Categories of each covariate in the reference (batch first).
    unfrozen
        ``True`` trains everything; a list of parameter-name prefixes (e.g. ``["encoders"]``)
        trains those parameters entirely as well.

    Returns
    -------
    ``{parameter name: bool mask of trainable entries}`` for every parameter that is not
    entirely trainable; apply it with :func:`freeze`.
    """
    state = module.state_dict()
    if set(state) != set(reference_state):
        raise IncompatibleReferenceError(
            "The reference's parameters do not match this model's (different mosaicvi version "
            f"or architecture): {sorted(set(state) ^ set(reference_state))[:5]}..."
        )
    old_blocks = [n if n > 1 else 0 for n in reference_n_cat_list]
    new_state, trainable = {}, {}
    for name, new in state.items():
        old = reference_state[name]
        if old.shape == new.shape:
            new_state[name] = old.clone()
            trainable[name] = torch.zeros_like(new, dtype=torch.bool)
            continue
        owner = _owning_fclayers(module, name)
        if owner is None or new.dim() != 2 or old.shape[0] != new.shape[0]:
            raise IncompatibleReferenceError(
                f"Parameter {name!r} has shape {tuple(old.shape)} in the reference but "
                f"{tuple(new.shape)} in the query model."
            )
        new_blocks = list(owner.n_cat_list)
        n_x = new.shape[1] - sum(new_blocks)
        if old.shape[1] != n_x + sum(old_blocks) or len(new_blocks) != len(old_blocks):
            raise IncompatibleReferenceError(f"Cannot map the covariate columns of {name!r}.")
        # new categories start at zero (no offset) and are the only entries that train
        merged = torch.zeros_like(new)
        mask = torch.zeros_like(new, dtype=torch.bool)
        merged[:, :n_x] = old[:, :n_x]
        o_old = o_new = n_x
        for n_old, n_new in zip(old_blocks, new_blocks):
            merged[:, o_new : o_new + n_old] = old[:, o_old : o_old + n_old]
            # a covariate with one reference category had no columns: its column stays zero
            first_new = o_new + max(n_old, 1 if n_new else 0)
            mask[:, first_new : o_new + n_new] = True
            o_old, o_new = o_old + n_old, o_new + n_new
        new_state[name] = merged
        trainable[name] = mask
    module.load_state_dict(new_state)

    masks = {}
    for name, _ in module.named_parameters():
        mask = trainable[name]
        if unfrozen is True or (
            not isinstance(unfrozen, bool) and any(name.startswith(p) for p in unfrozen)
        ):
            mask = torch.ones_like(mask)
        if not mask.all():
            masks[name] = mask
    return masks


def freeze(module: nn.Module, trainable_masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Apply masks from :func:`transfer_reference_weights` to a module's parameters.

    Parameters with no trainable entry get ``requires_grad=False`` (they never reach an
    optimizer); the masks of partly trainable parameters are returned for
    :class:`~mosaicvi.train.FrozenReferenceCallback`. Parameters the module froze itself (inputs
    that no loss reaches, e.g. ``missing_value`` without feature masks) stay frozen; applying
    the same masks again changes nothing.
    """
    partial = {}
    for name, param in module.named_parameters():
        mask = trainable_masks.get(name)
        param.requires_grad = param.requires_grad and (mask is None or bool(mask.any()))
        if mask is not None and mask.any():
            partial[name] = mask
    return partial
