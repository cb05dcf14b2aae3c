"""A profile as published in a Hub repo: `profiles/<name>.json`, naming its GGUF in the repo by content.

The document carries the profile (its blob path and commands rewritten to the repo's file name, since
the pusher's paths mean nothing elsewhere), the GGUF's size and bits per weight, and the fit predicted
for every hardware class, so the model card can be rebuilt from the repo alone — which is how
concurrent pushers merge their cards.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.base.safe_names import check_repo_filename
from pipeline.fitting.fit import Verdict
from pipeline.registry.profile import BlobRef, Profile, with_blob
from pipeline.spec.hardware import HardwareClass

SCHEMA_VERSION = 1
PROFILES_FOLDER = "profiles"


class ClassFit(BaseModel):
    """fit's prediction for one hardware class, with the profile's context and cache settings."""

    model_config = ConfigDict(extra="forbid")

    hardware: str
    verdict: Verdict
    n_gpu_layers: int
    n_layers: int
    tokens_per_second: float
    vram_bytes: int
    ram_bytes: int


class RepoProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    file: str  # the GGUF's path in the repo
    bits_per_weight: float
    n_params: int
    profile: Profile
    fits: list[ClassFit] = Field(default_factory=list)

    @field_validator("file")
    @classmethod
    def _file(cls, value: str) -> str:
        """A repo's word: it becomes a download's name, so it must be a plain relative path in the repo."""
        return check_repo_filename(value)


def gguf_name(profile: Profile) -> str:
    """`<model>-<quant>-<sha256[:12]>.gguf`: the content address in the name, so a changed file never
    replaces one that another profile in the repo still names."""
    return f"{profile.model}-{profile.quant}-{profile.blob.sha256[:12]}.gguf"


def profile_file(name: str) -> str:
    return f"{PROFILES_FOLDER}/{name}.json"


def for_repo(profile: Profile, model: Path, classes: list[HardwareClass]) -> RepoProfile:
    """The profile as the repo holds it (paths are the repo's file name, the local stat is dropped), with
    its settings (context, cache, batch; layers chosen per class) fitted to every class in `classes`."""
    from pipeline.fitting.fit import fit_shape
    from pipeline.fitting.model_info import summarize_model
    from pipeline.fitting.model_shape import model_shape
    from pipeline.gguf.header import read_model

    file = gguf_name(profile)
    blob = BlobRef(sha256=profile.blob.sha256, size_bytes=profile.blob.size_bytes, path=file, mtime_ns=0, inode=0)
    published = with_blob(profile, blob)
    settings = profile.run.unplaced()
    shape = model_shape(read_model(model))
    fits = []
    for hardware in classes:
        result = fit_shape(shape, model, hardware, settings, suggest=False)
        fits.append(
            ClassFit(  # one line per field: ruff keeps this call as it is
                hardware=hardware.name,
                verdict=result.verdict,
                n_gpu_layers=result.n_gpu_layers,
                n_layers=result.n_layers,
                tokens_per_second=result.tokens_per_second,
                vram_bytes=result.vram_bytes,
                ram_bytes=result.ram_bytes,
            )
        )
    summary = summarize_model(model)
    return RepoProfile(
        file=file,
        bits_per_weight=summary.bits_per_weight,
        n_params=summary.n_params,
        profile=published,
        fits=fits,
    )
