"""Versioned Cypher migrations per tenant, Flyway-style.

Files are ``V<version>__<description>.cypher`` in ``db/migration/`` (every tenant) and in
``db/migration/<tenant>/`` (that tenant only); both form one sequence ordered by version, and a
version may appear only once. Each tenant's graph records what was applied in
``SchemaMigration`` nodes (version, checksum, script, time). Before anything runs, the applied
migrations are validated against the files: a changed applied migration, an applied one missing
from disk, or a new one older than the newest applied is refused.

A data migration runs through the tenant's scoped repository (every node pattern bound to
``$tenant``: a migration of tenant A cannot touch B) in one transaction with its version row, so
a failure leaves the recorded version unchanged. Index and constraint statements cannot share a
transaction with data: a migration holding them holds only them, each ``IF [NOT] EXISTS``, and
only in the common folder, since in label isolation the schema is shared by every tenant.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from datacreek_assets.graph.cypher_scope import is_schema_statement
from datacreek_assets.graph_store import GraphAdmin
from datacreek_assets.tenancy import InvalidTenantId, validate_tenant_id

DEFAULT_MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "db" / "migration"
_NAME = re.compile(r"^V(\d+(?:[._]\d+)*)__([A-Za-z0-9][A-Za-z0-9_-]*)\.cypher$")


class MigrationError(RuntimeError):
    """A migration that must not run: misnamed, changed after it was applied, out of order, failed."""


@dataclass(frozen=True)
class Migration:
    version: tuple[int, ...]
    description: str
    script: str  # relative to the migrations folder: "V2__x.cypher" or "acme/V3__y.cypher"
    checksum: str
    statements: tuple[str, ...]
    schema: bool  # index/constraint statements only

    @property
    def label(self) -> str:
        return ".".join(map(str, self.version))

    def record(self) -> dict:
        return {"version": self.label, "rank": list(self.version), "description": self.description,
                "script": self.script, "checksum": self.checksum}


def split_statements(text: str) -> list[str]:
    """Statements separated by ';' outside strings, identifiers in backticks and comments."""
    statements, current, quote, i = [], [], None, 0
    while i < len(text):
        ch = text[i]
        if quote:
            current.append(ch)
            if ch == "\\" and quote != "`" and i + 1 < len(text):
                current.append(text[i + 1])
                i += 1
            elif ch == quote:
                quote = None
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                raise MigrationError("an unterminated /* comment")
            i = end + 2
            current.append(" ")  # a comment separates tokens: d/**/AS is "d AS", not "dAS"
            continue
        elif ch in "'\"`":
            quote = ch
            current.append(ch)
        elif ch == ";":
            statements.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
        i += 1
    if quote:
        raise MigrationError(f"an unterminated {quote} string")
    statements.append("".join(current).strip())
    return [s for s in statements if s]


# What the repository's scope check reads past, refused in a migration's data statements: quoted
# identifiers (which can hide a pattern), procedures and CSV loads (Cypher inside strings, other
# sources), label expressions and inline WHERE in node patterns, and any use of tenant_id but the
# scope map itself (a SET of tenant_id would move nodes to another tenant).
_REFUSED = [
    (re.compile(r"`"), "quoted identifiers"),
    (re.compile(r"\bCALL\b|\bLOAD\s+CSV\b", re.I), "CALL or LOAD CSV"),
    (re.compile(r"\(\s*\w*\s*:[^()]*[|&!%]"), "label expressions"),
    (re.compile(r"\(\s*\w+(\s*:\s*\w+)*\s+WHERE\b", re.I), "WHERE inside a node pattern"),
]
_SCOPE_MAP = re.compile(r"\btenant_id\s*:\s*\$tenant\b")


def _check_data_statement(statement: str) -> None:
    for pattern, what in _REFUSED:
        if pattern.search(statement):
            raise MigrationError(f"{what} are not allowed in a migration's data statements")
    if re.search(r"\btenant_id\b", _SCOPE_MAP.sub("", statement)):
        raise MigrationError("a migration uses tenant_id only as {tenant_id: $tenant}")


def _load_file(path: Path, script: str, common: bool) -> Migration:
    match = _NAME.match(path.name)
    if not match:
        raise MigrationError(f"{script}: a migration is named V<version>__<description>.cypher")
    text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
    try:
        statements = split_statements(text)
    except MigrationError as err:
        raise MigrationError(f"{script}: {err}") from None
    if not statements:
        raise MigrationError(f"{script}: holds no statement")
    kinds = {is_schema_statement(s) for s in statements}
    if len(kinds) > 1:
        raise MigrationError(f"{script}: index/constraint statements cannot share a migration with data statements")
    schema = kinds == {True}
    if not schema:
        for statement in statements:
            try:
                _check_data_statement(statement)
            except MigrationError as err:
                raise MigrationError(f"{script}: {err}") from None
    if schema and not common:
        raise MigrationError(f"{script}: a tenant's own migration cannot change the schema all tenants share")
    version = tuple(int(p) for p in re.split(r"[._]", match.group(1)))
    return Migration(version, match.group(2).replace("_", " "), script,
                     hashlib.sha256(text.encode()).hexdigest(), tuple(statements), schema)


def load_migrations(root: Path, tenant_id: str) -> list[Migration]:
    """The tenant's sequence: the common folder's files and its own folder's, by version."""
    tenant_id = validate_tenant_id(tenant_id)
    found: list[Migration] = []
    if not root.is_dir():  # an install without db/migration must not look like one with nothing to apply
        raise MigrationError(f"the migrations folder {root} does not exist")
    for path in sorted(root.iterdir()):
        if path.is_file() and path.suffix == ".cypher":
            found.append(_load_file(path, path.name, common=True))
        elif path.is_dir():
            try:
                validate_tenant_id(path.name)
            except InvalidTenantId:
                raise MigrationError(f"{path.name}/: a folder in {root} is named after a tenant id") from None
    own = root / tenant_id
    if own.is_dir():
        for path in sorted(own.iterdir()):
            if path.is_file():
                found.append(_load_file(path, f"{tenant_id}/{path.name}", common=False))
    found.sort(key=lambda m: m.version)
    for a, b in zip(found, found[1:]):
        if a.version == b.version:
            raise MigrationError(f"version {a.label} appears twice: {a.script} and {b.script}")
    return found


