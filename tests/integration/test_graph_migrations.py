"""Versioned per-tenant Cypher migrations on the real Neo4j: an upgrade with data in place, one
tenant's migration never touching another's graph, checksums, order and failed migrations."""

import pytest

from datacreek_assets.graph.migrations import DEFAULT_MIGRATIONS_DIR, MigrationError, load_migrations, migrate_tenant

pytestmark = pytest.mark.integration


@pytest.fixture
def admin(local_resources):
    with local_resources["graph_store"].admin() as opened:
        yield opened


def seed(admin, tenant):
    graph = admin.tenant(tenant)
    graph.delete_everything()
    admin.create_scope(tenant)
    graph.replace_documents([{
        "doc_id": "a.md", "props": {"signature": "s"},
        "chunks": [{"chunk_id": f"{tenant}-c1", "doc_id": "a.md", "props": {"doc_id": "a.md", "position": 0, "text": "The Danube flows."}}],
        "next": [], "entities": [], "mentions": [], "facts": []}])
    return graph


def write(folder, name, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)


def test_an_upgrade_with_data_in_place_touches_only_its_tenant(admin, tmp_path):
    a, b = seed(admin, "mig-a"), seed(admin, "mig-b")
    root = tmp_path / "migration"
    write(root, "V1__deletion_indexes.cypher", (DEFAULT_MIGRATIONS_DIR / "V1__deletion_indexes.cypher").read_text())
    write(root, "V2__chunk_length.cypher",
          "// every tenant: a chunk's length, for chunking reports\n"
          "MATCH (c:Chunk {tenant_id: $tenant}) WHERE c.length IS NULL SET c.length = size(c.text);")
    write(root / "mig-a", "V2_1__label_source.cypher",
          "MATCH (d:Document {tenant_id: $tenant}) SET d.source = 'crawler; v2';\n"
          "MATCH (c:Chunk {tenant_id: $tenant}) SET c.reviewed = false")
    b_before = b.fingerprint()

    dry = migrate_tenant(admin, "mig-a", root, dry_run=True)
    assert dry.pending == ["1", "2", "2.1"] and a.applied_migrations() == []
    report = migrate_tenant(admin, "mig-a", root)
    assert report.applied == ["1", "2", "2.1"] and report.version == "2.1"
    rows = a._execute("MATCH (c:Chunk {tenant_id: $tenant}) MATCH (d:Document {tenant_id: $tenant}) "
                      "RETURN c.length AS length, c.reviewed AS reviewed, d.source AS source")
    assert rows == [{"length": len("The Danube flows."), "reviewed": False, "source": "crawler; v2"}]
    assert b.fingerprint() == b_before and b.applied_migrations() == []  # B is untouched
    assert [m["script"] for m in a.applied_migrations()] == [
        "V1__deletion_indexes.cypher", "V2__chunk_length.cypher", "mig-a/V2_1__label_source.cypher"]
    assert migrate_tenant(admin, "mig-a", root).applied == []  # applied once

    b_report = migrate_tenant(admin, "mig-b", root)  # B gets the common ones, never A's own
    assert b_report.applied == ["1", "2"]
    assert b._execute("MATCH (c:Chunk {tenant_id: $tenant}) RETURN c.reviewed AS reviewed") == [{"reviewed": None}]


