"""Recipes: what to build (a source model, target quants, a hardware class, run settings), loaded from TOML."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.base.constants import DEFAULT_REVISION, RECIPES_ENV, env_value
from pipeline.base.errors import HardwareError, MMError, RecipeError, UsageError
from pipeline.base.provenance import QuantParams
from pipeline.base.safe_names import REPO_ID_RE, UnsafeValue, check_repo_filename, check_repo_id, check_revision
from pipeline.base.units import parse_size
from pipeline.base.validation import describe_validation_error, read_toml
from pipeline.gguf.ggml_types import ggml_type_id
from pipeline.gguf.quant_types import parse_quant_type
from pipeline.spec.hardware import HARDWARE_FILE, hardware_catalog, hardware_hint
from pipeline.spec.run_settings import RunSettings

RECIPE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # a safe file and lock name, 64 at most
Engine = Literal["api", "binary"]
Outtype = Literal["f32", "f16", "bf16", "q8_0", "auto"]  # convert_hf_to_gguf.py --outtype (less tq1_0/tq2_0)


def recipes_dir() -> Path:
    """`MM_RECIPES`, else ./recipes."""
    return Path(env_value(RECIPES_ENV) or "recipes")


def hub_repo_id(value: str | None, example: str) -> str | None:
    """A recipe's repo field: owner/name by our pattern and the Hub's own rules (safe_names.check_repo_id)."""
    if value is not None and not REPO_ID_RE.match(value):
        raise ValueError(f"{value!r} is not a Hub repository id; expected owner/name, e.g. {example}")
    try:
        return None if value is None else check_repo_id(value)
    except UnsafeValue as exc:
        raise ValueError(str(exc)) from None


def git_revision(value: str) -> str:
    """A recipe's revision field: a branch, tag or commit by git's ref rules (safe_names.check_revision)."""
    try:
        return check_revision(value)
    except UnsafeValue as exc:
        raise ValueError(str(exc)) from None


class Source(BaseModel):
    """A Hub file (repo + file, optionally pinned) or a local `path`; not both. With format = "safetensors",
    a whole transformers repo (pinned by revision) or a local model folder, converted to GGUF by the build."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["gguf", "safetensors"] = "gguf"
    repo: StrictStr | None = None
    revision: StrictStr = DEFAULT_REVISION
    file: StrictStr | None = None
    sha256: StrictStr | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    path: Path | None = None

    @field_validator("revision")
    @classmethod
    def _revision(cls, value: str) -> str:
        return git_revision(value)

    @field_validator("repo")
    @classmethod
    def _repo_id(cls, value: str | None) -> str | None:
        return hub_repo_id(value, "TheBloke/Llama-2-7B-GGUF")

    @field_validator("file")
    @classmethod
    def _gguf_file(cls, value: str | None) -> str | None:
        if value is not None and not value.endswith(".gguf"):
            raise ValueError(f"{value!r} is not a .gguf file; mm pulls GGUF models")
        try:
            return None if value is None else check_repo_filename(value)
        except UnsafeValue as exc:
            raise ValueError(f"{exc}; give the file's path inside the repository") from None

    @model_validator(mode="after")
    def _one_kind(self) -> Source:
        if self.format == "safetensors":
            if self.file is not None or self.sha256 is not None:
                raise ValueError(
                    "a safetensors source is a whole repo (or folder): drop file and sha256, "
                    "and pin revision to a commit to fix its content"
                )
            if (self.path is None) == (self.repo is None):
                raise ValueError("give repo (a transformers repo on the Hub) or path (a local model folder)")
            return self
        if self.path is not None and (self.repo or self.file):
            raise ValueError("give either path (a local file) or repo and file (a Hub file), not both")
        if self.path is None and not (self.repo and self.file):
            raise ValueError("give repo and file (a Hub file), or path (a local file)")
        return self

    @property
    def is_local(self) -> bool:
        return self.path is not None

    @property
    def is_safetensors(self) -> bool:
        return self.format == "safetensors"


class QuantizeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    types: list[StrictStr] = Field(default_factory=list, max_length=64)
    allow_requantize: StrictBool = False
    imatrix: Literal["auto"] | Path | None = None  # "auto": made by the build ([imatrix]), used where it helps
    engine: Engine = "api"
    output_tensor_type: StrictStr | None = None
    token_embedding_type: StrictStr | None = None
    # pattern -> type, as llama-quantize's --tensor-type
    tensor_types: dict[StrictStr, StrictStr] = Field(default_factory=dict, max_length=256)
    pure: StrictBool = False
    leave_output_tensor: StrictBool = False
    # "11G" or "fit": one more output, a per-tensor mix chosen by measured KLD (mm quantize --budget)
    budget: StrictStr | None = None
    budget_max_evals: int = Field(default=48, ge=2, le=1000)
    budget_bands: int = Field(default=1, ge=1, le=16)  # layer bands per layered group (mm quantize --bands)

    def params(self, qtype: str, imatrix_path: str | None = None, imatrix_sha256: str | None = None) -> QuantParams:
        """Quantize's parameters for one of the types (the imatrix is given: where it is depends on the caller)."""
        return QuantParams(
            type=qtype,
            allow_requantize=self.allow_requantize,
            imatrix_path=imatrix_path,
            imatrix_sha256=imatrix_sha256,
            output_tensor_type=self.output_tensor_type,
            token_embedding_type=self.token_embedding_type,
            tensor_types=dict(self.tensor_types),
            pure=self.pure,
            leave_output_tensor=self.leave_output_tensor,
        )

    @field_validator("budget")
    @classmethod
    def _budget(cls, value: str | None) -> str | None:
        if value is not None and value.strip().lower() != "fit":
            parse_size(value, what="budget")  # a UsageError is a ValueError: pydantic reports it on the field
        return value

    @field_validator("output_tensor_type", "token_embedding_type")
    @classmethod
    def _tensor_type(cls, value: str | None) -> str | None:
        return None if value is None else _ggml_type(value)

    @field_validator("tensor_types")
    @classmethod
    def _tensor_patterns(cls, values: dict[str, str]) -> dict[str, str]:
        for pattern, type_name in values.items():
            if not pattern or len(pattern) > 256:
                raise ValueError(f"pattern {pattern[:40]!r}: 1 to 256 characters")
            try:
                re.compile(pattern)  # llama.cpp compiles it as a std::regex; the syntax errors are the same
            except re.error as exc:
                raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {exc}") from None
            _ggml_type(type_name, f"pattern {pattern!r}: ")
        return values

    @field_validator("types")
    @classmethod
    def _known_types(cls, values: list[str]) -> list[str]:
        canonical = []
        for value in values:
            try:
                canonical.append(parse_quant_type(value).canonical)
            except UsageError as exc:
                raise ValueError(f"{exc.message} ({exc.hint})" if exc.hint else exc.message) from None
        if len(set(canonical)) != len(canonical):
            raise ValueError("a type is listed twice (aliases such as q4_k = q4_k_m count as the same)")
        return canonical


class ConvertSettings(BaseModel):
    """How a safetensors source becomes GGUF (llama.cpp's convert_hf_to_gguf.py --outtype)."""

    model_config = ConfigDict(extra="forbid")

    outtype: Outtype = "auto"


DEFAULT_IMATRIX_CTX = (
    512  # llama-imatrix's own default context (tools/imatrix/README.md: "a small context such as 512")
)
DEFAULT_IMATRIX_CHUNKS = 100  # ~51k tokens at 512; llama-imatrix itself reads the whole text (wiki.train.raw: ~4,700)


class ImatrixSettings(BaseModel):
    """The importance matrix `[quantize] imatrix = "auto"` makes: calibration text and how much of it."""

    model_config = ConfigDict(extra="forbid")

    text: StrictStr | None = Field(default=None, max_length=1024)  # a path (relative to the recipe) or a Hub text
    chunks: StrictInt = Field(default=DEFAULT_IMATRIX_CHUNKS, ge=1, le=1 << 20)
    ctx: StrictInt = Field(default=DEFAULT_IMATRIX_CTX, ge=16, le=1 << 20)


