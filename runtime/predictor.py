"""Run an exported model (.onnx or .tflite) with nothing but numpy + onnxruntime / LiteRT.

    from sttabt_edge.runtime import load
    predictor = load("deit_sttabt.onnx", threads=2)
    result = predictor.predict(images=["cat.jpg"])      # labels, scores, kept_counts

The metadata written by the exporter (docs/onnx_contract.md, :mod:`.contract`) tells the
predictor how to preprocess, what the labels are and what the model is. Before anything runs,
the file is checked (:mod:`.modelfile`): its metadata against the contract, the seal over the
model, its companion files and the metadata itself (:mod:`.seal`), its inputs and outputs
against the family's names and the metadata's sizes; every run's inputs are checked too
(:mod:`.inputs`). What cannot be answered correctly is refused with one error line. A predictor
may be shared by threads. This module never imports torch.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sttabt_edge.errors import InferenceError, InputError, ModelFileError, one_line
from sttabt_edge.runtime import contract, modelfile
from sttabt_edge.runtime.inputs import InputSpec, check_inputs
from sttabt_edge.runtime.preprocess import ImagePreprocess, TextPreprocess
from sttabt_edge.runtime.sessions import OPTIMIZATIONS, Optimization, session_options

METADATA_KEY = contract.METADATA_KEY
FORMAT_VERSION = contract.FORMAT_VERSION

__all__ = ["ModelFileError", "Prediction", "Predictor", "load"]


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
                "top": [
                    {"label": lab, "index": int(i), "score": float(s)}
                    for lab, i, s in zip(self.labels[b], self.indices[b], self.scores[b], strict=True)
                ]
            }
            if self.kept_counts is not None:
                item["kept_counts"] = [int(v) for v in self.kept_counts[b]]
            out.append(item)
        return out


@dataclass
class Metadata:
    """The exporter's JSON metadata, checked against the contract (see docs/onnx_contract.md)."""

    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> str:
        return self.raw["family"]

    @property
    def labels(self) -> list[str]:
        return list(self.raw["labels"])


def _check_top_k(top_k: Any) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise InputError(f"top_k must be a positive integer, got {top_k!r}")
    return int(top_k)


