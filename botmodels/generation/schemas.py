"""The generation domain's wire models: the public routes' request bodies, the items of the
batchable image and video APIs, and the answers.

The request models take every field as `Any`: `GenerationFrontend.check_*` checks each field by
hand, so that an error names its rule and its bound (a setting), and nothing is refused earlier
than those checks would refuse it. Their JSON schema still says what each field is;
botmodels/openapi.py documents the bounds, read from the settings.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


def _prompt_required(schema: dict[str, Any]) -> None:
    """`prompt` is required (its check says so when it is missing), though it defaults to None so
    that the check, not the parser, answers."""
    schema["required"] = ["prompt"]
    schema["properties"]["prompt"].pop("default", None)


def _nullable(kind: str, description: str) -> Any:
    return Field(None, description=description, json_schema_extra={"type": [kind, "null"]})


_HandChecked = ConfigDict(json_schema_extra=_prompt_required)
Checked = Any  # checked by hand (GenerationFrontend.check_*); the field says what it takes


# --- request bodies ------------------------------------------------------------------------------
class ImageRequest(BaseModel):
    """`POST /api/image/generate` and `POST /api/image/jobs` (botserver's IMAGE keyword)."""

    model_config = _HandChecked

    prompt: Checked = Field(
        None, description="what to generate", json_schema_extra={"type": "string"}
    )
    steps: Checked = _nullable("integer", "denoising steps; omitted or null: the default")
    width: Checked = _nullable("integer", "pixels; omitted or null: the model's native size")
    height: Checked = _nullable("integer", "pixels; omitted or null: the model's native size")
    guidance_scale: Checked = _nullable(
        "number", "classifier-free guidance; omitted or null: the default"
    )
    seed: Checked = _nullable("integer", "omitted or null: drawn at random and returned")
    negative_prompt: Checked = _nullable(
        "string", "what to avoid (400 where the served model has no guidance: FLUX)"
    )
    model: Checked = _nullable(
        "string", "the stored model's name, with or without its version; omitted: the served one"
    )


class VideoRequest(BaseModel):
    """`POST /api/video/generate` and `POST /api/video/jobs` (botserver's VIDEO keyword)."""

    model_config = _HandChecked

    prompt: Checked = Field(
        None, description="what to generate", json_schema_extra={"type": "string"}
    )
    num_frames: Checked = _nullable("integer", "frames; omitted or null: the default")
    fps: Checked = _nullable("integer", "frames per second; omitted or null: the default")
    steps: Checked = _nullable("integer", "denoising steps; omitted or null: the default")
    width: Checked = _nullable("integer", "pixels; omitted or null: the model's native size")
    height: Checked = _nullable("integer", "pixels; omitted or null: the model's native size")
    guidance_scale: Checked = _nullable(
        "number", "classifier-free guidance; omitted or null: the default"
    )
    seed: Checked = _nullable("integer", "omitted or null: drawn at random and returned")
    negative_prompt: Checked = _nullable("string", "what to avoid")
    model: Checked = _nullable(
        "string", "the stored model's name, with or without its version; omitted: the served one"
    )


class OpenAIImagesRequest(BaseModel):
    """OpenAI's `POST /v1/images/generations`; `seed`, `steps`, `guidance_scale` and
    `negative_prompt` are extensions, `quality`, `style` and `user` are accepted and ignored."""

    model_config = _HandChecked

    prompt: Checked = Field(
        None, description="what to generate", json_schema_extra={"type": "string"}
    )
    model: Checked = _nullable(
        "string", "the stored model's name, with or without its version; omitted: the served one"
    )
    n: Checked = _nullable("integer", "images to make (seeds seed, seed+1, …); omitted or null: 1")
    size: Checked = _nullable("string", "WIDTHxHEIGHT, e.g. 512x512; omitted: the native size")
    response_format: Checked = Field(
        None,
        description="omitted or null: url",
        json_schema_extra={"enum": ["url", "b64_json", None]},
    )
    seed: Checked = _nullable("integer", "omitted or null: drawn at random and returned")
    steps: Checked = _nullable("integer", "denoising steps; omitted or null: the default")
    guidance_scale: Checked = _nullable(
        "number", "classifier-free guidance; omitted or null: the default"
    )
    negative_prompt: Checked = _nullable(
        "string", "what to avoid (400 where the served model has no guidance: FLUX)"
    )
    quality: Checked = Field(None, description="accepted for OpenAI compatibility and ignored")
    style: Checked = Field(None, description="accepted for OpenAI compatibility and ignored")
    user: Checked = Field(None, description="accepted for OpenAI compatibility and ignored")


# --- items of the batchable runner APIs ----------------------------------------------------------
class ImageTask(BaseModel):
    """One image to make: the item type of the batchable image API."""

    task_id: str
    prompt: str
    negative_prompt: str | None = None
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int


class VideoTask(BaseModel):
    """One video to make: the item type of the batchable video API."""

    task_id: str
    prompt: str
    negative_prompt: str | None = None
    width: int
    height: int
    num_frames: int
    fps: int
    steps: int
    guidance_scale: float
    seed: int


class GeneratedFile(BaseModel):
    """One result of a batchable generation API."""

    task_id: str
    status: Literal["completed", "cancelled"]
    file_path: str | None = None
    seconds: float = 0.0


# --- answers -------------------------------------------------------------------------------------
class GenerationResponse(BaseModel):
    """botserver's shape (`status`, `file_path`, `error`), plus what a caller may want to log."""

    status: Literal["completed", "cancelled"]
    file_path: str | None
    generation_time: float
    error: str | None = None
    timestamp: str
    seed: int
    width: int
    height: int
    steps: int
    guidance_scale: float
    num_frames: int | None = None
    fps: int | None = None
    job_id: str | None = None


class ImageData(BaseModel):
    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
