"""Data loading: in-memory minibatches for data that fits in (CPU or GPU) memory."""

from ._in_memory import InMemoryDataLoader, InMemoryDataSplitter, TensorBank, tensor_bank

__all__ = ["InMemoryDataLoader", "InMemoryDataSplitter", "TensorBank", "tensor_bank"]
