"""Hostile inputs against the inbox, the CLI and the configuration: each one gets a clear error
(a quarantine reason, an exit code and one line), leaves no partial state, and the next good input
still works. The HTTP surfaces (router, billing admin API) have theirs in test_serving.py and
test_billing.py; every case counts in the session's `hostile inputs` line."""

from __future__ import annotations

import io
import os
import re
import subprocess
import zipfile
import zlib

import dagster as dg
import pytest
from click.testing import CliRunner

from datacreek_assets.defs.ingest.assets import CHUNKS_KEY, DOCUMENTS_KEY, QUARANTINE_KEY, parsed_chunks, raw_documents
from datacreek_assets.ingest.simple_pdf import pdf_file as pdf
from datacreek_assets.ingest.simple_pdf import text_pdf
from datacreek_assets.partitions import TENANTS_PARTITION
from resources.stores import ObjectStoreResource, TenantRegistryResource

pytestmark = pytest.mark.integration

GOOD = b"# Rivers\n\nThe Danube flows through Vienna and Budapest."


def self_referencing_xref_pdf(objects: list[bytes]) -> bytes:
    """A PDF whose trailer's /Prev names its own xref table (the table's offset does not depend on
    the trailer after it)."""
    xref = pdf(objects).index(b"\nxref\n") + 1
    return pdf(objects, trailer=b"/Prev %d" % xref)


PAGE = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 3 0 R >>"
TEXT = b"<< /Length 30 >>\nstream\nBT /F1 10 Tf (Hello there) Tj ET\nendstream"


def zip_bomb(megabytes: int = 200) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("payload.txt", "w") as entry:
            zeros = b"\0" * (1 << 20)
            for _ in range(megabytes):
                entry.write(zeros)
    return buffer.getvalue()