def test_a_changed_missing_or_late_migration_is_refused_and_a_failed_one_records_nothing(admin, tmp_path):
    graph = seed(admin, "mig-c")
    root = tmp_path / "migration"
    write(root, "V1__mark.cypher", "MATCH (d:Document {tenant_id: $tenant}) SET d.mark = 1")
    assert migrate_tenant(admin, "mig-c", root).version == "1"

    write(root, "V2__half.cypher", "MATCH (d:Document {tenant_id: $tenant}) SET d.mark = 2;\n"
                                   "MATCH (d:Document {tenant_id: $tenant}) RETURN 1 / 0 AS broken")
    with pytest.raises(MigrationError, match="V2__half.cypher failed, the recorded version stays 1"):
        migrate_tenant(admin, "mig-c", root)
    assert [m["version"] for m in graph.applied_migrations()] == ["1"]
    assert graph._execute("MATCH (d:Document {tenant_id: $tenant}) RETURN d.mark AS mark") == [{"mark": 1}]

    write(root, "V2__half.cypher", "MATCH (n) SET n.everyone = true")  # tries to leave the tenant
    with pytest.raises(MigrationError, match="not bound to the tenant"):
        migrate_tenant(admin, "mig-c", root)
    (root / "V2__half.cypher").unlink()

    write(root, "V1__mark.cypher", "MATCH (d:Document {tenant_id: $tenant}) SET d.mark = 10")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrate_tenant(admin, "mig-c", root)
    write(root, "V1__mark.cypher", "MATCH (d:Document {tenant_id: $tenant}) SET d.mark = 1")
    write(root, "V3__three.cypher", "MATCH (d:Document {tenant_id: $tenant}) SET d.mark = 3")
    assert migrate_tenant(admin, "mig-c", root).applied == ["3"]
    write(root, "V2__late.cypher", "MATCH (d:Document {tenant_id: $tenant}) SET d.mark = 2")
    with pytest.raises(MigrationError, match="older than the newest applied"):
        migrate_tenant(admin, "mig-c", root)
    (root / "V2__late.cypher").unlink()
    (root / "V3__three.cypher").unlink()
    with pytest.raises(MigrationError, match="missing from the folder"):
        migrate_tenant(admin, "mig-c", root)
    graph.delete_everything()
    assert graph.applied_migrations() == []  # the version rows go with the tenant


def test_migration_files_are_checked_before_anything_runs(tmp_path):
    root = tmp_path / "migration"
    write(root, "V1__a.cypher", "MATCH (d:Document {tenant_id: $tenant}) SET d.x = 1")
    write(root / "acme", "V1__b.cypher", "MATCH (d:Document {tenant_id: $tenant}) SET d.y = 1")
    with pytest.raises(MigrationError, match="version 1 appears twice"):
        load_migrations(root, "acme")
    assert [m.label for m in load_migrations(root, "globex")] == ["1"]  # acme's folder is not globex's
    write(root / "acme", "V2__schema.cypher", "CREATE INDEX x IF NOT EXISTS FOR (d:Document) ON (d.x)")
    (root / "acme" / "V1__b.cypher").unlink()
    with pytest.raises(MigrationError, match="schema all tenants share"):
        load_migrations(root, "acme")
    (root / "acme" / "V2__schema.cypher").unlink()
    write(root, "V3__mixed.cypher", "CREATE INDEX y IF NOT EXISTS FOR (d:Document) ON (d.y);\n"
                                    "MATCH (d:Document {tenant_id: $tenant}) SET d.y = 2")
    with pytest.raises(MigrationError, match="cannot share a migration"):
        load_migrations(root, "acme")
    (root / "V3__mixed.cypher").unlink()
    write(root, "add_index.cypher", "MATCH (d:Document {tenant_id: $tenant}) SET d.z = 1")
    with pytest.raises(MigrationError, match="named V<version>__<description>"):
        load_migrations(root, "acme")
    (root / "add_index.cypher").unlink()
    write(root / "Not A Tenant", "V9__x.cypher", "RETURN 1")
    with pytest.raises(MigrationError, match="named after a tenant id"):
        load_migrations(root, "acme")
    (root / "Not A Tenant" / "V9__x.cypher").unlink()
    (root / "Not A Tenant").rmdir()
    # what the repository's scope check reads past is refused before anything runs
    for statement, refusal in [
        ("MATCH (t:Tenant {tenant_id: $tenant}) SET t.`x'` = 1 WITH t MATCH (n) DETACH DELETE n", "quoted"),
        ("MATCH (n:Chunk|Document) DETACH DELETE n", "label expressions"),
        ("MATCH (n WHERE n.x = 1) DETACH DELETE n", "WHERE inside"),
        ("MATCH (d:Document {tenant_id: $tenant}) SET d.tenant_id = 'victim'", "only as"),
        ("CALL apoc.periodic.iterate('MATCH (n) RETURN n', 'DETACH DELETE n', {})", "CALL"),
    ]:
        write(root, "V4__hostile.cypher", statement)
        with pytest.raises(MigrationError, match=refusal):
            load_migrations(root, "acme")
    (root / "V4__hostile.cypher").unlink()
    with pytest.raises(MigrationError, match="does not exist"):
        load_migrations(tmp_path / "nowhere", "acme")
    assert [m.schema for m in load_migrations(DEFAULT_MIGRATIONS_DIR, "acme")] == [True]