def pending_migrations(migrations: list[Migration], applied: list[dict]) -> list[Migration]:
    """Validate what was applied against the files; what is left to apply, in order."""
    by_label = {m.label: m for m in migrations}
    for row in applied:
        migration = by_label.get(row["version"])
        if migration is None:
            raise MigrationError(f"applied migration {row['version']} ({row['script']}) is missing from the folder")
        if migration.checksum != row["checksum"]:
            raise MigrationError(f"migration {migration.script} was changed after it was applied "
                                 f"(checksum {row['checksum'][:12]} applied, {migration.checksum[:12]} now); "
                                 "add a new version instead")
    done = {row["version"] for row in applied}
    newest = max((tuple(row["rank"]) for row in applied), default=())
    pending = [m for m in migrations if m.label not in done]
    late = [m.script for m in pending if m.version < newest]
    if late:
        raise MigrationError(f"{', '.join(late)} is older than the newest applied migration "
                             f"({'.'.join(map(str, newest))}): give it a higher version")
    return pending


@dataclass
class MigrationReport:
    tenant_id: str
    applied: list[str] = field(default_factory=list)  # labels applied by this call
    pending: list[str] = field(default_factory=list)  # labels a dry run would apply
    version: str | None = None  # the recorded version after this call

    def line(self) -> str:
        if self.pending:
            return f"{self.tenant_id}: at {self.version or 'no version'}; would apply {', '.join(self.pending)}"
        if self.applied:
            return f"{self.tenant_id}: applied {', '.join(self.applied)}; now at {self.version}"
        return f"{self.tenant_id}: up to date at {self.version or 'no version'}"


def migrate_tenant(admin: GraphAdmin, tenant_id: str, root: Path | None = None,
                   dry_run: bool = False) -> MigrationReport:
    root = Path(root or admin.migrations_dir or DEFAULT_MIGRATIONS_DIR)
    graph = admin.tenant(tenant_id)
    migrations = load_migrations(root, graph.tenant_id)
    applied = graph.applied_migrations()
    pending = pending_migrations(migrations, applied)
    report = MigrationReport(graph.tenant_id, version=applied[-1]["version"] if applied else None)
    if dry_run:
        report.pending = [m.label for m in pending]
        return report
    for migration in pending:
        try:
            if migration.schema:
                for statement in migration.statements:
                    admin.apply_schema_statement(graph.tenant_id, statement)
                graph.record_migration(migration.record())
            else:
                graph.apply_migration(list(migration.statements), migration.record())
        except Exception as err:
            raise MigrationError(f"{graph.tenant_id}: migration {migration.script} failed, the recorded version "
                                 f"stays {report.version or 'none'}: {str(err).splitlines()[0] if str(err) else err!r}"
                                 ) from err
        report.applied.append(migration.label)
        report.version = migration.label
    return report
