"""From what `mm quantize` was given (MODEL, flags, a recipe's [quantize] defaults) to QuantizeRequests."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from pipeline.base.digest import file_sha256
from pipeline.base.errors import UsageError
from pipeline.base.home import mm_home
from pipeline.base.provenance import QuantParams, SourceRef, source_ref
from pipeline.base.shards import shard_paths
from pipeline.gguf.quant_types import parse_quant_type, parse_quant_types
from pipeline.llama.quant_plan import read_source
from pipeline.llama.quantize import QuantizeRequest, requantize_refusal
from pipeline.resolve.hub_ref import HubRef
from pipeline.resolve.model_ref import (
    cached_hub_file,
    parse_model_arg,
    pulled_hub_file,
    recipe_hub_ref,
    recipe_source_path,
)
from pipeline.spec.recipe import QuantizeSettings, Recipe, RecipeCheck, check_recipes, load_recipe


class QuantizeOptions(BaseModel):
    """The command line's quantize flags; None / empty means "not given" (a recipe may fill it in)."""

    types: list[str] = Field(default_factory=list)
    imatrix: Path | None = None
    allow_requantize: bool | None = None
    output_tensor_type: str | None = None
    token_embedding_type: str | None = None
    tensor_types: list[str] = Field(default_factory=list)  # PATTERN=TYPE, as llama-quantize's --tensor-type
    pure: bool | None = None
    leave_output_tensor: bool | None = None
    threads: int | None = None
    output: Path | None = None
    engine: Literal["api", "binary"] | None = None
    llama_quantize: Path | None = None


def parse_tensor_types(items: list[str]) -> dict[str, str]:
    """`PATTERN=TYPE` items into {pattern: type}, split at the last '=' (types never contain one)."""
    parsed: dict[str, str] = {}
    for item in items:
        pattern, sep, type_name = item.rpartition("=")
        if not sep or not pattern or not type_name:
            raise UsageError(
                f"tensor type override {item!r}: expected PATTERN=TYPE, e.g. attn_v=q8_0", param="tensor_types"
            )
        parsed[pattern] = type_name.lower()
    return parsed


def _hub_source(ref: HubRef) -> tuple[Path, SourceRef]:
    path = pulled_hub_file(ref)
    return path, source_ref(path, revision=ref.revision)


def _recipe_source(recipe: Recipe) -> tuple[Path, SourceRef | None]:
    ref = recipe_hub_ref(recipe)
    return _hub_source(ref) if ref is not None else (recipe_source_path(recipe), None)


def build_requests(model: str, options: QuantizeOptions, recipes_folder: Path | None = None) -> list[QuantizeRequest]:
    """One request per target type; flags win over the recipe's [quantize] section."""
    arg = parse_model_arg(model, recipes_folder)
    defaults = QuantizeSettings()
    source_ref: SourceRef | None = None
    if arg.path is not None:
        source = arg.path
    elif arg.hub is not None:
        source, source_ref = _hub_source(arg.hub)
    else:
        assert arg.recipe is not None
        defaults = arg.recipe.quantize
        source, source_ref = _recipe_source(arg.recipe)
        if defaults.imatrix == "auto":  # made by `mm build`; here the caller gives one
            defaults = defaults.model_copy(update={"imatrix": None})
        elif defaults.imatrix is not None:
            defaults = defaults.model_copy(update={"imatrix": arg.recipe.resolve(defaults.imatrix)})
    source = shard_paths(source)[0]  # llama.cpp loads a split model only from its first shard
    types = options.types or defaults.types
    if not types:
        raise UsageError("no target type: name one (e.g. q4_k_m), or a recipe with quantize.types", param="types")
    if options.output is not None and len(types) > 1:
        raise UsageError("an output file holds one quant: give a single target type with it", param="output")
    imatrix = options.imatrix or (defaults.imatrix if isinstance(defaults.imatrix, Path) else None)
    tensor_types = parse_tensor_types(options.tensor_types) if options.tensor_types else dict(defaults.tensor_types)
    requests = []
    for qtype in parse_quant_types(types):
        params = QuantParams(
            type=qtype.canonical,
            allow_requantize=_pick(options.allow_requantize, defaults.allow_requantize),
            imatrix_path=str(imatrix.resolve()) if imatrix else None,
            imatrix_sha256=file_sha256(mm_home(), imatrix) if imatrix and imatrix.is_file() else None,
            output_tensor_type=options.output_tensor_type or defaults.output_tensor_type,
            token_embedding_type=options.token_embedding_type or defaults.token_embedding_type,
            tensor_types=tensor_types,
            pure=_pick(options.pure, defaults.pure),
            leave_output_tensor=_pick(options.leave_output_tensor, defaults.leave_output_tensor),
        )
        requests.append(
            QuantizeRequest(
                source=source,
                params=params,
                source_ref=source_ref,
                engine=options.engine or defaults.engine,
                threads=options.threads,
                output=options.output,
                llama_quantize=options.llama_quantize,
                requested=True,
            )
        )
    return requests


def _pick(flag: bool | None, default: bool) -> bool:
    return default if flag is None else flag


def requantize_problem(recipe: Recipe) -> str | None:
    """What the quantize stage would refuse, known before any work when mm has the source's header locally
    (a path, or a pulled Hub file): quantize.requantize_refusal for each of the recipe's types."""
    settings = recipe.quantize
    if not settings.types or recipe.source.is_safetensors:
        return None  # a converted source is float (or q8_0 by choice): the quantize stage checks that one
    ref = recipe_hub_ref(recipe)
    path = cached_hub_file(ref) if ref is not None else recipe_source_path(recipe, must_exist=False)
    if path is None or not path.is_file():
        return None  # not here yet: the quantize stage checks it after the download
    header = read_source(path)
    for name in settings.types:
        qtype = parse_quant_type(name)
        refusal = requantize_refusal(header, qtype, settings.params(qtype.canonical))
        if refusal is not None:
            return (
                f"{recipe.path}: quantize.types: the source is {refusal}; set quantize.allow_requantize = true "
                "to do it anyway, or start from an F16 source"
            )
    return None


def check_recipe_files(paths: list[Path]) -> list[RecipeCheck]:
    """`mm recipe validate`: each file's schema (recipe.check_recipes), then what its source's header says."""
    checks = check_recipes(paths, require_source=True)
    for check in checks:
        if check.ok:
            problem = requantize_problem(load_recipe(Path(check.path)))
            if problem is not None:
                check.ok, check.error = False, problem
    return checks