class EvalSettings(BaseModel):
    """`[eval]`: each new quant's KL-divergence and perplexity against the recipe's source (mm eval)."""

    model_config = ConfigDict(extra="forbid")

    text: StrictStr | None = Field(default=None, max_length=1024)  # a path (relative to the recipe) or a Hub text
    chunks: StrictInt = Field(default=20, ge=1, le=1 << 20)  # bounds the cost: chunks x ctx tokens, twice
    ctx: StrictInt = Field(default=512, ge=16, le=1 << 20)


class BenchSettings(BaseModel):
    """`[bench]`: each new quant's prompt and decode speed on the building machine (mm bench)."""

    model_config = ConfigDict(extra="forbid")

    n_prompt: StrictInt = Field(default=512, ge=0, le=1 << 20)
    n_gen: StrictInt = Field(default=128, ge=0, le=1 << 20)
    repetitions: StrictInt = Field(default=5, ge=1, le=1000)


class PublishSettings(BaseModel):
    """Where `mm build --push` publishes the recipe's profiles (GGUFs, profile documents, model card)."""

    model_config = ConfigDict(extra="forbid")

    repo: str | None = None  # OWNER/NAME on the Hub
    revision: str = DEFAULT_REVISION  # the branch to commit to
    private: bool = False  # create the repo private when it does not exist

    @field_validator("repo")
    @classmethod
    def _repo_id(cls, value: str | None) -> str | None:
        return hub_repo_id(value, "my-org/Llama-3-8B-GGUF")

    @field_validator("revision")
    @classmethod
    def _branch(cls, value: str) -> str:
        return git_revision(value)


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr = Field(pattern=RECIPE_NAME_RE.pattern)
    hardware: StrictStr = Field(max_length=64)
    source: Source
    convert: ConvertSettings = Field(default_factory=ConvertSettings)
    imatrix: ImatrixSettings = Field(default_factory=ImatrixSettings)
    quantize: QuantizeSettings = Field(default_factory=QuantizeSettings)
    run: RunSettings = Field(default_factory=RunSettings)  # [run]: also ctx, batch, ubatch, threads
    publish: PublishSettings = Field(default_factory=PublishSettings)
    eval: EvalSettings | None = None  # measured only when the recipe has the section
    bench: BenchSettings | None = None
    # Where it was read from, and a hash of its bytes (provenance; the build's fingerprints).
    path: Path | None = Field(default=None, exclude=True)
    content_sha256: str | None = Field(default=None, exclude=True)

    @field_validator("run")
    @classmethod
    def _placement_by_fit(cls, run: RunSettings) -> RunSettings:
        if run.tensor_overrides:
            raise ValueError("tensor_overrides: fit writes them from n_cpu_moe / cpu_moe; set those instead")
        return run

    def resolve(self, relative: Path) -> Path:
        """A path written in the recipe, relative to the recipe's folder."""
        base = self.path.parent if self.path else Path.cwd()
        return relative if relative.is_absolute() else (base / relative)


def _ggml_type(value: str, where: str = "") -> str:
    """A ggml tensor type name llama.cpp's quantize accepts (`q8_0`, `f16`), as a ValueError if not."""
    try:
        ggml_type_id(value)
    except UsageError as exc:
        raise ValueError(where + exc.message) from None
    return value


