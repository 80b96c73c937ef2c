"""Known third-party noise, hushed in one place: warnings, log lines and progress bars.

`make demo` printed 2,574 lines, 2,520 of them one bitsandbytes log line. Each filter here
names the library it hides (a warning's category and module, or a log record's logger and
message) and says why hiding it loses nothing. No filter matches a warning attributed to a
project module (PROJECT_MODULES), a datacreek_assets logger or Dagster's run logger: the
project's own warnings (quarantined files, drift levels, rollbacks, quota stops, failed billing
beats) stay visible.

`quiet_third_party()` runs early where a process starts doing work: the `datacreek` CLI
(whose runs execute their steps in-process) and `build_definitions` (every process that loads
the code location: `dagster dev`, its code server, run workers and Kubernetes step pods). It is
idempotent, so both may call it: a repeated call installs nothing twice (and puts back warning
filters that a `warnings.catch_warnings()` block around the first call took away). Progress
bars are switched off through environment variables the libraries read when imported, so call
it before they are imported; subprocesses inherit them.

`DATACREEK_QUIET=0` leaves everything as the libraries have it (debugging a library).
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
import warnings

# The project's own modules: no filter here matches a warning attributed to one of them.
PROJECT_MODULES = r"(datacreek_assets|resources|feature_repo|definitions|bench)(\.|$)|__main__$"

# (category, as "module:Class" or a class; module regex; message regex): each says why it is safe to hide
WARNING_FILTERS: list[tuple[str | type[Warning], str, str]] = [
    # Python shows a library's DeprecationWarnings only to its developers (hidden outside
    # __main__ by default), but importing feast turns them all on for the whole process
    # (`warnings.simplefilter("once", DeprecationWarning)` in feast/feature_store.py): pydantic's
    # on Ray Serve's config, transformers', torch's. This is Python's default again, for every
    # module but the project's; embeddings.feature_store calls quiet_third_party() after
    # importing feast so that this filter is in front of feast's.
    (DeprecationWarning, rf"(?!{PROJECT_MODULES})", ""),
    # Dagster labels the maturity of its own APIs (backfill_policy, pools, automation conditions)
    # on every definition that uses them, each time the code location loads: nothing to act on
    # until an upgrade, where the changelog says it. Attributed to Dagster's decorator wrappers.
    ("dagster_shared.utils.warnings:BetaWarning", r"dagster(_\w+)?(\.|$)", ""),
    ("dagster_shared.utils.warnings:PreviewWarning", r"dagster(_\w+)?(\.|$)", ""),
    # peft 0.21 reads `model.is_gradient_checkpointing`, the alias transformers 5 deprecates;
    # the project uses neither gradient checkpointing nor that property: peft's to update.
    (FutureWarning, r"transformers\.modeling_utils$", r"`is_gradient_checkpointing` is deprecated"),
]

# (logger name, message regex): only records logged on that very logger are matched
LOG_FILTERS: list[tuple[str, str]] = [
    # The CPU fallback's base is 8-bit: bitsandbytes casts fp32 activations to fp16 to quantize
    # them, by design, and says so for every 8-bit linear layer on every forward pass outside
    # training (validation, evaluation): 210 lines per SmolLM2 forward, 2,520 in the demo. The
    # precision is recorded on the materialization (base_in_8bit, precision).
    ("bitsandbytes.autograd._functions", r"MatMul8bitLt: inputs will be cast from"),
    # An optional 4-bit CPU kernel from the `kernels` hub package, looked for when bitsandbytes'
    # CPU backend loads on AVX512-BF16 CPUs: the project never runs 4-bit, and bitsandbytes falls back.
    ("bitsandbytes.backends.cpu.ops", r"Failed to load CPU gemm_4bit_forward"),
    # ray.init from a thread other than the main one (the CLI's run thread connecting to the Ray
    # head for serving): Ray cannot install its SIGTERM handler there. The CLI's process is a
    # client of the head; the head and its workers keep their own handlers.
    ("ray._private.worker", r"SIGTERM handler is not set because current thread is not the main thread"),
    # MLflow creating its SQLite tracking store's tables on first use (INFO, through its own handler).
    ("mlflow.store.db.utils", r"(Creating initial MLflow database tables|Updating database tables)"),
]

# Libraries' own progress bars, read when each library is imported: the CLI shows one bar.
PROGRESS_ENV = {
    # huggingface_hub's bars, and transformers' ("Loading weights", "Writing model shards")
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    # tqdm bars libraries make directly: transformers' GGUF dequantization, sentence-transformers'
    # encode batches, datasets' map (tqdm reads TQDM_* defaults when it is imported)
    "TQDM_DISABLE": "1",
}


class _DropMessages(logging.Filter):
    """Drops a logger's own records whose message matches; everything else passes."""

    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def _category(spec: str | type[Warning]) -> type[Warning] | None:
    if not isinstance(spec, str):
        return spec
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):  # that library is not installed here: nothing to hide
        return None


def install_warning_filters() -> None:
    """Put the third-party warning filters in front of the current ones (an identical filter
    already there is moved, not duplicated: warnings.filterwarnings does that)."""
    for spec, module, message in WARNING_FILTERS:
        category = _category(spec)
        if category is not None:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)


def install_log_filters() -> None:
    for name, message in LOG_FILTERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) and f.pattern.pattern == message for f in logger.filters):
            logger.addFilter(_DropMessages(message))


def disable_progress_bars() -> None:
    for key, value in PROGRESS_ENV.items():
        os.environ.setdefault(key, value)
    # libraries already imported have read the environment: tell them directly
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars as hub_off

        hub_off()
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()


def quiet_third_party() -> None:
    """Install every filter and switch the libraries' progress bars off (idempotent)."""
    if os.environ.get("DATACREEK_QUIET") == "0":
        return
    disable_progress_bars()
    install_log_filters()
    install_warning_filters()
