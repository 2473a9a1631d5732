"""Reranking: a cross-encoder (a transformers sequence-classification model with one logit) that
reads a query and a document together and scores how well the document answers the query.

Reads top to bottom: load from a store folder -> tokenize pairs -> one forward -> scores. The
folder holds a Hugging Face model (`AutoModelForSequenceClassification`) and its tokenizer, as
sentence-transformers' `CrossEncoder` saves it.

The rules, each the one sentence-transformers' `CrossEncoder.predict` follows, so a score here is
the score there (tests/test_rerank_runner.py compares them):
- **Pairs** are tokenized together, `[CLS] query [SEP] document [SEP]` (the tokenizer's own pair
  template), padded to the longest pair of the batch.
- **Truncation**: a pair longer than `max_length` tokens is cut by the tokenizer's
  `longest_first` rule: one token at a time from the end of whichever of the two is longer, until
  the pair fits; so a short query is kept whole and a long document loses its tail. `max_length`
  is the tokenizer's `model_max_length`, at most the position table, and at most `max_length`
  given to the runner (512 by default: bge-reranker-v2-m3 reads 8192 tokens, but its authors
  score at 512, and attention cost grows with the square of the length).
- **Activation**: the model's config may name one (`sentence_transformers.activation_fn`, or the
  older `sbert_ce_default_activation_function`), restricted to torch's own modules; otherwise a
  one-logit model gets the sigmoid. ms-marco-MiniLM-L-6-v2's config names the identity, so its
  scores are raw logits; bge-reranker-v2-m3 names none, so its scores are in (0, 1).

The encoder's forward is one method, `_forward` (token tensors in, one logit per pair out), so
another engine (ONNX Runtime) can take its place.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from runners.base import Device, InvalidItem, Quantization

log = logging.getLogger("botmodels.runners.rerank")

MODEL_ID = "cross-encoder/ms-marco-MiniLM-L-6-v2"
DEFAULT_MAX_LENGTH = 512
Activation = Literal["sigmoid", "identity"]
# sentence-transformers names an activation by its class path; the two a score can use here.
_ACTIVATIONS: dict[str, Activation] = {
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
    "torch.nn.Sigmoid": "sigmoid",
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.Identity": "identity",
}


@dataclass(frozen=True)
class RerankBatch:
    scores: npt.NDArray[np.float32]  # one relevance score per pair, in order
    tokens: list[int]  # tokens per pair after truncation, special tokens included


class UnsupportedModel(ValueError):
    """The stored model is not a one-logit cross-encoder this runner can score with."""


class InvalidPair(InvalidItem):
    code = "invalid_input"
    param = "documents"


def activation_of(config: Any) -> Activation:
    """The activation sentence-transformers' CrossEncoder applies to this model's logit."""
    named: object = None
    st = getattr(config, "sentence_transformers", None)
    if isinstance(st, dict) and st.get("activation_fn"):
        named = st["activation_fn"]
    elif getattr(config, "sbert_ce_default_activation_function", None):
        named = config.sbert_ce_default_activation_function
    if named is None:
        return "sigmoid"
    if named not in _ACTIVATIONS:
        raise UnsupportedModel(
            f"the model's config names activation {named!r}; this runner scores with "
            f"{sorted(_ACTIVATIONS)}"
        )
    return _ACTIVATIONS[str(named)]


class RerankRunner:
    kind = "rerank"

    def __init__(
        self,
        model_dir: Path,
        *,
        quantization: Quantization,
        device: Device,
        torchscript: bool = True,
        max_length: int = DEFAULT_MAX_LENGTH,
    ) -> None:
        self.model_dir = model_dir
        self.quantization = quantization
        self.device = device
        self.torchscript = torchscript
        self.requested_max_length = max_length
        self.dtype = "float32"
        self.activation: Activation = "sigmoid"
        self.max_length = max_length
        self._lock = threading.Lock()  # one batch at a time on one team of threads
        self._model: Any = None
        self._tokenizer: Any = None
        self._graph: Any = None

    # 1. Load --------------------------------------------------------------------------------
    def load(self) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        if self.quantization != "none":
            # No int8 cross-encoder has been measured to keep fp32's ranking: none is offered.
            raise UnsupportedModel(f"rerank quantization {self.quantization!r}: only 'none'")
        started = time.perf_counter()
        self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        kwargs: dict[str, Any] = {}
        if self.device in ("cuda", "mps"):
            kwargs["dtype"] = torch.float16
            self.dtype = "float16"
        config = AutoConfig.from_pretrained(self.model_dir)
        if int(config.num_labels) != 1:
            raise UnsupportedModel(
                f"a cross-encoder for reranking has one logit; this model has {config.num_labels}"
            )
        self.activation = activation_of(config)
        self.max_length = self._max_length(config)
        model = AutoModelForSequenceClassification.from_pretrained(
            self.model_dir, config=config, **kwargs
        )
        model = model.to(self.device)
        model.eval()
        self._model = model
        self._graph = self._trace(model) if self.torchscript else None
        log.info(
            "rerank model %s loaded on %s (%s, %s, %s, max %d tokens) in %.1f s",
            self.model_dir.name,
            self.device,
            self.dtype,
            self.activation,
            self.compute,
            self.max_length,
            time.perf_counter() - started,
        )

    def _max_length(self, config: Any) -> int:
        """The tokenizer's limit, within the position table and the runner's cap."""
        limits = [self.requested_max_length]
        model_max = getattr(self._tokenizer, "model_max_length", None)
        if isinstance(model_max, int) and 0 < model_max < 1_000_000:  # "no limit" is 1e30
            limits.append(model_max)
        positions = getattr(config, "max_position_embeddings", None)
        if isinstance(positions, int) and positions > 0:
            # RoBERTa-style models (XLM-R, bge-reranker) start positions after the padding id.
            offset = 2 if getattr(config, "model_type", "") in ("roberta", "xlm-roberta") else 0
            limits.append(positions - offset)
        return min(limits)

    @property
    def compute(self) -> str:
        """How a batch runs, for logs and /api/models."""
        return "torchscript" if self._graph is not None else "eager"

    def _trace(self, model: Any) -> Any:
        """A TorchScript trace of the model, or None. Why: as for the embeddings encoder, the
        traced forward runs without the GIL, so the server's event loop does not stall it. Kept
        only if its logits match eager's on batches of other shapes than the one traced."""
        import warnings

        import torch

        probes = [
            [("one", "two")],
            [("what is a cat", "a cat is a small animal"), ("hello", "world " * 30)],
            [("x " * 40, "y " * 80)] * 3,
        ]
        try:
            with warnings.catch_warnings(), torch.inference_mode():
                warnings.simplefilter("ignore")  # TracerWarning: the probes test the shapes
                example = self._encode(probes[1])
                graph = torch.jit.trace(model, example_kwarg_inputs=dict(example), strict=False)
                for pairs in probes:
                    encoded = self._encode(pairs)
                    want = model(**encoded).logits.float()
                    got = _logits(graph(**encoded)).float()
                    if float((want - got).abs().max()) > 1e-3 * max(1.0, float(want.abs().max())):
                        log.warning("rerank TorchScript trace differs from eager: using eager")
                        return None
        except (RuntimeError, TypeError, ValueError) as exc:
            log.warning("rerank TorchScript trace failed (%s): using eager", exc)
            return None
        return graph

    # 2. Tokenize ------------------------------------------------------------------------------
    def _encode(self, pairs: list[tuple[str, str]]) -> Any:
        return self._tokenizer(
            [query for query, _ in pairs],
            [document for _, document in pairs],
            padding=True,
            truncation="longest_first",
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)

    # 3. Score a batch -------------------------------------------------------------------------
    def predict(self, pairs: list[tuple[str, str]]) -> RerankBatch:
        """One score per (query, document) pair, in order."""
        if self._model is None:
            raise RuntimeError("RerankRunner.predict() called before load()")
        if not pairs:
            return RerankBatch(np.zeros((0,), dtype=np.float32), [])
        for i, pair in enumerate(pairs):
            if len(pair) != 2 or not all(isinstance(text, str) for text in pair):
                raise InvalidPair(f"pair {i} is not two strings (query, document)")
        with self._lock:
            encoded = self._encode(pairs)
            logits = self._forward(encoded)
        scores = self._activate(logits)
        tokens = encoded["attention_mask"].sum(dim=1).tolist()
        return RerankBatch(scores, [int(t) for t in tokens])

    def _forward(self, encoded: Any) -> Any:
        """The engine: tokenized pairs in, one float32 logit per pair out (a (n,) tensor)."""
        import torch

        with torch.inference_mode():
            if self._graph is not None:
                logits = _logits(self._graph(**encoded))
            else:
                logits = self._model(**encoded).logits
            return logits.float().reshape(-1).cpu()

    def _activate(self, logits: Any) -> npt.NDArray[np.float32]:
        if self.activation == "sigmoid":
            logits = logits.sigmoid()
        return np.asarray(logits.numpy(), dtype=np.float32)


def _logits(output: Any) -> Any:
    """The logits of a traced model's output (a dict, or a tuple in older torch)."""
    return output["logits"] if isinstance(output, dict) else output[0]


def build_tiny(folder: Path) -> None:
    """A 2-layer, 64-wide BERT cross-encoder (one logit, random weights) with a word-level
    vocabulary; 64 wide for the same reason as the embeddings tiny model (bitsandbytes blocks)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    words = "the a cat dog kitten sits on mat rug rests stocks market fell rose today is are"
    words += " and of to in it was what where who how why hello world rerank query document"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words.split()]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    tokenizer.model_max_length = 64
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(  # type: ignore[call-arg]  # num_labels: a PretrainedConfig kwarg
        vocab_size=len(vocab),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        num_labels=1,
        # Wider than BERT's 0.02, so random logits spread over a few units and pairs rank apart.
        initializer_range=0.2,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
