"""The Neo4j driver encodes messages with neo4j-rust-ext's packer (the graph writer's speed,
bench/graph_writer.py), and the bytes are the ones its pure-Python packer writes."""

import io

from neo4j._codec.packstream.v1 import Packer, _rust_pack

from bench.graph_writer import synthetic_docs


def packed(value, python: bool) -> bytes:
    stream = io.BytesIO()
    packer = Packer(stream)
    if python:
        packer._py_pack(value, Packer._inject_hooks())
    else:
        packer.pack(value)
    return stream.getvalue()


def test_the_driver_packs_in_rust_and_writes_the_python_packers_bytes():
    assert _rust_pack is not None, "neo4j-rust-ext is not installed: `make venv` installs requirements.lock"
    docs = synthetic_docs(100, 10)
    docs[0]["props"].update({"score": 0.125, "big": 2**40, "negative": -17, "flag": True, "none": None,
                             "text": "naïve café 𝔘 ✓" * 300, "tags": ["a", "b"], "pair": ("x", 1)})
    # a statement's parameters as the writer sends them: 500-row batches, element ids (~45 bytes)
    chunk_rows = [{"chunk_id": c["chunk_id"], "props": c["props"], "document": f"4:{'f' * 36}:{i}",
                   "mentions": [{"node": f"4:{'e' * 36}:{i}", "count": 1}]}
                  for i, c in enumerate(c for d in docs for c in d["chunks"])][:500]
    # every size class of packstream's headers: lists, maps and strings of 8, 16 and 32-bit lengths,
    # integers of each width, bytes
    sizes = [list(range(70_000)), {str(i): i for i in range(300)}, {str(i): i for i in range(70_000)}, "x" * 200,
             "y" * 70_000, 2**31 - 1, -(2**31), 2**15, -129, b"\x00" * 300, 1.5e300, -(2**63), 0, "", []]
    for value in (docs, {"rows": chunk_rows, "tenant": "acme"}, *sizes):
        assert packed(value, python=False) == packed(value, python=True)
