"""`python -m bench [--only NAME] [--json PATH]`: run every benchmark and print ratios."""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from bench.harness import format_table, run_comparison, write_json

SUITES = ["bench.graph_writer", "bench.tenant_registry", "bench.embeddings", "bench.topology", "bench.drift", "bench.finetune",
          "bench.serving", "bench.retrieval", "bench.hot_graph", "bench.html_extraction",
          "bench.pdf_extraction", "bench.curation", "bench.review_page", "bench.startup", "bench.model_files",
          "bench.adapter_pool"]


@contextmanager
def services_left_as_found():
    """Stop the local services that the suites started (Neo4j, Kafka, the stream job...), and
    only those: a developer's `datacreek services up` stays up after `make bench`."""
    from datacreek_assets.local_services import all_services
    from datacreek_assets.settings import LocalSettings

    services = all_services(LocalSettings.from_env())
    running = {svc.name for svc in services if svc.our_pid() is not None}
    try:
        yield
    finally:
        for svc in reversed(services):
            if svc.name not in running and svc.our_pid() is not None:
                svc.down(lambda message: None)


@contextmanager
def scratch_folder():
    """The temporary folders the suites make in this process (corpora, feature stores, trainer
    outputs: a feature store alone is ~330 MB) go under one folder, removed when the run ends,
    however it ends. Processes the suites start keep their own temporary files."""
    before = tempfile.tempdir
    with tempfile.TemporaryDirectory(prefix="datacreek-bench-") as scratch:
        tempfile.tempdir = scratch
        try:
            yield
        finally:
            tempfile.tempdir = before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", help="run only the suite (module) or the benchmarks whose name contains this text")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--quick", action="store_true", help="smaller inputs, one round (a smoke run)")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    results = []
    import importlib

    # --only naming a suite (e.g. "serving") prepares that suite alone: preparing the others
    # starts services and trains models for nothing
    named_suites = [m for m in SUITES if args.only and args.only in m]
    with scratch_folder(), services_left_as_found():
        for module_name in named_suites or SUITES:
            module = importlib.import_module(module_name)
            with console.status(f"preparing {module_name}") as status:
                comparisons = module.comparisons(quick=args.quick)
                for comparison in comparisons:
                    if args.only and not named_suites and args.only not in comparison.name:
                        continue
                    results.append(run_comparison(comparison, progress=lambda m: status.update(m)))
                getattr(module, "teardown", lambda: None)()
    if not results:
        console.print("no benchmark matched")
        return 2
    print(format_table(results))
    for r in results:
        if r.notes:
            print(f"  {r.name}: {r.notes}")
    if args.json:
        write_json(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
