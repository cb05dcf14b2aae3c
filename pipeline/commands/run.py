"""`mm run`: talk to a profile — one prompt, an interactive chat, or an OpenAI-compatible server."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer

from pipeline.commands.options import ChatFormatOpt, JsonOpt, RunFlags, run_options
from pipeline.commands.registration import add_command
from pipeline.commands.render import emit_json, note

if TYPE_CHECKING:
    from pipeline.registry.profile import Profile
    from pipeline.registry.run import Generation


class _Prompt:
    """One user turn per call; None ends the chat: Ctrl-D, `/bye`, or — as in Ollama — Ctrl-C on an empty line
    or twice in a row (Ctrl-C with text typed only drops that text)."""

    def __init__(self) -> None:
        self.interrupted = False
        self.typed: Callable[[], str] | None = None
        if sys.stdin.isatty():
            with contextlib.suppress(ImportError):  # not on every platform; then two Ctrl-C leave
                import readline  # line editing, and what was typed when Ctrl-C came

                self.typed = readline.get_line_buffer

    def __call__(self) -> str | None:
        try:
            line = input("\n> ")
        except EOFError:
            _write("\n")  # the shell's prompt starts on a clean line, not after "> "
            return None
        except KeyboardInterrupt:
            _write("\n")
            if self.interrupted or (self.typed is not None and not self.typed().strip()):
                return None
            self.interrupted = True
            note("(Ctrl-C again, Ctrl-D or /bye ends the chat)")
            return ""
        self.interrupted = False
        return None if line.strip() in ("/bye", "/exit") else line


def _write(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def _after_reply(reply: Generation) -> None:
    if reply.stopped:
        _write("\n")
        note("(reply stopped)")


@run_options
def run_command(
    run: RunFlags,
    name: Annotated[str, typer.Argument(metavar="NAME|FILE", help="A profile (`mm ls`), or a .gguf file to run.")],
    prompt_arg: Annotated[
        str | None, typer.Argument(metavar="[PROMPT]", help="Answer this one message and exit (as `ollama run`).")
    ] = None,
    prompt: Annotated[
        str | None, typer.Option("--prompt", "-p", metavar="TEXT", help="Same as PROMPT: one chat turn, then exit.")
    ] = None,
    raw: Annotated[
        bool, typer.Option("--raw", help="Continue the prompt as plain text, without the chat format.")
    ] = False,
    chat_format: ChatFormatOpt = None,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", "-n", metavar="N", help="Tokens to generate (per chat turn).", min=1)
    ] = 256,
    verify: Annotated[bool, typer.Option("--verify", help="Re-hash the blob before loading.")] = False,
    server: Annotated[bool, typer.Option("--server", help="Serve an OpenAI-compatible API on 127.0.0.1.")] = False,
    port: Annotated[int, typer.Option(metavar="PORT", help="Port for --server.", min=1, max=65535)] = 8000,
    max_body: Annotated[
        str, typer.Option("--max-body", metavar="SIZE", help="--server: largest request body accepted (413 above).")
    ] = "1M",
    cors: Annotated[
        list[str] | None,
        typer.Option("--cors", metavar="ORIGIN", help="--server: allow this browser origin (repeat; none by default)."),
    ] = None,
    seed: Annotated[int | None, typer.Option(metavar="N", help="Sampling seed, for repeatable output.")] = None,
    temperature: Annotated[
        float, typer.Option("--temperature", "--temp", metavar="T", min=0, help="Sampling temperature (0: greedy).")
    ] = 0.8,
    as_json: JsonOpt = False,
) -> None:
    """Talk to a profile with its exact settings: one PROMPT (a chat turn), an interactive chat, or --server.

    Run-setting flags (-c, -ngl, -t, ...) change the profile's settings for this run only.
    PROMPT and -p are one chat turn in the model's chat template, as `ollama run NAME "..."`; --raw
    continues the text instead (llama.cpp's completion). Without a prompt: a chat; Ctrl-C stops a reply,
    Ctrl-D, /bye or Ctrl-C at an empty prompt ends. A GGUF without a chat template gets its architecture's
    known format (said once).

    NAME is a profile (`@hardware` may be left out when one matches) or a .gguf file, run as fitted to
    this machine.

    --server answers OpenAI requests on 127.0.0.1 (and /health); bodies over --max-body, grammars llama.cpp
    cannot parse and max_tokens beyond the context are refused with an error response.

    Example: mm run llama2-70b-chat-q2_k@rtx3060-12g "Why is the sky blue?"
    Example: mm run models/tiny-q8_0.gguf "Hello"
    """
    from pipeline.registry.run import chat, chat_format_for, generate, with_flags
    from pipeline.registry.run_server import needs_server
    from pipeline.registry.runnable import gpu_warning, runnable_profile
    from pipeline.registry.server import serve, server_options

    text = prompt if prompt is not None else prompt_arg
    if prompt is not None and prompt_arg is not None:
        from pipeline.base.errors import UsageError

        raise UsageError("give the prompt once: as PROMPT or with -p, not both")
    options = server_options(port=port, max_body=max_body, cors=cors, verify=verify)  # checked without --server too
    profile, about = runnable_profile(name)
    profile = with_flags(profile, run.given)
    for line in (about, gpu_warning(profile)):
        if line:
            note(line)
    if needs_server(profile):
        _run_on_server(profile, text, raw=raw, max_tokens=max_tokens, server=server, port=port, verify=verify,
                       seed=seed, temperature=temperature, as_json=as_json)  # fmt: skip
        return
    fmt = chat_format_for(profile, chat_format) if not (raw and text is not None) else None
    if fmt is not None and fmt.notice:
        note(f"{fmt.notice} (--chat-format to change)")
    chosen = fmt.name if fmt is not None else None
    if server:
        options = dataclasses.replace(options, chat_format=chosen)
        serve(profile, options, on_ready=lambda url: note(f"serving {profile.name} on {url} (Ctrl-C stops)"))
    elif text is not None:
        result = generate(profile, text, max_tokens=max_tokens, on_token=None if as_json else _write, verify=verify,
                          seed=seed, raw=raw, chat_format=chosen, temperature=temperature)  # fmt: skip
        _show_generation(profile.name, result, as_json)
    else:
        note(f"chatting with {profile.name}; Ctrl-C stops a reply, Ctrl-D, /bye or Ctrl-C at an empty prompt ends")
        chat(profile, _Prompt(), _write, max_tokens=max_tokens, verify=verify, chat_format=chosen,
             on_reply=_after_reply)  # fmt: skip


def _show_generation(name: str, result: Generation, as_json: bool) -> None:
    if as_json:
        emit_json({"profile": name, "text": result.text, "n_tokens": result.n_tokens,
                   "seconds": round(result.seconds, 3), "tokens_per_second": round(result.tokens_per_second, 2),
                   "stopped": result.stopped})  # fmt: skip
        return
    typer.echo("")
    note(f"{result.n_tokens} tokens in {result.seconds:.2f}s ({result.tokens_per_second:.1f} tok/s)")


def _run_on_server(
    profile: Profile, text: str | None, *, raw: bool, max_tokens: int, server: bool, port: int, verify: bool,
    seed: int | None, temperature: float, as_json: bool,
) -> None:  # fmt: skip
    """A profile across RPC workers: llama-server does the work (pipeline/registry/run_server.py says why)."""
    from pipeline.base.errors import UsageError
    from pipeline.registry.run_server import generate_on_server, serve_with_server

    if server:
        note(f"serving {profile.name} on http://127.0.0.1:{port}/v1 with llama-server (Ctrl-C stops)")
        raise typer.Exit(serve_with_server(profile, port, verify=verify))
    if text is None:
        raise UsageError(
            f"{profile.name} runs across RPC workers through llama-server: give a PROMPT, or --server to chat",
            hint="an interactive chat needs llama-cpp-python, which cannot reach RPC workers",
        )
    result = generate_on_server(
        profile, text, max_tokens=max_tokens, seed=seed, raw=raw, verify=verify, temperature=temperature
    )
    if not as_json:
        _write(result.text)
    _show_generation(profile.name, result, as_json)


def register(app: typer.Typer) -> None:
    add_command(app, "run", run_command)
