"""Data loading: in-memory minibatches, and minibatches read from disk chunk by chunk."""

from ._in_memory import InMemoryDataLoader, InMemoryDataSplitter, TensorBank, tensor_bank
from ._out_of_core import OutOfCoreDataLoader, OutOfCoreDataSplitter

__all__ = [
    "InMemoryDataLoader",
    "InMemoryDataSplitter",
    "OutOfCoreDataLoader",
    "OutOfCoreDataSplitter",
    "TensorBank",
    "tensor_bank",
]
