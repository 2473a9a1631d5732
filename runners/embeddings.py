"""Text embeddings: a sentence-transformers style encoder (transformers model + pooling).

Reads top to bottom: load from a store folder -> check inputs -> embed a batch -> (the service
encodes the OpenAI response). The folder holds a Hugging Face model plus, optionally,
sentence-transformers' `1_Pooling/config.json`, `modules.json` and `sentence_bert_config.json`,
which choose pooling (mean / cls / max), L2 normalisation and the maximum sequence length,
and `config_sentence_transformers.json`, whose default prompt (`prompts[default_prompt_name]`,
e5's "query: ") is put before every input. BERT and XLM-RoBERTa encoders, with WordPiece or
SentencePiece tokenizers, all go through `AutoModel` / `AutoTokenizer`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from runners.base import Device, Quantization
from runners.onnx_encoder import GRAPH_DIR, GraphError, OnnxEncoder, export_encoder

log = logging.getLogger("botmodels.runners.embeddings")

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
SAMPLE_INPUT = ["The cat sits on the mat.", "A kitten rests on a rug."]

# How the encoder runs: ONNX Runtime over the graph exported at import, PyTorch's TorchScript
# trace, or PyTorch eager. All give the same vectors (checked at load); the order is speed.
Engine = Literal["onnx", "torchscript", "eager"]
# Cosine to PyTorch float32 an engine must reach on every probe at load, or the runner falls
# back to the next engine: float32 graphs must be the same vectors; int8 is allowed the bar
# the project set for quantized embeddings.
EXACT_COSINE = 0.99999
INT8_COSINE = 0.99
# Inputs of several lengths and batch sizes (one long enough to be truncated) that the engines
# are compared on at load.
PROBES = [
    ["one"],
    ["hello world", "a longer probe sentence, with punctuation and more tokens in it"],
    ["x " * 60] * 3,
    ["y " * 600],
    [f"probe {i}: " + "word " * (i * 7 % 23) for i in range(9)],
]


@dataclass(frozen=True)
class EmbeddingBatch:
    vectors: npt.NDArray[np.float32]  # (n, dim), L2-normalised when the model says so
    tokens: list[int]  # tokens per input after truncation, special tokens included


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def default_prompt(config: dict[str, Any]) -> str:
    """sentence-transformers' default prompt: `prompts[default_prompt_name]`, else none."""
    prompts, name = config.get("prompts"), config.get("default_prompt_name")
    if not isinstance(prompts, dict) or not isinstance(name, str):
        return ""
    prompt = prompts.get(name)
    return prompt if isinstance(prompt, str) else ""


def cpu_workers(device: str, requested: int, threads: int | None, *, traced: bool) -> int:
    """Workers a runner splits its batches over: only on the CPU, with the trace (eager
    PyTorch holds the GIL between ops), and never more than its threads; else 1."""
    workers = min(requested, threads or 0)
    return workers if device == "cpu" and traced and workers >= 2 else 1


