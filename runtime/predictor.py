"""Run an exported model (.onnx or .tflite) with nothing but numpy + onnxruntime / LiteRT.

    from sttabt_edge.runtime import load
    predictor = load("deit_sttabt.onnx", threads=2)
    result = predictor.predict(images=["cat.jpg"])      # labels, scores, kept_counts

The metadata written by the exporter (docs/onnx_contract.md) tells the predictor how
to preprocess, what the labels are and what the model is; this module never imports torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sttabt_edge.errors import InputError
from sttabt_edge.runtime.preprocess import ImagePreprocess, TextPreprocess

METADATA_KEY = "sttabt_edge"
FORMAT_VERSION = 1


class ModelFileError(InputError):
    """The model file is missing, corrupt, or was not written by sttabt-edge."""


@dataclass
class Prediction:
    labels: list[list[str]]  # (B, top_k)
    scores: np.ndarray  # (B, top_k) softmax probabilities
    indices: np.ndarray  # (B, top_k) class indices
    logits: np.ndarray  # (B, num_labels)
    kept_counts: np.ndarray | None = None  # (B, L) real tokens entering each layer

    def to_json(self) -> list[dict[str, Any]]:
        out = []
        for b in range(len(self.labels)):
            item: dict[str, Any] = {
                "top": [{"label": lab, "index": int(i), "score": float(s)}
                        for lab, i, s in zip(self.labels[b], self.indices[b], self.scores[b], strict=True)]
            }
            if self.kept_counts is not None:
                item["kept_counts"] = [int(v) for v in self.kept_counts[b]]
            out.append(item)
        return out


@dataclass
class Metadata:
    """The exporter's JSON metadata (see docs/onnx_contract.md)."""

    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> str:
        return self.raw.get("family", "vit")

    @property
    def labels(self) -> list[str]:
        return list(self.raw.get("labels") or [])

    @classmethod
    def parse(cls, text: str, source: Path) -> Metadata:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ModelFileError(f"{source}: sttabt_edge metadata is not valid JSON ({e})") from e
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise ModelFileError(f"{source}: metadata format_version {version!r}, this runtime reads {FORMAT_VERSION}")
        return cls(raw)


class Predictor:
    """Preprocess, run and postprocess; backends differ only in :meth:`run`."""

    def __init__(self, path: Path, metadata: Metadata):
        self.path = path
        self.metadata = metadata
        pre = metadata.raw.get("preprocess") or {}
        self.image: ImagePreprocess | None = None
        self.text: TextPreprocess | None = None
        if "image" in pre:
            self.image = ImagePreprocess.from_dict(pre["image"])
        elif "text" in pre:
            tok = path.parent / pre["text"]["tokenizer_file"]
            if not tok.is_file():
                raise ModelFileError(f"tokenizer {tok} (named in {path.name}'s metadata) is missing")
            self.text = TextPreprocess.from_file(tok, max_length=pre["text"].get("max_length"))
        self.max_length = (pre.get("text") or {}).get("max_length")

    # --- backend interface -------------------------------------------------------------
    input_names: list[str]
    output_names: list[str]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------
    def preprocess(
        self, images: Sequence[Any] | None = None, texts: Sequence[Any] | None = None
    ) -> dict[str, np.ndarray]:
        if images is not None:
            if self.image is None:
                raise InputError(f"{self.path.name} is a text model: pass texts, not images")
            return {"pixel_values": self.image(list(images))}
        if texts is not None:
            if self.text is None:
                raise InputError(f"{self.path.name} is an image model: pass images, not texts")
            enc = self.text(list(texts))
            return {k: v for k, v in enc.items() if k in self.input_names}
        raise InputError("give images=... or texts=...")

    def predict(
        self, images: Sequence[Any] | None = None, texts: Sequence[Any] | None = None, top_k: int = 5
    ) -> Prediction:
        """Labels and scores for a batch of image paths/PIL images or texts/(text, text) pairs."""
        outputs = self.run(self.preprocess(images, texts))
        return self.postprocess(outputs, top_k)

    def postprocess(self, outputs: dict[str, np.ndarray], top_k: int = 5) -> Prediction:
        logits = outputs["logits"].astype(np.float32)
        k = min(top_k, logits.shape[1])
        idx = np.argsort(-logits, axis=1)[:, :k]  # (B, k)
        z = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        names = self.metadata.labels
        labels = [[names[i] if i < len(names) else str(i) for i in row] for row in idx]
        kept = outputs.get("kept_counts")
        return Prediction(labels, np.take_along_axis(probs, idx, 1), idx, logits, kept)


