"""mm: a model-management and quantization pipeline for GGUF language models — and its public library surface.

A script imports what `__all__` names (`from pipeline import fit_model, get_hardware`); everything else is
internal and may move. Each name loads its module on first use (PEP 562), so `import pipeline` stays cheap
and a script that only fits a local file loads neither the Hub client nor llama.cpp.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pipeline.base.constants import VERSION as __version__

if TYPE_CHECKING:  # what type checkers and editors see; at run time __getattr__ below loads each on first use
    from pipeline.base.errors import MMError as MMError
    from pipeline.build.runner import BuildOptions as BuildOptions
    from pipeline.build.runner import build as build_recipes  # noqa: F401  # public under another name
    from pipeline.fitting.fit import FitResult as FitResult
    from pipeline.fitting.fit import fit_model as fit_model
    from pipeline.fitting.model_info import summarize_model as summarize_model
    from pipeline.fitting.recommend import recommend_quant as recommend_quant
    from pipeline.gguf.header import read_model as read_model
    from pipeline.gguf.quant_types import parse_quant_type as parse_quant_type
    from pipeline.hub.download import pull as pull
    from pipeline.llama.quantize import QuantizeRequest as QuantizeRequest
    from pipeline.llama.quantize import quantize as quantize
    from pipeline.probe.local_machine import local_class as local_class
    from pipeline.registry.export import export as export
    from pipeline.registry.push import push as push
    from pipeline.registry.store import get_profile as get_profile
    from pipeline.registry.store import list_profiles as list_profiles
    from pipeline.registry.store import publish as publish
    from pipeline.resolve.hub_ref import HubRef as HubRef
    from pipeline.resolve.hub_ref import parse_hub_ref as parse_hub_ref
    from pipeline.resolve.model_ref import resolve_model as resolve_model
    from pipeline.spec.hardware import HardwareClass as HardwareClass
    from pipeline.spec.hardware import get_hardware as get_hardware
    from pipeline.spec.recipe import Recipe as Recipe
    from pipeline.spec.recipe import load_recipe as load_recipe
    from pipeline.spec.run_settings import RunSettings as RunSettings

# Each public name and the module that defines it (`module:name` where the public name differs), in the order
# of the pipeline: resolve and pull, read, quantize, fit, publish, share, build.
_EXPORTS: dict[str, str] = {
    "MMError": "pipeline.base.errors",
    "HubRef": "pipeline.resolve.hub_ref",
    "parse_hub_ref": "pipeline.resolve.hub_ref",
    "resolve_model": "pipeline.resolve.model_ref",
    "pull": "pipeline.hub.download",
    "read_model": "pipeline.gguf.header",
    "summarize_model": "pipeline.fitting.model_info",
    "parse_quant_type": "pipeline.gguf.quant_types",
    "QuantizeRequest": "pipeline.llama.quantize",
    "quantize": "pipeline.llama.quantize",
    "HardwareClass": "pipeline.spec.hardware",
    "get_hardware": "pipeline.spec.hardware",
    "local_class": "pipeline.probe.local_machine",
    "RunSettings": "pipeline.spec.run_settings",
    "FitResult": "pipeline.fitting.fit",
    "fit_model": "pipeline.fitting.fit",
    "recommend_quant": "pipeline.fitting.recommend",
    "publish": "pipeline.registry.store",
    "get_profile": "pipeline.registry.store",
    "list_profiles": "pipeline.registry.store",
    "export": "pipeline.registry.export",
    "push": "pipeline.registry.push",
    "Recipe": "pipeline.spec.recipe",
    "load_recipe": "pipeline.spec.recipe",
    "BuildOptions": "pipeline.build.runner",
    "build_recipes": "pipeline.build.runner:build",  # `pipeline.build` is the package of the build
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """Load a public name's module the first time the name is used, and keep the value."""
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    module, _, attribute = target.partition(":")
    value = getattr(importlib.import_module(module), attribute or name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