class EmbeddingsRunner:
    kind = "embeddings"

    def __init__(
        self,
        model_dir: Path,
        *,
        quantization: Quantization,
        device: Device,
        engine: Engine = "onnx",
        workers: int = 1,
        threads: int | None = None,
    ) -> None:
        self.model_dir = model_dir
        self.requested_engine = engine
        self.engine: Engine = "eager"  # what runs, once loaded
        self.quantization = quantization
        self.device = device
        self.dtype = "float32"
        self.requested_workers = workers
        self.threads = threads  # the CPUs this runner may use; None leaves torch's setting alone
        self.workers = 1
        self._lock = threading.Lock()  # one batch at a time on one team of threads
        self._model: Any = None
        self._tokenizer: Any = None
        self._graph: Any = None
        self._onnx: OnnxEncoder | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._flight_lock = threading.Lock()
        self._in_flight = 0  # shares submitted or running, with workers
        self.prefix = ""  # put before every input (the model's default prompt), once loaded

    # 1. Load --------------------------------------------------------------------------------
    def load(self) -> None:
        from transformers import AutoTokenizer

        started = time.perf_counter()
        pooling = _read_json(self.model_dir / "1_Pooling" / "config.json")
        if pooling.get("pooling_mode_cls_token"):
            self.pooling = "cls"
        elif pooling.get("pooling_mode_max_tokens"):
            self.pooling = "max"
        else:
            self.pooling = "mean"
        modules = self.model_dir / "modules.json"
        if modules.is_file():
            types = [m.get("type", "") for m in json.loads(modules.read_text(encoding="utf-8"))]
            self.normalize = any(t.endswith("Normalize") for t in types)
        else:
            self.normalize = True  # OpenAI-style embeddings are unit length
        bert_config = _read_json(self.model_dir / "sentence_bert_config.json")
        self.prefix = default_prompt(
            _read_json(self.model_dir / "config_sentence_transformers.json")
        )

        self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        model_max = int(getattr(self._tokenizer, "model_max_length", 512) or 512)
        self.max_seq_length = int(bert_config.get("max_seq_length", min(model_max, 512)))

        engine = self.requested_engine
        onnx_fits = self.device == "cpu" and self.quantization in ("none", "int8")
        if engine == "onnx" and not onnx_fits:
            # ONNX Runtime's CPU kernels; CUDA, MPS and bitsandbytes 4-bit stay on PyTorch.
            log.info("embeddings: the ONNX engine is for the CPU: using PyTorch")
            engine = "torchscript"
        if engine == "onnx" and self._load_onnx():
            self.engine = "onnx"
        else:
            self._load_torch(traced=engine != "eager")
        log.info(
            "embeddings model %s loaded on %s (%s, quantization %s, %s) in %.1f s",
            self.model_dir.name,
            self.device,
            self.dtype,
            self.quantization,
            self.compute,
            time.perf_counter() - started,
        )

    def _load_onnx(self) -> bool:
        """Open the exported graph and keep it if it gives PyTorch's float32 vectors on the
        probes; int8 (when asked for) must keep INT8_COSINE or the float32 graph is used.
        Else log why and return False (the caller loads PyTorch)."""
        reference = _float32_model(self.model_dir)
        wanted = [self._reference_vectors(reference, texts) for texts in PROBES]
        for int8 in [True, False] if self.quantization == "int8" else [False]:
            try:
                encoder = OnnxEncoder(self.model_dir, threads=self.threads, int8=int8)
            except GraphError as exc:
                log.warning("embeddings: ONNX graph unusable (%s): using PyTorch", exc)
                return False
            worst = 1.0
            for texts, want in zip(PROBES, wanted, strict=True):
                encoded = self._tokenize(texts, "np")
                got = self._pool_numpy(encoder.run(encoded), encoded["attention_mask"])
                worst = min(worst, float(_cosines(got, want).min()))
            bar = INT8_COSINE if int8 else EXACT_COSINE
            if worst >= bar:
                self._onnx = encoder
                self.dim = int(reference.config.hidden_size)
                self.dtype = "int8" if int8 else "float32"
                self.quantization = "int8" if int8 else "none"  # what runs, if int8 missed
                return True
            log.warning(
                "embeddings: ONNX %s differs from PyTorch float32 (cosine %.6f < %s): %s",
                "int8" if int8 else "float32",
                worst,
                bar,
                "using float32" if int8 else "using PyTorch",
            )
        return False

    def _reference_vectors(self, reference: Any, texts: list[str]) -> npt.NDArray[np.float32]:
        batch = self._tokenize(texts, "pt")
        with _torch_inference():
            pooled = self._pool_hidden(reference(**batch).last_hidden_state, batch)
        return np.asarray(pooled.numpy(), dtype=np.float32)

    def _load_torch(self, *, traced: bool) -> None:
        import torch
        from transformers import AutoModel

        kwargs: dict[str, Any] = {}
        if self.quantization in ("int8", "4bit") and (
            self.device == "cuda" or self.quantization == "4bit"
        ):
            from transformers import BitsAndBytesConfig

            compute = torch.float16 if self.device == "cuda" else torch.float32
            kwargs["quantization_config"] = (
                BitsAndBytesConfig(load_in_8bit=True)
                if self.quantization == "int8"
                else BitsAndBytesConfig(
                    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute
                )
            )
            kwargs["device_map"] = {"": self.device}
            self.dtype = "float16" if self.device == "cuda" else "float32"
        elif self.device in ("cuda", "mps"):
            kwargs["dtype"] = torch.float16
            self.dtype = "float16"
        model = AutoModel.from_pretrained(self.model_dir, **kwargs)
        if self.quantization == "int8" and self.device == "cpu":
            model = _quantize_dynamic_int8(model)
        elif "device_map" not in kwargs:
            model = model.to(self.device)
        model.eval()
        self._model = model
        self.dim = int(model.config.hidden_size)
        traceable = traced and "quantization_config" not in kwargs  # not bitsandbytes
        self._graph = self._trace(model) if traceable else None
        self.engine = "torchscript" if self._graph is not None else "eager"
        self._start_workers()

    @property
    def compute(self) -> str:
        """How a batch runs, for logs and /api/models."""
        if self._onnx is not None:
            return f"onnx, {self.threads or 'all'} thread(s)"
        if self.workers > 1:
            per_worker = (self.threads or 1) // self.workers
            return f"{self.engine}, {self.workers} workers x {per_worker} torch thread(s)"
        return self.engine

    def _start_workers(self) -> None:
        """On the CPU, split each batch over `workers` threads with threads/workers torch
        threads each, instead of one team of `threads` on the whole batch.

        Why: on small CPU ops each torch team's start and barrier costs more than it wins, so
        two single-threaded workers on two halves of a batch beat one team of two threads on the
        whole batch in-process (docs/benchmarks.md, Embeddings CPU workers). Needs the traced
        graph (it runs without the GIL); eager, CUDA and MPS keep one worker. Opt-in: served,
        it won at 64 clients and lost at 1 and 16.

        torch sets a thread's team size on its first parallel call, from the process-wide
        default, and `torch.set_num_threads` changes both. Each worker sets its own while the
        loader waits; the default is then put back, so other threads start with `threads`.
        """
        import torch

        workers = cpu_workers(
            self.device, self.requested_workers, self.threads, traced=self._graph is not None
        )
        if workers < 2:
            return
        threads = self.threads or workers
        per_worker = threads // workers
        ready = threading.Barrier(workers)

        def own_team() -> int:
            torch.set_num_threads(per_worker)
            size = torch.get_num_threads()  # the first call fixes this thread's team
            ready.wait()  # one setup per thread: no thread may take two
            return int(size)

        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="botmodels-embed-model")
        sizes = [future.result() for future in [pool.submit(own_team) for _ in range(workers)]]
        torch.set_num_threads(threads)
        if sizes != [per_worker] * workers:  # cannot happen with torch's OpenMP build; be sure
            log.warning("embeddings workers got %s torch threads: using one worker", sizes)
            pool.shutdown()
            return
        self._pool, self.workers = pool, workers

    def close(self) -> None:
        """Stop the worker threads and drop the ONNX session (the model is being unloaded)."""
        self._onnx = None
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def _trace(self, model: Any) -> Any:
        """A TorchScript trace of the encoder, or None. Why: the traced forward runs in C++
        without the GIL, while eager PyTorch takes the GIL back between every op, so in a
        server the event loop's Python work stalls the model (measured: eager fell from 216 to
        36 sentences/s next to a busy Python thread, the trace from 248 to 86). Kept only if
        it matches eager on probe batches of other shapes than the one traced."""
        import warnings

        import torch

        probes = [
            ["one"],
            ["hello world", "a longer probe sentence, with punctuation and more tokens in it"],
            ["x " * 60] * 3,
        ]
        try:
            with warnings.catch_warnings(), torch.inference_mode():
                # TracerWarning: shape checks are baked into the trace; the probes test them.
                warnings.simplefilter("ignore")
                example = self._encode(probes[1])
                graph = torch.jit.trace(model, example_kwarg_inputs=dict(example), strict=False)
                for texts in probes:
                    encoded = self._encode(texts)
                    want = self._pool_hidden(model(**encoded).last_hidden_state, encoded)
                    got = self._pool_hidden(_hidden(graph(**encoded)), encoded)
                    if float((want * got).sum(dim=1).min()) < 0.9999:
                        log.warning("TorchScript trace differs from eager: using eager")
                        return None
        except (RuntimeError, TypeError, ValueError) as exc:
            log.warning("TorchScript trace failed (%s): using eager", exc)
            return None
        return graph

    def _encode(self, texts: list[str]) -> Any:
        return self._tokenize(texts, "pt").to(self.device)

    def _tokenize(self, texts: list[str], tensors: Literal["pt", "np"]) -> Any:
        return self._tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_seq_length,
            return_tensors=tensors,
        )

    def _pool_numpy(
        self, hidden: npt.NDArray[np.float32], attention_mask: npt.NDArray[Any]
    ) -> npt.NDArray[np.float32]:
        """`_pool_hidden` for the ONNX engine's output, in NumPy."""
        mask = attention_mask[:, :, None].astype(np.float32)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "max":
            pooled = np.where(mask > 0, hidden, -np.inf).max(axis=1)
        else:
            pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        if self.normalize:  # as torch.nn.functional.normalize: x / max(|x|, eps)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            pooled = pooled / np.maximum(norms, 1e-12)
        return np.ascontiguousarray(pooled, dtype=np.float32)

    def _pool_hidden(self, hidden: Any, encoded: Any) -> Any:
        import torch

        hidden = hidden.float()
        mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "max":
            pooled = hidden.masked_fill(mask == 0, float("-inf")).max(dim=1).values
        else:
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled

    # 2. Predict a batch ---------------------------------------------------------------------
    def embed(self, texts: list[str]) -> EmbeddingBatch:
        if self._model is None and self._onnx is None:
            raise RuntimeError("EmbeddingsRunner.embed() called before load()")
        if not texts:
            return EmbeddingBatch(np.zeros((0, self.dim), dtype=np.float32), [])
        if self.prefix:
            # the model's prompt is part of what it reads: its tokens count in `tokens` (and
            # in the answer's usage), as sentence-transformers counts them
            texts = [self.prefix + text for text in texts]
        if self._onnx is not None:
            with self._lock:  # one batch at a time on the session's team of threads
                encoded = self._tokenize(texts, "np")
                vectors = self._pool_numpy(self._onnx.run(encoded), encoded["attention_mask"])
            tokens = encoded["attention_mask"].sum(axis=1).tolist()
            return EmbeddingBatch(vectors, [int(t) for t in tokens])
        with self._lock if self._pool is None else contextlib.nullcontext():
            encoded = self._encode(texts)
            pooled = self._run(encoded)
        vectors = pooled.cpu().numpy().astype(np.float32, copy=False)
        tokens = encoded["attention_mask"].sum(dim=1).tolist()
        return EmbeddingBatch(vectors, [int(t) for t in tokens])

    def _run(self, encoded: Any) -> Any:
        """The pooled vectors of a tokenized batch.

        One team of `threads` runs one batch at a time (the caller holds the lock). With
        workers, concurrent batches queue their shares on them instead, so a worker that
        finishes early (the other was preempted by the event loop) takes the next batch's
        share. A lone batch of one, with nothing else in flight, runs on the caller's team of
        `threads`: one worker's single thread was 16 % slower per request at 1 client.
        """
        import torch

        pool = self._pool
        if pool is None:
            return self._forward(encoded)
        shares = self._shares(encoded)
        with self._flight_lock:
            alone = len(shares) == 1 and self._in_flight == 0
            self._in_flight += len(shares)
        try:
            if alone:
                return self._forward(encoded)
            futures = [pool.submit(self._forward, share) for share in shares]
            return torch.cat([future.result() for future in futures])
        finally:
            with self._flight_lock:
                self._in_flight -= len(shares)

    def _forward(self, encoded: Any) -> Any:
        import torch

        with torch.inference_mode():  # per thread: the workers need their own
            if self._graph is not None:
                hidden = _hidden(self._graph(**encoded))
            else:
                hidden = self._model(**encoded).last_hidden_state
            return self._pool_hidden(hidden, encoded)

    def _shares(self, encoded: Any) -> list[Any]:
        """The batch in `workers` contiguous shares, each cut to its own longest input."""
        count = int(encoded["input_ids"].shape[0])
        parts = min(self.workers, count)
        if parts < 2:
            return [encoded]
        mask = encoded["attention_mask"]
        trim = getattr(self._tokenizer, "padding_side", "right") == "right"
        shares = []
        for part in range(parts):
            start, stop = count * part // parts, count * (part + 1) // parts
            width = int(mask[start:stop].sum(dim=1).max()) if trim else int(mask.shape[1])
            shares.append({key: value[start:stop, :width] for key, value in encoded.items()})
        return shares