class OrtPredictor(Predictor):
    """ONNX Runtime backend."""

    def __init__(
        self,
        path: Path,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        optimization: str = "all",
        spinning: bool = False,
    ):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[optimization]
        # spinning threads make sessions and neighbours slow each other on small CPUs; when on, they
        # spin only inside a run (force_spinning_stop): between runs they sleep instead of stealing
        # the cores of whatever runs next (another model, the preprocessing, a benchmark's other worker)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        if spinning:
            opts.add_session_config_entry("session.force_spinning_stop", "1")
        try:
            self.session = ort.InferenceSession(
                str(path), opts, providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as e:  # ORT raises its own Fail/InvalidProtobuf types on corrupt files
            raise ModelFileError(f"{path}: not a loadable ONNX model ({type(e).__name__}: {e})") from e
        props = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in props:
            raise ModelFileError(f"{path}: no '{METADATA_KEY}' metadata; was it exported by sttabt-edge?")
        super().__init__(path, Metadata.parse(props[METADATA_KEY], path))
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._input_types = {i.name: i.type for i in self.session.get_inputs()}

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {}
        for name in self.input_names:
            if name not in inputs:
                raise InputError(f"{self.path.name} needs input {name!r}")
            x = inputs[name]
            feed[name] = x.astype(np.int64) if "int64" in self._input_types[name] else x.astype(np.float32)
        if next(iter(feed.values())).shape[0] == 0:
            raise InputError("empty batch")
        return dict(zip(self.output_names, self.session.run(self.output_names, feed), strict=True))


class TflitePredictor(Predictor):
    """LiteRT (TFLite) interpreter backend; metadata lives in ``<file>.json`` beside the model."""

    def __init__(self, path: Path, threads: int | None = None):
        side = path.with_name(path.name + ".json")
        if not side.is_file():
            raise ModelFileError(f"{path}: metadata sidecar {side.name} is missing")
        super().__init__(path, Metadata.parse(side.read_text(), side))
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            raise ImportError("running .tflite needs `pip install ai-edge-litert`") from e
        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads or os.cpu_count() or 1)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ModelFileError(f"{path}: LiteRT cannot load it ({e})") from e
        self._inputs = {_tensor_name(d["name"]): d for d in self.interpreter.get_input_details()}
        self._outputs = {_tensor_name(d["name"]): d for d in self.interpreter.get_output_details()}
        self.input_names = list(self._inputs)
        self.output_names = list(self._outputs)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        first = next(iter(inputs.values()))
        if first.shape[0] == 0:
            raise InputError("empty batch")
        want_b = int(next(iter(self._inputs.values()))["shape"][0])
        if first.shape[0] != want_b:  # static batch: run sample by sample
            if want_b != 1:
                raise InputError(f"{self.path.name} has a fixed batch of {want_b}, got {first.shape[0]}")
            parts = [self.run({k: v[i : i + 1] for k, v in inputs.items()}) for i in range(first.shape[0])]
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        for name, d in self._inputs.items():
            x = inputs[name]
            want_n = tuple(int(s) for s in d["shape"])
            if x.shape[1:] != want_n[1:]:
                x = _pad_to(x, want_n, name)
            self.interpreter.set_tensor(d["index"], x.astype(d["dtype"]))
        self.interpreter.invoke()
        return {n: self.interpreter.get_tensor(d["index"]) for n, d in self._outputs.items()}


def _tensor_name(name: str) -> str:
    """LiteRT prefixes signature names (``serving_default_input_ids:0``); keep the contract name."""
    for known in ("pixel_values", "input_ids", "attention_mask", "token_type_ids", "logits", "kept_counts"):
        if known in name:
            return known
    return name


def _pad_to(x: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """Right-pad text inputs to the static sequence length (pad id 0, mask 0)."""
    if x.ndim != 2 or x.shape[1] > shape[1]:
        raise InputError(f"input {name} has shape {x.shape}; the static model takes {shape}")
    out = np.zeros((x.shape[0], shape[1]), dtype=x.dtype)
    out[:, : x.shape[1]] = x
    return out


def load(
    path: str | os.PathLike[str],
    threads: int | None = None,
    providers: Sequence[str] | None = None,
    optimization: str = "all",
    spinning: bool = False,
) -> Predictor:
    """Open an exported .onnx or .tflite model.

    ``spinning``: ONNX Runtime's intra-op threads busy-wait between the ops of a run (its own
    default), and here stop when the run returns (``session.force_spinning_stop``). The
    fastest setting for one model on its own cores; off by default because on a small shared
    CPU the spinning threads slow every neighbour down."""
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"model file not found: {p}")
    if p.suffix == ".onnx":
        return OrtPredictor(p, threads, providers, optimization, spinning)
    if p.suffix == ".tflite":
        return TflitePredictor(p, threads)
    raise ModelFileError(f"{p}: unknown model type {p.suffix!r} (expected .onnx or .tflite)")
