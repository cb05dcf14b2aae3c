"""Checks every quant a command asks for before any is made, so a multi-type quantize never half-runs."""

from __future__ import annotations

from pipeline.base.errors import MMError, QuantizeError, UsageError
from pipeline.gguf.quant_types import parse_quant_type
from pipeline.llama.quant_plan import plan, read_source
from pipeline.llama.quantize import IMATRIX_HINT, QuantizeRequest, check_request, needs_dry_run


def check_before_work(requests: list[QuantizeRequest]) -> None:
    """Raise one error naming every request that would fail (a missing or needed importance matrix, a refused
    re-quantize), or return when all can run. Whether a type needs an importance matrix is llama.cpp's dry run's
    answer, asked only where it could be yes (quantize.needs_dry_run), as `quantize` itself asks."""
    problems: list[tuple[str, MMError]] = []
    headers = {r.source: read_source(r.source) for r in requests}
    for request in requests:
        qtype = parse_quant_type(request.params.type)
        try:
            check_request(request, headers[request.source], qtype)
        except MMError as error:
            problems.append((qtype.canonical, error))
            continue
        if request.params.imatrix_path is None and needs_dry_run(qtype, request.params):
            predicted = plan(
                request.source, request.params, engine=request.engine, llama_quantize=request.llama_quantize
            )
            if predicted.needs_imatrix:
                problems.append(
                    (
                        qtype.canonical,
                        QuantizeError(
                            f"{qtype.canonical} needs an importance matrix (imatrix) for this model",
                            hint=IMATRIX_HINT,
                            param="imatrix_path",
                        ),
                    )
                )
    if not problems:
        return
    if len(problems) == 1 and len(requests) == 1:
        raise problems[0][1]
    lines = "\n".join(
        f"  {e.message}" if e.message.startswith(name) else f"  {name}: {e.message}" for name, e in problems
    )
    hints = list(dict.fromkeys(error.hint for _, error in problems if error.hint))
    kind = UsageError if all(isinstance(e, UsageError) for _, e in problems) else QuantizeError
    raise kind(
        f"nothing quantized: {len(problems)} of {len(requests)} types cannot be made\n{lines}",
        hint="; ".join(hints) or None,
        param=problems[0][1].param if len({e.param for _, e in problems}) == 1 else None,
    )