def flate_bomb_pdf(megabytes: int = 200) -> bytes:
    """One page whose content stream inflates from a few hundred KiB to ``megabytes``."""
    packer = zlib.compressobj(9)
    chunk = b" " * (1 << 20)
    data = b"".join(packer.compress(chunk) for _ in range(megabytes)) + packer.flush()
    stream = b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(data) + data + b"\nendstream"
    return pdf([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>", stream,
                b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 3 0 R >>"])


def billion_laughs(wrapper: str) -> bytes:
    entities = ['<!ENTITY lol0 "lol">'] + [f'<!ENTITY lol{i} "{("&lol%d;" % (i - 1)) * 10}">' for i in range(1, 10)]
    doctype = f"<!DOCTYPE lolz [{''.join(entities)}]>"
    return (wrapper % (doctype, "&lol9;")).encode()


# (file name, content, what the quarantine reason must say)
HOSTILE_DOCUMENTS = [
    ("report.pdf", zip_bomb(), r"not a PDF \(missing %PDF- header\)"),  # a zip bomb posing as a PDF
    ("notes.txt", zip_bomb(), r"binary"),
    ("page.html", zip_bomb(), r"binary content"),
    ("bomb.pdf", flate_bomb_pdf(), r"expands beyond"),  # a compressed stream that inflates to 200 MiB
    ("lolz.html", billion_laughs("<html>%s<body><p>%s</p></body></html>"), r"entity declarations"),
    ("lolz.md", billion_laughs("%s\n\n%s"), r"entity declarations"),
    ("script.pdf", pdf([b"<< /Type /Catalog /Pages 2 0 R /OpenAction 5 0 R >>",
                        b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>", TEXT, PAGE,
                        b"<< /S /JavaScript /JS (app.alert\\('hi'\\)) >>"]), r"JavaScript"),
    ("names-js.pdf", pdf([b"<< /Type /Catalog /Pages 2 0 R /Names << /JavaScript 5 0 R >> >>",
                          b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>", TEXT, PAGE,
                          b"<< /Names [(x) << /S /JavaScript /JS (1) >>] >>"]), r"JavaScript"),
    ("next-js.pdf", pdf([b"<< /Type /Catalog /Pages 2 0 R /OpenAction << /S /GoTo /D [4 0 R /Fit] "
                         b"/Next << /S /JavaScript /JS (1) >> >> >>",
                         b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>", TEXT, PAGE]), r"JavaScript"),
    ("null-annot.pdf", pdf([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>",
                            TEXT, b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 3 0 R "
                            b"/Annots [null] >>"]), r"no extractable text"),  # not a crash
    ("loop-pages.pdf", pdf([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [2 0 R] /Count 1 >>",
                            TEXT]), r"cyclic page references"),  # a page tree whose node is its own kid
    ("loop-parent.pdf", pdf([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>",
                             TEXT, b"<< /Type /Pages /Kids [2 0 R] /Count 1 >>"]), r"cyclic page references"),
    ("loop-xref.pdf", self_referencing_xref_pdf([b"<< /Type /Catalog /Pages 2 0 R >>",
                                                 b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>", TEXT, PAGE]),
     r"no extractable text"),  # /Prev to itself
    ("loop-xobject.pdf", pdf([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>",
                              b"<< /Length 6 >>\nstream\n/X1 Do\nendstream",
                              b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 3 0 R "
                              b"/Resources << /XObject << /X1 5 0 R >> >> >>",
                              b"<< /Type /XObject /Subtype /Form /BBox [0 0 9 9] /Resources << /XObject << /X1 5 0 R >> >> "
                              b"/Length 6 >>\nstream\n/X1 Do\nendstream"]), r"no extractable text"),  # draws itself
    ("truncated.pdf", text_pdf("Python is a programming language.")[:200], r"unreadable pdf"),
    ("deep.html", b"<div>" * 100_000 + b"deep" + b"</div>" * 100_000, r"nested"),
    ("deep.md", b"> " * 100_000 + b"deep\n", r"nested"),
    ("empty.txt", b"", r"empty"),
    ("blank.md", b" \n\t\n" * 1000, r"no extractable text"),
    ("utf16.txt", "text in UTF-16".encode("utf-16"), r"binary content"),
    ("latin1.txt", "caf\xe9 cr\xe8me".encode("latin-1"), r"invalid UTF-8"),
    ("image.html", b"\x89PNG\r\n\x1a\n" + os.urandom(4096), r"binary content"),
    ("program.exe", b"MZ\x90\x00" + os.urandom(1024), r"unsupported"),
    ("noextension", b"plain words", r"unsupported"),
]
# names an S3 key can carry and a filesystem cannot (or should not)
HOSTILE_NAMES = [
    "../escape.txt", "sub/../../../other-tenant/inbox/x.txt", "cr\rname.txt", "nul\x00byte.txt",
    "invoice\u202etxt.exe", "tab\tname.txt", "zero\u200bwidth.txt", "back\\slash.txt", "sub//double.txt",
    "bell\x07.txt", "del\x7f.txt",
]  # a newline, which moto's server cannot take in a key, is tried on the filesystem below


@pytest.fixture
def hostile_inbox(s3_resource, s3_bucket, tmp_path, instance):
    objects = ObjectStoreResource(backend="s3", bucket=s3_bucket, s3=s3_resource)
    registry = TenantRegistryResource(url=f"sqlite:///{tmp_path / 'registry.db'}")
    registry.registry().add("hostile")
    instance.add_dynamic_partitions(TENANTS_PARTITION, ["hostile"])
    return objects, registry, instance


def test_hostile_documents_and_names_are_quarantined_with_a_reason_and_the_good_ones_kept(
        hostile_inbox, s3_resource, s3_bucket, hostile):
    objects, registry, instance = hostile_inbox
    inbox = objects.for_tenant("hostile")
    for name, data, _ in HOSTILE_DOCUMENTS:
        inbox.put(f"inbox/{name}", data)
    s3 = s3_resource.get_client()
    for name in HOSTILE_NAMES:
        s3.put_object(Bucket=s3_bucket, Key=f"tenants/hostile/inbox/{name}", Body=b"A name that hides a path.")
    inbox.put("inbox/good.md", GOOD)
    inbox.put("inbox/\U0001f4c4 r\u00e9sum\u00e9 \u4e2d\u6587.txt", b"Four-byte names are names: this one is kept.")
    inbox.put("inbox/\U0001f469\u200d\U0001f4bb \u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645.md",
              b"Joiners (an emoji sequence, a Persian word) are names too.")
    inbox.put("inbox/manual.pdf", text_pdf("Python is a programming language."))
    other = objects.for_tenant("bystander")
    other.put("inbox/secret.txt", b"Never read by hostile.")

    result = dg.materialize([raw_documents, parsed_chunks], partition_key="hostile", instance=instance,
                            resources={"object_store": objects, "tenant_registry": registry})
    assert result.success
    quarantined = {q["doc_id"]: q["reason"] for q in inbox.get_json(QUARANTINE_KEY)}
    for name, _, reason in HOSTILE_DOCUMENTS:
        with hostile.case("inbox"):
            assert re.search(reason, quarantined[name], re.I), (name, quarantined.get(name))
    for name in HOSTILE_NAMES:
        with hostile.case("inbox"):
            assert "invalid object key" in quarantined[name], (name, quarantined.get(name))
    documents = {d["doc_id"] for d in inbox.get_jsonl(DOCUMENTS_KEY)}
    assert documents == {"good.md", "manual.pdf", "\U0001f4c4 r\u00e9sum\u00e9 \u4e2d\u6587.txt",
                         "\U0001f469\u200d\U0001f4bb \u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645.md"}
    chunks = inbox.get_jsonl(CHUNKS_KEY)
    assert {c["doc_id"] for c in chunks} == documents  # nothing from a quarantined file reached the chunks
    assert not any("Never read" in c["text"] or "lol" in c["text"] for c in chunks)
    # nothing was written outside the tenant's own prefix, and the bystander is untouched
    keys = [item["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket)
            for item in page.get("Contents", [])]
    assert all(k.startswith(("tenants/hostile/", "tenants/bystander/inbox/secret.txt")) for k in keys), keys
    assert other.list() == ["inbox/secret.txt"]


def test_a_one_gigabyte_file_is_refused_by_its_size_and_a_newline_in_a_name_by_the_key_check(tmp_path, instance, hostile):
    objects = ObjectStoreResource(backend="local", root=str(tmp_path / "objects"))
    registry = TenantRegistryResource(url=f"sqlite:///{tmp_path / 'registry.db'}")
    registry.registry().add("hostile-big")
    instance.add_dynamic_partitions(TENANTS_PARTITION, ["hostile-big"])
    inbox = objects.for_tenant("hostile-big")
    inbox.put("inbox/good.md", GOOD)
    huge = tmp_path / "objects" / "tenants" / "hostile-big" / "inbox" / "huge.txt"
    with open(huge, "wb") as sparse:  # 1 GiB on paper, no disk blocks: reading it would still cost 1 GiB
        sparse.truncate(1 << 30)
    (huge.parent / "line\nbreak.txt").write_bytes(b"A name with a newline in it.")
    result = dg.materialize([raw_documents], partition_key="hostile-big", instance=instance,
                            resources={"object_store": objects, "tenant_registry": registry})
    assert result.success
    quarantined = {q["doc_id"]: q for q in inbox.get_json(QUARANTINE_KEY)}
    with hostile.case("inbox"):
        assert quarantined["huge.txt"] == {"doc_id": "huge.txt", "size_bytes": 1 << 30,
                                           "reason": f"oversized: {1 << 30} bytes > limit {5 * 1024 * 1024}"}
    with hostile.case("inbox"):
        assert "invalid object key" in quarantined["line\nbreak.txt"]["reason"]
    assert [d["doc_id"] for d in inbox.get_jsonl(DOCUMENTS_KEY)] == ["good.md"]


BAD_TENANT_IDS = ["", "ACME", "a" * 41, "../etc", "acme\n", "acme;rm -rf /", "\uff41cme", "-acme", "acme-",
                  "tenant_1", "acme\u202e", "a..b", "acme ", "a/b", "\u0105cme", "acme\x00"]


@pytest.fixture
def cli(cli_env, monkeypatch):
    from datacreek_assets.cli import cli as command

    for name, value in cli_env.items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()

    def run(*args, env=None):
        return runner.invoke(command, list(args), env=env, catch_exceptions=False)

    return run


def registered(cli) -> list[str]:
    listed = cli("tenant", "list")
    assert listed.exit_code == 0, listed.output
    return listed.output.split()


def test_malformed_tenant_ids_are_refused_by_every_command_and_nothing_is_written(cli, hostile):
    before = registered(cli)
    for tenant_id in BAD_TENANT_IDS:
        with hostile.case("cli"):
            for args in (["tenant", "add", "--", tenant_id], ["tenant", "balance", "--", tenant_id],  # "--": "-acme"
                         ["tenant", "issue-key", "--", tenant_id], ["tenant", "remove", "--", tenant_id],  # is an id
                         ["materialize", f"--tenant={tenant_id}"]):
                outcome = cli(*args)
                assert outcome.exit_code == 2, (args, outcome.output)
                assert "tenant id" in outcome.output.lower() and "Traceback" not in outcome.output
    assert registered(cli) == before


def test_bad_amounts_documents_and_selections_are_refused_and_change_nothing(cli, hostile):
    if "cli-hostile" not in registered(cli):
        assert cli("tenant", "add", "cli-hostile").exit_code == 0
    balance = cli("tenant", "balance", "cli-hostile", "--json").output
    cases = [
        (["tenant", "top-up", "cli-hostile", "nan"], r"finite|number"),
        (["tenant", "top-up", "cli-hostile", "inf"], r"finite|number"),
        (["tenant", "top-up", "cli-hostile", "1e13"], r"finite number within"),
        (["tenant", "top-up", "cli-hostile", "abc"], r"not a valid float|number"),
        (["tenant", "set-price", "cli-hostile", "--", "-1"], r"negative"),
        (["tenant", "set-price", "cli-hostile", "1", "--resource", "quantum"], r"quantum|resource"),
        (["tenant", "delete-document", "cli-hostile", "../../other/inbox/x.txt"], r"object key|document"),
        (["tenant", "delete-document", "cli-hostile", "line\nbreak.txt"], r"object key|document"),
        (["materialize", "--tenant", "cli-hostile", "--select", "no_such_asset"], r"no_such_asset"),
        (["tenant", "top-up", "never-registered", "5"], r"is not registered"),
    ]
    for args, message in cases:
        with hostile.case("cli"):
            outcome = cli(*args)
            assert outcome.exit_code == 2, (args, outcome.exit_code, outcome.output)
            assert re.search(message, outcome.output, re.I), (args, outcome.output)
            assert "Traceback" not in outcome.output
    assert cli("tenant", "balance", "cli-hostile", "--json").output == balance
    assert "never-registered" not in registered(cli)


BAD_CONFIG = [
    ({"DATACREEK_PROFILE": "staging"}, r"DATACREEK_PROFILE='staging' is not one of"),
    ({"DATACREEK_NEO4J_PORT": "abc"}, r"DATACREEK_NEO4J_PORT='abc' is not a port number"),
    ({"DATACREEK_NEO4J_PORT": "70000"}, r"outside 1\.\.65535"),
    ({"DATACREEK_SERVE_PORT": "0"}, r"outside 1\.\.65535"),
    ({"DATACREEK_POSTGRES_PORT": "-1"}, r"outside 1\.\.65535"),
    ({"DATACREEK_CPU_FALLBACK": "fp64"}, r"DATACREEK_CPU_FALLBACK='fp64' is not one of int8, fp32"),
    ({"DATACREEK_BASE_MODEL": "gpt-9"}, r"DATACREEK_BASE_MODEL='gpt-9' is not one of"),
    ({"DATACREEK_PROFILE": "prod"}, r"incomplete: DATACREEK_NEO4J_URI, .*DATACREEK_POSTGRES_URL, .* not set"),
]


@pytest.mark.parametrize("changes,message", BAD_CONFIG, ids=[next(iter(c)) + "=" + next(iter(c.values()))
                                                             for c, _ in BAD_CONFIG])
def test_wrong_configuration_is_one_clear_line_and_exit_code_3(cli_env, datacreek, changes, message, hostile):
    with hostile.case("config"):
        env = {**cli_env, **changes}
        outcome = subprocess.run([datacreek, "tenant", "list"], env=env, capture_output=True, text=True, timeout=120)
        assert outcome.returncode == 3, (changes, outcome.returncode, outcome.stdout, outcome.stderr)
        assert re.search(message, outcome.stderr), outcome.stderr
        assert "Traceback" not in outcome.stderr and len(outcome.stderr.strip().splitlines()) == 1
