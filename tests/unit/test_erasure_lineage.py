"""Erasure's lineage: from dataset versions to the trainings on them and the releases serving those."""

import json
from types import SimpleNamespace

from datacreek_assets.erasure.documents import document_hash, tainted_releases, trainings_with


def test_trainings_and_releases_on_a_dataset_version_are_found_from_their_lineage(tmp_path):
    for key, version in (("k1", "v-old"), ("k2", "v-new"), ("k3", "v-other")):
        (tmp_path / "runs" / key).mkdir(parents=True)
        (tmp_path / "runs" / key / "lineage.json").write_text(json.dumps({"dataset_version": version}))
    (tmp_path / "runs" / "k0").mkdir()  # a training from before lineage.json: known only as the newest
    (tmp_path / "latest.json").write_text(json.dumps({"run_key": "k0", "dataset_version": "v-old"}))
    assert trainings_with(tmp_path, {"v-old", "v-new"}) == ["k0", "k1", "k2"]
    assert trainings_with(tmp_path, set()) == []

    live = [SimpleNamespace(version="v7", run_key="k2"), SimpleNamespace(version="v8", run_key="k3"),
            SimpleNamespace(version="base", run_key=None)]
    assert tainted_releases(live, ["k1", "k2"]) == ["v7"]
    assert tainted_releases(live, ["k20", "k"]) == []  # run keys are compared whole


def test_the_log_keeps_a_keyed_hash_of_the_document_id():
    assert document_hash("acme", "a.md") != document_hash("globex", "a.md")
    assert len(document_hash("acme", "a.md")) == 64 and "a.md" not in document_hash("acme", "a.md")
