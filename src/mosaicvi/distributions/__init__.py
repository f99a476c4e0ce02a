"""Likelihoods, posterior mixing (PoE/MoE) and MMD."""

from ._likelihoods import LIKELIHOODS, Likelihood, get_likelihood
from ._mixing import MIXINGS, mixture_of_experts, product_of_experts
from ._mmd import groupwise_mmd, mmd, rbf_kernel

__all__ = [
    "LIKELIHOODS",
    "Likelihood",
    "get_likelihood",
    "MIXINGS",
    "product_of_experts",
    "mixture_of_experts",
    "mmd",
    "groupwise_mmd",
    "rbf_kernel",
]
