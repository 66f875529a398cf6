"""Torch-free inference runtime (installed as ``sttabt_edge.runtime``).

Everything here depends only on numpy, pillow, tokenizers and onnxruntime (ai-edge-litert
for .tflite), so it runs on an edge device without torch or transformers. Nothing in this
package may import torch, directly or indirectly; ``tests/runtime/test_runtime_no_torch.py``
enforces that.
"""

from sttabt_edge.errors import InputError

from .predictor import ModelFileError, Prediction, Predictor, load
from .preprocess import ImagePreprocess, TextPreprocess

__all__ = [
    "ImagePreprocess",
    "InputError",
    "ModelFileError",
    "Prediction",
    "Predictor",
    "TextPreprocess",
    "load",
]
