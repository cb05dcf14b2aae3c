"""`mm demo`: the whole job offline — a factory-made model, a bundled recipe built by the real runner, a run.

The recipe is written into the mm home (not ./recipes), so `mm build --all` never picks it up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from pipeline.base.errors import BuildError
from pipeline.base.home import atomic_write_text, mm_home
from pipeline.build.report import BuildReport, ConsoleReporter, Reporter
from pipeline.build.runner import BuildOptions, build
from pipeline.build.stages.publish import profile_name
from pipeline.gguf.tiny_model import write_tiny_model
from pipeline.gguf.tiny_tensors import TinySpec
from pipeline.spec.recipe import load_recipe

DEMO_NAME = "demo"
DEMO_TYPES = ("q4_k_m", "q8_0")
DEMO_SPEC = TinySpec(n_layers=4, n_embd=512, n_head=8, n_head_kv=4, n_ff=1024, dtype="f16", seed=7)
DEMO_PROMPT = "hello world"
DEMO_RECIPE = f"""\
# mm's bundled demo: a small llama-style model made locally, quantized for a CPU-only box.
name = "{DEMO_NAME}"
hardware = "cpu-32g"

[source]
path = "tiny-demo-f16.gguf"

[quantize]
types = {list(DEMO_TYPES)!r}

[run]
ctx = 512
batch = 512
ubatch = 128
"""


class DemoResult(BaseModel):
    model_path: str
    recipe_path: str
    build: BuildReport
    profile: str
    prompt: str
    text: str
    n_tokens: int
    seconds: float


def write_demo_recipe(folder: Path) -> Path:
    """The demo model (made once; the seed makes it the same bytes every time) and its recipe."""
    model = folder / "tiny-demo-f16.gguf"
    if not model.is_file():
        tmp = folder / ".tiny-demo-f16.gguf.partial"
        write_tiny_model(tmp, DEMO_SPEC)
        tmp.replace(model)  # the factory writes in place; the rename makes the model appear whole
    recipe = folder / f"{DEMO_NAME}.toml"
    if not recipe.is_file() or recipe.read_text() != DEMO_RECIPE:
        atomic_write_text(recipe, DEMO_RECIPE)
    return recipe


def run_demo(progress: Callable[[str], None] | None = None, *, max_tokens: int = 8) -> DemoResult:
    """Make the model, build the demo recipe (quantize → fit → publish), generate a few tokens."""
    say = progress or (lambda _: None)
    started = time.perf_counter()
    folder = mm_home().ensure(mm_home().root / "demo")
    say(f"demo: writing a small llama-style model with the factory into {folder}")
    recipe = write_demo_recipe(folder)
    say(f"demo: building {recipe} ({', '.join(DEMO_TYPES)}) with the build runner")
    reporter = ConsoleReporter(say) if progress else Reporter()
    report = build([recipe], BuildOptions(), reporter)
    if report.failed:
        raise BuildError(f"the demo build failed: {report.failed[0].reason}")
    profile = profile_name(load_recipe(recipe), DEMO_TYPES[0])
    say(f"demo: generating {max_tokens} tokens from profile {profile}")
    text, n_tokens = _generate(profile, DEMO_PROMPT, max_tokens)
    return DemoResult(
        model_path=str(folder / "tiny-demo-f16.gguf"),
        recipe_path=str(recipe),
        build=report,
        profile=profile,
        prompt=DEMO_PROMPT,
        text=text,
        n_tokens=n_tokens,
        seconds=time.perf_counter() - started,
    )


def _generate(profile: str, prompt: str, max_tokens: int) -> tuple[str, int]:
    """Through the registry's runner, with exactly the published profile's settings."""
    from pipeline.registry.run import generate
    from pipeline.registry.store import get_profile

    result = generate(get_profile(profile), prompt, max_tokens=max_tokens, seed=0)
    return result.text, result.n_tokens
