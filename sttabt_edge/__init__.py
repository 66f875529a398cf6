"""sttabt-edge: Sparse Token Transformers with Attention Back-Tracking for edge CPUs.

This top-level package stays torch-free so that ``sttabt_edge.runtime`` imports on a
device that has only numpy and onnxruntime. Torch-based parts live in submodules
(``sttabt_edge.method``, ``sttabt_edge.reducers``, ``sttabt_edge.sparse_model`` ...).
"""

__version__ = "0.1.0"


def __getattr__(name: str):  # lazy: `sttabt_edge.patch` without importing torch at package import
    if name in {"patch", "SparseClassifier", "PatchHandle", "sparse_forward"}:
        from sttabt_edge import sparse_model

        return getattr(sparse_model, name)
    raise AttributeError(f"module 'sttabt_edge' has no attribute {name!r}")
