"""The guard every tenant's Cypher passes before it reaches Neo4j: each node pattern bound to
``$tenant``, the repository binding ``$tenant`` itself (see ``graph_store``)."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any


class UnscopedQuery(ValueError):
    """Cypher handed to the repository without the ``$tenant`` scope."""


# A migration's schema statement: an index or constraint, created or dropped idempotently (in
# label isolation every tenant's migration meets the same, shared schema).
_SCHEMA_STATEMENT = re.compile(
    r"^\s*(CREATE|DROP)\s+((RANGE|TEXT|POINT|FULLTEXT|VECTOR|LOOKUP)\s+)?(INDEX|CONSTRAINT)\b.*\bIF\s+(NOT\s+)?EXISTS\b",
    re.I | re.S)


def is_schema_statement(cypher: str) -> bool:
    return bool(_SCHEMA_STATEMENT.match(_COMMENT.sub(" ", cypher)))


_STRING = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
# a node pattern: "(", an optional variable, optional labels, an optional property map, ")";
# not preceded by a name (that is a function call: count(n), datetime())
_NODE = re.compile(r"(?<![\w`])\(\s*([A-Za-z_]\w*)?\s*((?::\s*`?\w+`?\s*)*)(\{[^{}]*\})?\s*\)")
_SCOPED_MAP = re.compile(r"[{,]\s*tenant_id\s*:\s*\$tenant\s*[,}]")


def check_scoped(cypher: str, params: dict) -> None:
    """Every node pattern is bound to the tenant: it carries ``{tenant_id: $tenant}`` or reuses a
    variable bound by an earlier such pattern. Checked on the query's structure, so one scoped
    MATCH does not let an unscoped one through."""
    if "tenant" in params:
        raise UnscopedQuery("the repository binds $tenant itself")
    text = _COMMENT.sub(" ", _STRING.sub("''", cypher))
    scoped: set[str] = set()
    patterns = list(_NODE.finditer(text))
    if not patterns:
        raise UnscopedQuery("tenant Cypher must match its nodes with {tenant_id: $tenant}")
    for node in patterns:
        variable, properties = node.group(1), node.group(3) or ""
        if _SCOPED_MAP.search(properties):
            if variable:
                scoped.add(variable)
        elif not (variable in scoped and not properties):
            raise UnscopedQuery(f"node pattern {node.group(0)!r} is not bound to the tenant: give it "
                                "{tenant_id: $tenant} or reuse a variable a scoped pattern bound")


_COUNTER_FIELDS = ("nodes_created", "nodes_deleted", "relationships_created", "relationships_deleted",
                   "properties_set", "labels_added", "labels_removed")


class ScopedTransaction:
    """A write transaction that can only run tenant-scoped Cypher; it tallies what it changed."""

    def __init__(self, tx, tenant_id: str):
        self._tx = tx
        self._tenant_id = tenant_id
        self.counters: Counter = Counter()

    def run(self, cypher: str, **params: Any) -> list[dict]:
        check_scoped(cypher, params)
        result = self._tx.run(cypher, {**params, "tenant": self._tenant_id})
        rows = [record.data() for record in result]
        summary = result.consume().counters
        for name in _COUNTER_FIELDS:
            self.counters[name] += getattr(summary, name)
        return rows