def load_recipe(path: Path, *, require_source: bool = False) -> Recipe:
    """Read and validate one recipe, reporting every mistake at once: the schema's, then what the schema cannot
    know (its hardware class exists, built in or in a catalog; with require_source, its local source exists —
    `mm recipe validate` asks; a build says so in its resolve stage)."""
    if path.name == HARDWARE_FILE:
        raise RecipeError(f"{path}: this is the hardware catalog, not a recipe")
    try:
        document = read_toml(path)
    except ValueError as exc:
        raise RecipeError(str(exc)) from None
    document.setdefault("name", path.stem)
    problems, recipe = [], None
    try:
        recipe = Recipe.model_validate(document)
    except ValidationError as exc:
        problems.append(describe_validation_error(str(path), exc, Recipe))
    problems += _beyond_the_schema(path, document, require_source)
    if problems or recipe is None:
        raise RecipeError("\n".join(problems))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return recipe.model_copy(update={"path": path.resolve(), "content_sha256": digest})


def _beyond_the_schema(path: Path, document: dict[str, Any], require_source: bool) -> list[str]:
    """What the recipe names that must exist: its hardware class and its local source (read from the raw
    document, so they are reported beside the schema's errors, not after they are fixed)."""
    problems = []
    try:
        catalog = hardware_catalog(path.parent / HARDWARE_FILE)
    except HardwareError as exc:
        return [f"{path}: hardware: cannot read the catalog: {exc.message}"]
    hardware = document.get("hardware")
    if isinstance(hardware, str) and hardware not in catalog:
        known = ", ".join(sorted(catalog))
        problems.append(
            f"{path}: hardware: unknown class {hardware!r} ({hardware_hint(hardware, catalog)}); known: {known}"
        )
    source = document.get("source")
    local = source.get("path") if isinstance(source, dict) else None
    if require_source and isinstance(local, str) and local and not (path.parent / Path(local).expanduser()).exists():
        problems.append(f"{path}: source.path: no such file: {path.parent / Path(local).expanduser()}")
    return problems


def list_recipe_paths(folder: Path) -> list[Path]:
    """Every *.toml in the folder except the hardware catalog, sorted by name."""
    if not folder.is_dir():
        raise RecipeError(
            f"{folder}: no such recipes folder",
            hint="name an existing folder, or set MM_RECIPES",
            param="recipes_folder",
        )
    return sorted(p for p in folder.glob("*.toml") if p.name != HARDWARE_FILE)


def find_recipe(name_or_path: str, folder: Path | None = None) -> Path:
    """A recipe path from a path, or a name looked up in the recipes folder."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or candidate.is_file():
        if not candidate.is_file():
            raise RecipeError(f"{candidate}: no such recipe file")
        return candidate
    folder = folder or recipes_dir()
    for path in list_recipe_paths(folder) if folder.is_dir() else []:
        if path.stem == name_or_path:
            return path
        try:
            if read_toml(path).get("name") == name_or_path:
                return path
        except ValueError:
            continue
    raise RecipeError(f"no recipe named {name_or_path!r} in {folder}", hint="`mm recipe ls` lists them")


def looks_like_recipe(text: str) -> bool:
    """True for a .toml path or a bare recipe name (no '/' or ':', which would make it a repo or a file)."""
    return text.endswith(".toml") or (RECIPE_NAME_RE.match(text) is not None and not text.endswith(".gguf"))


class RecipeCheck(BaseModel):
    """One recipe file's validation result (`mm recipe validate`, `mm recipe ls`)."""

    path: str
    ok: bool
    error: str | None = None
    name: str | None = None
    hardware: str | None = None
    source: str | None = None  # `owner/name:FILE@revision` or the local path
    types: list[str] = []


def check_recipes(paths: list[Path], *, require_source: bool = False) -> list[RecipeCheck]:
    """Load each recipe; a broken one is reported, not raised, so one bad file doesn't hide the others."""
    checks = []
    for path in paths:
        try:
            r = load_recipe(path, require_source=require_source)
        except MMError as exc:
            checks.append(RecipeCheck(path=str(path), ok=False, error=str(exc), name=path.stem))
            continue
        src = r.source
        source = str(src.path) if src.is_local else f"{src.repo}:{src.file or '(safetensors)'}@{src.revision}"
        checks.append(RecipeCheck(path=str(path), ok=True, name=r.name, hardware=r.hardware, source=source,
                                  types=r.quantize.types))  # fmt: skip
    return checks
