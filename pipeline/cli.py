"""The `mm` command line: a thin typer app; each command group lives in pipeline/commands/ and loads when one
of its commands runs."""

from __future__ import annotations

import errno
import importlib
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Annotated, Any

import typer
from typer import _click  # typer vendors click; its Context is the one TyperGroup.invoke takes
from typer.core import TyperGroup

from pipeline.base.constants import DEBUG_ENV, VERSION, env_flag
from pipeline.base.errors import MMError
from pipeline.base.plain_text import printable
from pipeline.commands.plain_values import PlainValuesFirst
from pipeline.commands.registration import INTERRUPTED_EXIT, set_verbosity

# Each command and the module of pipeline/commands/ that registers it, in `mm --help`'s order. A command loads
# its own module alone, so `mm inspect` imports neither what `mm build` needs nor the Hub client.
COMMAND_MODULES: dict[str, str] = {
    "recipe": "recipes", "pull": "pull", "convert": "convert", "imatrix": "convert", "quantize": "quantize",
    "llama": "llama", "rpc": "rpc", "inspect": "inspect", "fit": "fit", "hw": "fit", "publish": "registry",
    "ls": "registry", "show": "registry", "rm": "registry", "gc": "registry", "verify": "registry",
    "export": "registry", "cache": "registry", "run": "run", "bench": "measure", "eval": "measure",
    "build": "build", "demo": "build", "push": "push",
}  # fmt: skip

# The library names the input at fault (MMError.param) and describes the problem; this one table says which
# flag of the command line sets that input.
FLAG_FOR_PARAM = {
    "imatrix_path": "--imatrix",
    "tensor_types": "--tensor-type",
    "budget": "--budget",
    "allow_requantize": "--allow-requantize",
    "kv_type": "--kv-type / --flash-attn",
    "flash_attn": "--flash-attn",
    "n_batch": "--batch",
    "n_ubatch": "--ubatch",
    "n_threads": "--threads",
    "n_gpu_layers": "--n-gpu-layers",
    "n_cpu_moe": "--n-cpu-moe",
    "parallel": "--parallel",
    "max_tokens": "--max-tokens",
    "port": "--port",
    "max_body_bytes": "--max-body",
    "cors_origins": "--cors",
    "shard": "--shard",
    "all_recipes": "--all",
    "recipes_folder": "--recipes",
    "types": "--to",
    "output": "--output",
    "n_prompt": "--n-prompt / --n-gen",
    "repetitions": "--repetitions",
    "n_ctx": "--ctx",
    "ctx": "--ctx",
    "chunks": "--chunks",
    "outtype": "--outtype",
    "offline": "--offline",
    "token": "--token",
    "quants": "--quants",
    "ref": "--ref",
    "chat_format": "--chat-format / --raw",
    "file": "--file",
    "revision": "--revision",
    "repo": "--repo",
    "profile": "--profile / --list-profiles",
    "source": "--source",
    "force": "--force",
    "text": "--text FILE",
    "rpc": "--rpc",
    "tensor_split": "--tensor-split / -ts",
    "split_mode": "--split-mode / -sm",
    "device": "--device",
    "main_gpu": "--main-gpu",
    "host": "--host",
}


def _flag_note(exc: MMError) -> str:
    flag = FLAG_FOR_PARAM.get(exc.param or "")
    return f"\n  flag: {flag}" if flag else ""


class _LazyCommands(MutableMapping[str, _click.Command]):
    """`mm`'s commands by name, each built from its group module the first time it is asked for."""

    def __init__(self) -> None:
        self._built: dict[str, _click.Command] = {}

    def _load(self, module: str) -> None:
        group = typer.Typer(rich_markup_mode=None, pretty_exceptions_enable=False)  # as `app` below: plain text
        importlib.import_module(f"pipeline.commands.{module}").register(group)
        self._built.update(typer.main.get_group(group).commands)

    def __getitem__(self, name: str) -> _click.Command:
        if name not in self._built and name in COMMAND_MODULES:
            self._load(COMMAND_MODULES[name])
        return self._built[name]

    def __setitem__(self, name: str, command: _click.Command) -> None:
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        del self._built[name]

    def __iter__(self) -> Iterator[str]:
        return iter({**dict.fromkeys(COMMAND_MODULES), **self._built})

    def __len__(self) -> int:
        return len(set(COMMAND_MODULES) | set(self._built))


class _MMGroup(PlainValuesFirst, TyperGroup):
    """Every command runs inside this: an MMError becomes its message and exit code, not a traceback."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = _LazyCommands()

    def invoke(self, ctx: _click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MMError as exc:
            if env_flag(DEBUG_ENV):
                raise
            typer.echo(printable(f"error: {exc}" + _flag_note(exc), keep_newlines=True), err=True)
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:
            if exc.errno != errno.ENOSPC or env_flag(DEBUG_ENV):
                raise
            from pipeline.base.disk_space import disk_full  # late: mm starts fast
            from pipeline.base.home import mm_home

            error = disk_full(Path(exc.filename).parent if exc.filename else mm_home().root)
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("\ninterrupted", err=True)
            raise typer.Exit(INTERRUPTED_EXIT) from None


app = typer.Typer(
    cls=_MMGroup,
    name="mm",
    help=(
        "mm: pull, verify, quantize, fit, publish and run GGUF models on the hardware you have — "
        "or the hardware you are building for.\n\n"
        "Example: mm fit TheBloke/Llama-2-70B-chat-GGUF:llama-2-70b-chat.Q4_K_M.gguf --hardware rtx3060-12g"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mm {VERSION}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print mm's version.")
    ] = False,
    verbose: Annotated[
        int,
        typer.Option(
            "--verbose",
            "-v",
            count=True,
            show_default=False,
            help="More log output (-v info, -vv debug; also after the command).",
        ),
    ] = 0,
) -> None:
    """Set up logging for the whole run (diagnostics go to stderr; results to stdout)."""
    set_verbosity(verbose)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
