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
    rows = synthetic_docs(3, 4)
    rows[0]["props"].update({"score": 0.125, "big": 2**40, "negative": -17, "flag": True, "none": None,
                             "text": "naïve café 𝔘 ✓" * 300, "tags": ["a", "b"], "pair": ("x", 1)})
    for value in (rows, {"rows": rows, "tenant": "acme"}, [], "", 0, -(2**63), 1.5e300):
        assert packed(value, python=False) == packed(value, python=True)
