"""The demo tenant's SFT data and its `qa_eval` scores, offline: no Neo4j, Feast, MLflow or Dagster.

    python -m bench.qa_offline prepare DIR          # DIR/train_chats.json, val_chats.json, retrieval/
    python -m bench.qa_offline eval --adapter A [--adapter B ...] [--questions 40] [--out FILE]
    python -m bench.qa_offline eval --train-cpu [--prep DIR]   # also train one adapter on CPU first
    python -m bench.qa_offline eval --train-cpu --cpu-fallback fp32 --cpu-precision bf16 --compile-layers  # bf16: AMX only

The demo tenant is what `datacreek demo` builds (default --max-docs 40): the demo corpus through
the same functions as raw_documents, parsed_chunks and knowledge_graph (parse, chunk, drop exact
duplicates, screen, extract facts), so the rows are those `live_chunks()` and `live_facts()` return.
Its retrieval index is built as chunk_embeddings -> embedding_features -> retrieval_index build it:
MiniLM vectors per distinct embedding hash, fp8-quantized, dequantized by `build_index`.
`prepare` runs `datasets.sft.generate` with that index and the embedder, as sft_dataset does
(retrieved passages, the source put in on a miss, and "Not in the documents." records).
`eval` exports each adapter with `export_release` and scores it with `evaluate` on `eval_sets`
(the tenant's hand-written questions: demo_questions.jsonl for its documents, spread to --questions),
exactly as qa_eval does (with retrieval, answers held to spans of the passages, as served;
`--free-decoding` measures without); `--with-validation` adds the held-out generated set qa_eval also scores.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

TENANT = "demo"
DEMO_DOCS = 40  # `datacreek demo --max-docs` default
TRAIN_THREADS = 2  # FineTuneResource.threads


def log(message: str) -> None:
    print(f"[qa_offline {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def demo_tenant(root: Path, max_docs: int):
    """(store, chunks, facts): the demo tenant's object store (inbox and eval/questions.jsonl as
    `datacreek demo` writes them) and its live chunk and fact rows, as the graph store returns them."""
    from datacreek_assets.defs.ingest.assets import INBOX, ChunkingConfig, IngestConfig
    from datacreek_assets.demo_corpus import write_demo_corpus
    from datacreek_assets.graph.sync import build_document_rows
    from datacreek_assets.ingest.chunking import chunk_text, drop_exact_duplicates
    from datacreek_assets.ingest.parsing import ParsedDocument, parse_document
    from datacreek_assets.ingest.screening import screen_text
    from datacreek_assets.object_store import LocalObjectStore, TenantObjectStore

    store = TenantObjectStore(LocalObjectStore(str(root)), TENANT)
    write_demo_corpus(store, max_docs=max_docs)
    limit, chunking = IngestConfig().max_document_bytes, ChunkingConfig()
    parsed = []
    for key in store.list(INBOX):  # raw_documents
        if store.size(key) <= limit:
            result = parse_document(key.removeprefix(INBOX + "/"), store.get(key), limit)
            if isinstance(result, ParsedDocument):
                parsed.append(result)
    unique, _ = drop_exact_duplicates([c for d in parsed for c in chunk_text(d.doc_id, d.text, chunking.max_tokens,
                                                                             chunking.overlap_tokens)])
    by_doc: dict[str, list[dict]] = {}
    for c in unique:  # parsed_chunks: screened chunks kept
        if not screen_text(c.text):
            by_doc.setdefault(c.doc_id, []).append({"chunk_id": c.chunk_id, "doc_id": c.doc_id, "position": c.position,
                                                    "text": c.text, "n_tokens": c.n_tokens})
    rows = [build_document_rows({"doc_id": d.doc_id, "content_hash": d.content_hash, "format": d.format,
                                 "size_bytes": d.size_bytes}, by_doc.get(d.doc_id, [])) for d in parsed]
    names: dict[str, str] = {}
    for e in (e for r in rows for e in r["entities"]):  # the graph's MERGE ... ON CREATE SET name: first wins
        names.setdefault(e["entity_id"], e["name"])
    facts = {f["fact_id"]: {"fact_id": f["fact_id"], "subject": names[f["subject"]], "predicate": f["predicate"],
                            "object": names[f["object"]], "sentence": f["sentence"], "chunk_id": f["chunk_id"],
                            "doc_id": f["doc_id"], "confirmed": False} for r in rows for f in r["facts"]}
    live = ({k: c[k] for k in ("chunk_id", "doc_id", "position", "text")} for cs in by_doc.values() for c in cs)
    chunks = sorted(live, key=lambda c: (c["doc_id"], c["position"]))  # live_chunks' order
    return store, chunks, [facts[k] for k in sorted(facts)]


def demo_index(chunks: list[dict]):
    """The retrieval index: one MiniLM vector per distinct embedding hash (chunk_embeddings' defaults),
    fp8 as embedding_features stores it, read back by retrieval_index's `build_index`."""
    import pandas as pd

    from datacreek_assets.embeddings.embedder import embed_texts, embedding_hash
    from datacreek_assets.embeddings.fp8 import quantize, rounding_weights
    from datacreek_assets.retrieval.index import build_index

    hashes = [embedding_hash(c["text"]) for c in chunks]
    todo = sorted({h: c for h, c in zip(hashes, chunks)}.items())
    vectors = embed_texts([c["text"] for _, c in todo], threads=1, token_budget=2048, precision="auto")
    first = {}
    for h, c in zip(hashes, chunks):
        first.setdefault(h, c)
    frame = pd.DataFrame([{"embedding_hash": h, "chunk_id": first[h]["chunk_id"], "doc_id": first[h]["doc_id"]}
                          for h, _ in todo])
    blobs, scales = quantize(vectors, rounding_weights(vectors))
    frame = frame.assign(vector_fp8=blobs, scale=scales, deleted=False)
    index, skipped = build_index(TENANT, frame, chunks)
    log(f"retrieval index: {len(index)} chunks, version {index.version}, {skipped} skipped")
    return index


def base_dir() -> Path:
    from datacreek_assets.finetune.base_model import SMOLLM2, base_model_dir
    from datacreek_assets.settings import LocalSettings

    return base_model_dir(SMOLLM2, LocalSettings.from_env().download_cache / "models")


def token_stats(name: str, chats: list[dict], tokenizer, max_len: int) -> dict:
    from datacreek_assets.finetune.packing import encode
    from datacreek_assets.finetune.pipeline import rows_for

    examples = [e for e in (encode(tokenizer, c["messages"], 1 << 30) for c in chats) if e is not None]
    lengths = sorted(len(e.input_ids) for e in examples)
    answers = sum(sum(1 for x in e.labels if x != -100) for e in examples)
    rows, dropped = rows_for(tokenizer, chats, max_len)
    stats = {"chats": len(chats), "tokens": sum(lengths), "answer_tokens": answers,
             "p50": lengths[len(lengths) // 2] if lengths else 0,
             "p95": lengths[int(len(lengths) * 0.95)] if lengths else 0, "max": lengths[-1] if lengths else 0,
             f"dropped_over_{max_len}": dropped, "packed_rows": len(rows)}
    log(f"{name}: " + ", ".join(f"{k} {v}" for k, v in stats.items()))
    return stats


def prepare(folder: Path, max_docs: int) -> dict:
    from collections import Counter

    from transformers import AutoTokenizer

    from datacreek_assets.datasets.sft import generate
    from datacreek_assets.embeddings.embedder import embed_texts
    from datacreek_assets.finetune.training import TrainConfig
    from datacreek_assets.retrieval.index import publish

    started = time.monotonic()
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qa-offline-") as root:
        _, chunks, facts = demo_tenant(Path(root), max_docs)
    log(f"demo tenant ({max_docs} documents): {len(chunks)} live chunks, {len(facts)} live facts")
    index = demo_index(chunks)
    publish(index, folder / "retrieval")
    dataset = generate(facts, chunks, index, embed_texts)  # as sft_dataset calls it
    chats = [r.chat() for r in dataset.records]
    train = [c for c in chats if c["split"] == "train"]
    validation = [c for c in chats if c["split"] == "validation"]
    (folder / "train_chats.json").write_text(json.dumps(train, ensure_ascii=False))
    (folder / "val_chats.json").write_text(json.dumps(validation, ensure_ascii=False))
    tokenizer = AutoTokenizer.from_pretrained(base_dir())
    max_len = TrainConfig.max_seq_len
    manifest = {"version": dataset.version, "template_sha": dataset.template_sha, "max_docs": max_docs,
                "chunks": len(chunks), "facts": len(facts), "retrieval_index": index.version,
                "source_retrieved_share": round(dataset.retrieval_hit_rate or 0.0, 3),
                "splits": dataset.split_counts(), "templates": dict(Counter(r.template for r in dataset.records)),
                "train_tokens": token_stats("train", train, tokenizer, max_len),
                "validation_tokens": token_stats("validation", validation, tokenizer, max_len),
                "seconds": round(time.monotonic() - started, 1)}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    log(f"dataset {dataset.version}: {len(train)} train, {len(validation)} validation chats; "
        f"source retrieved {manifest['source_retrieved_share']:.1%}; {manifest['seconds']} s -> {folder}")
    return manifest


def read_prep(folder: Path):
    from datacreek_assets.finetune.pipeline import SftData

    manifest = json.loads((folder / "manifest.json").read_text())
    return SftData(manifest["version"], manifest["template_sha"], json.loads((folder / "train_chats.json").read_text()),
                   json.loads((folder / "val_chats.json").read_text()))


def train_cpu(data, work: Path, cpu_fallback: str, **settings) -> tuple[Path, dict]:
    """One adapter trained on CPU as fine_tune trains it (TrainConfig with ``settings`` replaced, its
    device plan), without its MLflow run, heartbeat and latest.json."""
    from dataclasses import asdict, replace

    import torch

    from datacreek_assets.finetune.base_model import SMOLLM2, load_base
    from datacreek_assets.finetune.pipeline import effective_config, rows_for, run_key
    from datacreek_assets.finetune.training import TrainConfig, plan_device, precision_of, train_lora, wrap_lora

    config = replace(TrainConfig(), **settings)
    torch.set_num_threads(TRAIN_THREADS)
    plan = plan_device(0, cpu_fallback)
    load_8bit = plan.load_in_8bit
    try:
        model, tokenizer = load_base(base_dir(), load_in_8bit=load_8bit)
    except (ImportError, RuntimeError, ValueError) as err:
        if not load_8bit:
            raise
        log(f"8-bit unavailable ({err.__class__.__name__}: {err}): fp32 used, as fine_tune does")
        load_8bit = False
        model, tokenizer = load_base(base_dir())
    config, note = effective_config(plan.device, load_8bit, False, config)  # as fine_tune applies the settings
    if note:
        log(note)
    train_rows, dropped = rows_for(tokenizer, data.train, config.max_seq_len)
    val_rows, _ = rows_for(tokenizer, data.validation, config.max_seq_len)
    precision = precision_of(plan.device, load_8bit, config)
    key = run_key(data.version, SMOLLM2, config,  # placement as fine_tune keys it
                  "-".join(filter(None, (plan.device, precision, getattr(plan, "placement", "")))))
    out_dir = work / "runs" / (key + ("-compiled" if config.compile_layers else ""))  # the key ignores compiling
    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"training on CPU ({precision}, {TRAIN_THREADS} threads): {len(train_rows)} packed rows "
        f"({dropped} chats over {config.max_seq_len} tokens dropped), {len(val_rows)} validation rows -> {out_dir}")
    torch.manual_seed(config.seed)
    peft_model = wrap_lora(model, config)
    probe_cache = work / "probes" / f"cpu-{precision}-{config.max_seq_len}-r{config.lora_rank}.json"
    result = train_lora(peft_model, tokenizer.pad_token_id, train_rows, val_rows, config, out_dir, plan.device,
                        on_step=lambda step, loss: log(f"step {step}: loss {loss:.4f}") if step % 5 == 0 else None,
                        probe_cache=probe_cache)
    tokenizer.save_pretrained(result.adapter_dir)
    summary = {**asdict(result), "run_key": key, "precision": precision, "dropped_too_long": dropped,
               "config": asdict(config), "config_note": note}
    (out_dir / "train.json").write_text(json.dumps(summary, default=list))
    log(f"trained {result.steps} steps in {result.train_seconds:.0f} s ({result.tokens_per_s:.0f} tokens/s), "
        f"val loss {result.val_losses[-1][1] if result.val_losses else float('nan'):.4f}")
    return Path(result.adapter_dir), summary


def averaged_cpu(data, work: Path, trained: list[tuple[Path, dict]]) -> tuple[str, Path, dict]:
    """The members' averaged adapter, as fine_tune averages them (averaging.average_adapters)."""
    from dataclasses import asdict

    from datacreek_assets.finetune.averaging import average_adapters
    from datacreek_assets.finetune.pipeline import averaged_run_key

    keys = [summary["run_key"] + ("-compiled" if summary["config"]["compile_layers"] else "") for _, summary in trained]
    name = "cpu-averaged-" + averaged_run_key(keys)
    started = time.monotonic()
    averaged = average_adapters(base_dir(), [path for path, _ in trained], work / "runs" / name, data.validation,
                                trained[0][1]["config"]["max_seq_len"])
    log(f"averaged {len(trained)} adapters (rank {averaged.rank}) in {time.monotonic() - started:.0f} s: validation "
        f"loss {averaged.val_loss}, members {averaged.member_val_losses} (fp32 base, CPU)")
    return name, Path(averaged.adapter_dir), {**asdict(averaged), "members": keys}


def staged(adapter: Path, name: str, work: Path) -> dict:
    """`latest` as read_latest gives it. evaluate reads the tokenizer from the adapter's folder
    (fine_tune saves it there): an adapter without one is copied and given the base's."""
    from transformers import AutoTokenizer

    folder = adapter
    if not (adapter / "tokenizer.json").exists():
        folder = work / "adapters" / name
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(adapter, folder)
        AutoTokenizer.from_pretrained(base_dir()).save_pretrained(folder)
    return {"run_key": name, "base_dir": str(base_dir()), "adapter_dir": str(folder)}


def evaluate_adapters(args) -> dict:
    from datacreek_assets.finetune.pipeline import SftData, eval_sets, evaluate, export_release, read_tenant_questions
    from datacreek_assets.retrieval.index import load_current, publish
    from datacreek_assets.settings import LocalSettings

    work = Path(args.work)
    adapters = [(re.sub(r"[^A-Za-z0-9_.-]", "_", f"{i}-{Path(a).resolve().name}"), Path(a))
                for i, a in enumerate(args.adapter or [], 1)]
    report = {"questions_max": args.questions, "max_docs": args.max_docs, "margin": LocalSettings.eval_margin}
    data = read_prep(Path(args.prep)) if (args.train_cpu or args.with_validation) else SftData("", "", [], [])
    if args.train_cpu:
        from datacreek_assets.finetune.pipeline import gives_memory_back
        from datacreek_assets.finetune.training import TrainConfig

        settings = {"compile_layers": args.compile_layers}  # the rest only when given: TrainConfig's own otherwise
        if args.cpu_precision:
            settings["cpu_precision"] = args.cpu_precision
        if args.epochs is not None:
            settings["epochs"] = args.epochs
        if args.learning_rate is not None:
            settings["learning_rate"] = args.learning_rate
        first_seed = args.seed if args.seed is not None else TrainConfig.seed
        trained = [gives_memory_back(train_cpu)(data, work, args.cpu_fallback, **settings, seed=first_seed + i)
                   for i in range(args.average_seeds)]
        report["train_cpu"] = [summary for _, summary in trained]  # one summary per seed
        if args.average_seeds == 1:
            adapters.append(("cpu-" + trained[0][1]["run_key"], trained[0][0]))
        else:
            name, path, report["averaged"] = gives_memory_back(averaged_cpu)(data, work, trained)
            adapters.append((name, path))
    if not adapters:
        raise SystemExit("nothing to evaluate: give --adapter DIR and/or --train-cpu")
    with tempfile.TemporaryDirectory(prefix="qa-offline-") as root:
        store, chunks, _ = demo_tenant(Path(root), args.max_docs)
        tenant_questions = read_tenant_questions(store)  # what qa_eval reads: eval/questions.jsonl
    index = load_current(Path(args.prep) / "retrieval", TENANT) if args.reuse_index else None
    if index is None:
        index = demo_index(chunks)
        publish(index, work / "retrieval")
    sets = eval_sets(data if args.with_validation else SftData("", "", [], []), args.questions, tenant_questions)
    log(f"{len(tenant_questions)} hand-written questions for the tenant's documents; sets: "
        + ", ".join(f"{s.name} ({len(s.questions)})" for s in sets))
    report.update(index_version=index.version, index_chunks=len(index), reports={})
    for name, adapter in adapters:
        latest = staged(adapter, name, work)
        log(f"{name}: exporting GGUF (export_release) from {adapter}")
        manifest = export_release(latest, work)
        log(f"{name}: answering {sum(len(s.questions) for s in sets)} questions x 2 modes x 2 models (llama.cpp)")
        started = time.monotonic()
        result = evaluate(latest, manifest, sets, index, extractive=not args.free_decoding)
        result["passed"] = result["tuned"]["f1"] >= result["base"]["f1"] + report["margin"]
        result["adapter"], result["eval_seconds"] = str(adapter), round(time.monotonic() - started, 1)
        report["reports"][name] = result
        log(f"{name}: done in {result['eval_seconds']} s; gate {'passed' if result['passed'] else 'failed'}")
    return report


def table(report: dict) -> str:
    lines = ["| set | model | mode | questions | exact match | contains | token F1 |", "|---|---|---|---|---|---|---|"]
    first = next(iter(report["reports"].values()))
    for set_name in first["sets"]:
        sides = [("base", first["sets"][set_name], "base")]
        sides += [(name, r["sets"][set_name], "tuned") for name, r in report["reports"].items()]
        for label, scores, side in sides:
            for mode in ("closed", "retrieval"):
                s = scores[f"{side}_{mode}"]
                lines.append(f"| {set_name} | {label} | {mode} | {s['questions']} | {s['exact_match']:.3f} | "
                             f"{s['contains']:.3f} | {s['f1']:.3f} |")
    for name, r in report["reports"].items():
        lines.append(f"gate ({r['gate_set']}, retrieval F1, margin {report['margin']}): {name} "
                     f"{r['tuned']['f1']:.3f} vs base {r['base']['f1']:.3f} -> {'PASS' if r['passed'] else 'FAIL'}")
    if any(r["sets"][s][f"base_{m}"] != first["sets"][s][f"base_{m}"] for r in report["reports"].values()
           for s in first["sets"] for m in ("closed", "retrieval")):
        lines.append("note: the base model's scores differ between adapters' evaluations")
    return "\n".join(lines)


def positive(kind):
    """An argparse type: a number of ``kind`` above zero."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
        return value
    return parse


def average_seeds(text: str) -> int:
    from datacreek_assets.finetune.training import MAX_AVERAGE_SEEDS

    n = int(text)
    if not 1 <= n <= MAX_AVERAGE_SEEDS:
        raise argparse.ArgumentTypeError(f"between 1 and {MAX_AVERAGE_SEEDS}, as TrainConfig.average_seeds")
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.qa_offline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="write DIR/train_chats.json, val_chats.json, manifest.json, retrieval/")
    prep.add_argument("dir", type=Path)
    ev = sub.add_parser("eval", help="export and score adapters (base vs tuned, closed-book and with retrieval)")
    ev.add_argument("--adapter", action="append", help="a saved peft LoRA adapter folder (repeatable)")
    ev.add_argument("--questions", type=int, default=40, help="at most this many per set (qa_eval's default: 40)")
    ev.add_argument("--out", default="/tmp/qa_offline.json", help="the full JSON report")
    ev.add_argument("--prep", default="/tmp/qa_prep", help="the `prepare` folder (--train-cpu, --with-validation)")
    ev.add_argument("--work", default="/tmp/qa_offline_work", help="GGUF exports, CPU training runs, staged adapters")
    ev.add_argument("--train-cpu", action="store_true", help="first train one adapter on CPU on PREP/train_chats.json "
                    "(TrainConfig, with the settings below) and evaluate it too")
    ev.add_argument("--cpu-fallback", choices=("int8", "fp32"), default=None,
                    help="the base's precision for --train-cpu (default: DATACREEK_CPU_FALLBACK, else int8)")
    ev.add_argument("--cpu-precision", choices=("fp32", "bf16"), default=None,
                    help="--train-cpu with an fp32 base: fp32, or bf16 autocast (TrainConfig.cpu_precision)")
    ev.add_argument("--compile-layers", action="store_true", help="--train-cpu: compile the decoder layers")
    ev.add_argument("--seed", type=int, default=None, help="--train-cpu: TrainConfig.seed (default: its own)")
    ev.add_argument("--epochs", type=positive(int), default=None,
                    help="--train-cpu: TrainConfig.epochs (default: its own)")
    ev.add_argument("--learning-rate", type=positive(float), default=None,
                    help="--train-cpu: TrainConfig.learning_rate (default: its own)")
    ev.add_argument("--average-seeds", type=average_seeds, default=1, metavar="N",
                    help="--train-cpu: train N adapters (seeds SEED to SEED+N-1) and evaluate their average, "
                    "as TrainConfig.average_seeds does")
    ev.add_argument("--with-validation", action="store_true",
                    help="also score the held-out generated questions (PREP/val_chats.json), as qa_eval does")
    ev.add_argument("--reuse-index", action="store_true", help="use PREP/retrieval instead of rebuilding the index")
    ev.add_argument("--free-decoding", action="store_true",
                    help="answer with retrieval without holding answers to spans of the passages (not as served)")
    for p in (prep, ev):
        p.add_argument("--max-docs", type=int, default=DEMO_DOCS, help="demo corpus documents (`datacreek demo`)")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.dir, args.max_docs)
        return 0
    if args.cpu_fallback is None:
        from datacreek_assets.settings import LocalSettings

        args.cpu_fallback = LocalSettings.from_env().cpu_fallback
    started = time.monotonic()
    report = evaluate_adapters(args)
    report["seconds"] = round(time.monotonic() - started, 1)
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    print(table(report))
    log(f"report: {args.out} ({report['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