def _float32_model(model_dir: Path) -> Any:
    """The model in PyTorch float32 eager on the CPU: the reference an engine is checked on."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(model_dir).eval()


def _torch_inference() -> Any:
    import torch

    return torch.inference_mode()


def _cosines(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Row-wise cosine similarity (the rows need not be unit length)."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.asarray((a * b).sum(axis=1) / np.maximum(norms, 1e-12), dtype=np.float32)


def export_onnx(model_dir: Path) -> None:
    """The import step's export: the encoder's graph into `model_dir/onnx/` (float32, dynamic
    batch and sequence; the runner checks it against PyTorch at every load)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    sample = tokenizer(SAMPLE_INPUT, padding=True, return_tensors="pt")
    export_encoder(_float32_model(model_dir), dict(sample), model_dir / GRAPH_DIR, head="hidden")


def _hidden(output: Any) -> Any:
    """last_hidden_state of a traced model's output (a dict, or a tuple in older torch)."""
    return output["last_hidden_state"] if isinstance(output, dict) else output[0]


def _quantize_dynamic_int8(model: Any) -> Any:
    """torch dynamic qint8, per-channel weights, on every Linear but the feed-forward outputs.

    Measured on all-MiniLM-L6-v2 (scripts/bench_embeddings.py): per-tensor qint8 on every Linear
    gives cosine 0.94 to fp32; per-channel 0.96-0.98; keeping the FFN output projections (whose
    GELU inputs carry the outliers) in float gives 0.98-0.99 and is still faster than fp32.
    bitsandbytes int8 reaches 0.999 but is ~3x slower than fp32 on CPU, so it is the CUDA path.
    """
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig

    targets = {
        name: per_channel_dynamic_qconfig
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and not (name.endswith("output.dense") and ".attention." not in name)
    }
    return torch.ao.quantization.quantize_dynamic(model, targets, dtype=torch.qint8)


def build_tiny(folder: Path) -> None:
    """A 2-layer, 64-wide BERT with a word-level vocabulary and mean pooling (random weights).

    64 wide, not narrower: bitsandbytes quantizes in blocks of 64 inputs, and its CPU 4-bit path
    (on AVX-512) cannot handle a layer narrower than one block."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    words = "the a cat dog kitten sits on mat rug rests stocks market fell rose today is are"
    words += " and of to in it was hello world botmodels embeddings test"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words.split()]
    # transformers 5 ignores `vocab_file=` here (every word became [UNK]); `vocab=` is honoured.
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    tokenizer.model_max_length = 128
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 64, "pooling_mode_mean_tokens": True}),
        encoding="utf-8",
    )