class Predictor:
    """Preprocess, check, run and postprocess; backends differ only in :meth:`_invoke`."""

    input_names: list[str]
    output_names: list[str]

    def __init__(self, path: Path, metadata: Metadata, position_table: int | None = None):
        self.path = path
        self.metadata = metadata
        self.position_table = position_table
        pre = metadata.raw["preprocess"]
        self.image: ImagePreprocess | None = None
        self.text: TextPreprocess | None = None
        self.max_length: int | None = None
        if "image" in pre:
            self.image = ImagePreprocess.from_dict(pre["image"])
        else:
            self.max_length = int(pre["text"]["max_length"])
            self.text = self._tokenizer(pre["text"]["tokenizer_file"], self.max_length)
        self.spec = InputSpec(metadata.family, ())

    def _tokenizer(self, name: str, max_length: int) -> TextPreprocess:
        """The exported tokenizer beside the model; its limit is the model's, never a stray
        tokenizer_config.json's (the contract already made ``name`` a plain file name)."""
        tok = self.path.parent / name
        if not tok.is_file():
            raise ModelFileError(f"tokenizer {tok} (named in {self.path.name}'s metadata) is missing")
        try:
            return TextPreprocess.from_file(tok, max_length=max_length, model_max_length=max_length)
        except InputError as e:
            raise ModelFileError(f"{self.path.name}: {e}") from e

    def _set_io(self, shapes: dict[str, tuple[Any, ...]], outputs: dict[str, tuple[Any, ...]]) -> None:
        """Check the graph's inputs/outputs against the contract and build the input checks."""
        family, meta = self.metadata.family, self.metadata.raw
        allowed, required = contract.INPUT_NAMES[family], contract.REQUIRED_INPUTS[family]
        bad = sorted(set(shapes) - set(allowed)) + [n for n in required if n not in shapes]
        if bad or "logits" not in outputs:
            raise ModelFileError(
                f"{self.path}: graph inputs {sorted(shapes)} / outputs {sorted(outputs)} do not match the "
                f"{family} contract (inputs {list(allowed)}, output 'logits')"
            )
        num = outputs["logits"][-1] if outputs["logits"] else None
        if isinstance(num, int) and num != len(self.metadata.labels):
            raise ModelFileError(
                f"{self.path}: the graph has {num} logits but its metadata {len(meta['labels'])} labels"
            )
        if problems := modelfile.graph_problems(meta, shapes, self.position_table):
            raise ModelFileError(
                f"{self.path}: metadata contradicts the graph: {contract.summarize(problems)}"
            )
        static = {n: tuple(d if isinstance(d, int) and d > 0 else None for d in s) for n, s in shapes.items()}
        self.input_names = [n for n in allowed if n in shapes]
        self.output_names = list(outputs)
        self.spec = InputSpec(
            family,
            tuple(self.input_names),
            static,
            image_size=self.image.image_size if self.image else None,
            max_length=self.max_length,
            vocab_size=meta.get("vocab_size")
            or (self.text.tokenizer.get_vocab_size() if self.text else None),
            type_vocab_size=meta.get("type_vocab_size"),
            **self._spec_options(static),
        )

    def _spec_options(self, static: dict[str, tuple[int | None, ...]]) -> dict[str, Any]:
        first = static[self.input_names[0]] if self.input_names else ()
        return {"fixed_batch": first[0] if first else None}

    # --- backend interface -------------------------------------------------------------
    def _invoke(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raw outputs for a feed of contract inputs, after the input checks (one InputError line)."""
        return self._invoke(check_inputs(self.spec, inputs))

    def preprocess(self, images: Any = None, texts: Any = None) -> dict[str, np.ndarray]:
        if images is not None and texts is not None:
            raise InputError("give images=... or texts=..., not both")
        if images is not None:
            if self.image is None:
                raise InputError(f"{self.path.name} is a text model: pass texts, not images")
            return {"pixel_values": self.image(images)}  # one path or PIL image is a batch of one
        if texts is not None:
            if self.text is None:
                raise InputError(f"{self.path.name} is an image model: pass images, not texts")
            enc = self.text(texts)  # a str is one text, never a list of characters
            return {k: v for k, v in enc.items() if k in self.input_names}
        raise InputError("give images=... or texts=...")

    def predict(self, images: Any = None, texts: Any = None, top_k: int = 5) -> Prediction:
        """Labels and scores for image paths / PIL images (or one), or texts / (text, text) pairs (or one)."""
        k = _check_top_k(top_k)
        return self.postprocess(self.run(self.preprocess(images, texts)), k)

    def postprocess(self, outputs: dict[str, np.ndarray], top_k: int = 5) -> Prediction:
        """Top-k labels; ``top_k`` over the label count gives every label. Non-finite logits are refused."""
        k = _check_top_k(top_k)
        logits = np.asarray(outputs["logits"]).astype(np.float32)
        if not np.isfinite(logits).all():
            raise InferenceError(f"{self.path.name} produced NaN or infinite logits; refusing to rank them")
        k = min(k, logits.shape[1])
        idx = np.argsort(-logits, axis=1, kind="stable")[:, :k]  # (B, k)
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
        optimization: Optimization = "all",
        spinning: bool = False,
        verify_digest: bool = True,
    ):
        import onnxruntime as ort

        checked = modelfile.read_onnx(path, verify_digest)
        opts = session_options(threads, optimization, spinning)
        super().__init__(path, Metadata(checked.meta), checked.position_table)
        try:
            self.session = ort.InferenceSession(
                str(path), opts, providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as e:  # ORT raises its own Fail/InvalidProtobuf types on corrupt files
            raise ModelFileError(
                f"{path}: not a loadable ONNX model ({type(e).__name__}: {one_line(e)})"
            ) from e
        self._input_types = {i.name: i.type for i in self.session.get_inputs()}
        self._set_io(
            {i.name: tuple(i.shape) for i in self.session.get_inputs()},
            {o.name: tuple(o.shape) for o in self.session.get_outputs()},
        )

    def _invoke(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cast = {
            n: x.astype(np.int64 if "int64" in self._input_types[n] else np.float32, copy=False)
            for n, x in feed.items()
        }
        try:
            outs = self.session.run(self.output_names, cast)
        except Exception as e:  # checked inputs should never get here; keep ORT's text to one line
            raise InferenceError(
                f"{self.path.name}: onnxruntime failed ({type(e).__name__}: {one_line(e)})"
            ) from e
        return dict(zip(self.output_names, outs, strict=True))


class TflitePredictor(Predictor):
    """LiteRT (TFLite) interpreter backend; metadata lives in ``<file>.json`` beside the model.

    One interpreter holds one set of input and output tensors, so concurrent calls would
    overwrite each other's inputs (LiteRT then raises, or answers with another call's result):
    a lock makes each sample's set-invoke-get one step, and the predictor safe to share."""

    def __init__(self, path: Path, threads: int | None = None, verify_digest: bool = True):
        super().__init__(path, Metadata(modelfile.read_tflite(path, verify_digest).meta))
        self._lock = threading.Lock()
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            raise ModelFileError("running .tflite needs `pip install ai-edge-litert`") from e
        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads or os.cpu_count() or 1)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ModelFileError(f"{path}: LiteRT cannot load it ({one_line(e)})") from e
        self._inputs = {_tensor_name(d["name"]): d for d in self.interpreter.get_input_details()}
        self._outputs = {_tensor_name(d["name"]): d for d in self.interpreter.get_output_details()}
        self._set_io(
            {n: tuple(int(s) for s in d["shape"]) for n, d in self._inputs.items()},
            {n: tuple(int(s) for s in d["shape"]) for n, d in self._outputs.items()},
        )

    def _spec_options(self, static: dict[str, tuple[int | None, ...]]) -> dict[str, Any]:
        """Any batch (run sample by sample); shorter text is padded to the static length."""
        first = static[self.input_names[0]]
        if first[0] != 1:
            raise ModelFileError(
                f"{self.path}: static batch {first[0]}; the runtime runs TFLite files of batch 1"
            )
        return {"pads_text": True, "fixed_batch": None}

    def _invoke(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if next(iter(feed.values())).shape[0] != 1:  # static batch 1: run sample by sample
            parts = [
                self._invoke({k: v[i : i + 1] for k, v in feed.items()})
                for i in range(next(iter(feed.values())).shape[0])
            ]
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        xs = {
            n: _pad_to(feed[n], tuple(int(s) for s in d["shape"])).astype(d["dtype"])
            for n, d in self._inputs.items()
        }
        try:
            with self._lock:  # get_tensor copies: nothing read here is shared after the lock
                for name, d in self._inputs.items():
                    self.interpreter.set_tensor(d["index"], xs[name])
                self.interpreter.invoke()
                return {n: self.interpreter.get_tensor(d["index"]) for n, d in self._outputs.items()}
        except (ValueError, RuntimeError) as e:
            raise InferenceError(f"{self.path.name}: LiteRT failed ({one_line(e)})") from e


def _tensor_name(name: str) -> str:
    """LiteRT prefixes signature names (``serving_default_input_ids:0``); keep the contract name."""
    for known in ("pixel_values", "input_ids", "attention_mask", "token_type_ids", "logits", "kept_counts"):
        if known in name:
            return known
    return name


def _pad_to(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Right-pad checked text inputs to the static sequence length (pad id 0, mask 0)."""
    if x.ndim != 2 or x.shape[1] == shape[1]:
        return x
    out = np.zeros((x.shape[0], shape[1]), dtype=x.dtype)
    out[:, : x.shape[1]] = x
    return out


def load(
    path: str | os.PathLike[str],
    threads: int | None = None,
    providers: Sequence[str] | None = None,
    optimization: Optimization = "all",
    spinning: bool = False,
    verify_digest: bool = True,
) -> Predictor:
    """Open an exported .onnx or .tflite model, checked against the contract.

    ``verify_digest``: refuse a file whose graph and weights do not hash to the digest its
    metadata recorded at export (a corrupted copy, an edited graph). ``False`` loads it anyway
    (files exported before digests existed). ``spinning``: ONNX Runtime's intra-op threads
    busy-wait between the ops of a run (its own default), and here stop when the run returns
    (``session.force_spinning_stop``). The fastest setting for one model on its own cores; off
    by default because on a small shared CPU the spinning threads slow every neighbour down."""
    p = Path(path)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 0):
        raise InputError(f"threads must be a non-negative integer (0: the runtime's choice), got {threads!r}")
    if optimization not in OPTIMIZATIONS:
        raise InputError(f"optimization must be one of {list(OPTIMIZATIONS)}, got {optimization!r}")
    if not p.is_file():
        raise ModelFileError(f"model file not found: {p}")
    if p.suffix == ".onnx":
        return OrtPredictor(p, threads, providers, optimization, spinning, verify_digest)
    if p.suffix == ".tflite":
        return TflitePredictor(p, threads, verify_digest)
    raise ModelFileError(f"{p}: unknown model type {p.suffix!r} (expected .onnx or .tflite)")
