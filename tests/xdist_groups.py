"""How `make test`'s two xdist workers share the suite (`--dist loadgroup`, pyproject's addopts).

The tests of the session's services (and of the PostgreSQL started on demand) are one group, run
in order on one worker, so one set of services serves them; the rest of each module runs as one
unit on whichever worker is free. The service tests mostly wait on their services (a one-process
suite left the CPUs 38 % idle), so the other worker's CPU work fits beside them: at a lower
priority (`nice`), so that it takes the idle CPU and not the service tests' (without it, the
end-to-end test took 456 s instead of 285 s beside the training tests). A crashed worker
ends the run (`--max-worker-restart=0`), as a crash of a one-process suite does: a replacement
would find the services' ports held by the crashed worker's services.

xdist 3.8 groups by appending ``@group`` to each test's node id, which has no effect under
pytest 9.2 (the id is computed), so every test would be its own group and both workers would
start the services. Here each worker writes the groups it collected to a file, and the
controller's scheduler reads them from there."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

SERVICE_FIXTURES = frozenset({"services", "settings", "postgres", "sql_url"})
GROUPS_FOLDER = pytest.StashKey[str]()


def group_of(item: pytest.Item) -> str:
    if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
        return "services"
    marker = item.get_closest_marker("xdist_group")  # `xdist_group("services")`: a stack of its own
    return marker.args[0] if marker else item.nodeid.split("::")[0]


@pytest.hookimpl(tryfirst=True)  # before deselection: the controller may ask for any collected test
def pytest_collection_modifyitems(config, items):
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None or "datacreek_groups" not in workerinput:
        return
    folder = Path(workerinput["datacreek_groups"])
    written = folder / f"{workerinput['workerid']}.json.tmp"
    written.write_text(json.dumps({item.nodeid: group_of(item) for item in items}))
    written.replace(folder / f"{workerinput['workerid']}.json")  # whole, or not there


NICENESS = 10  # CFS weights: about a tenth of the CPU while the service tests want it
_ran = {"services": False, "niced": False}


def pytest_runtest_setup(item):
    """In a worker, the first test decides: the service group's worker runs it first (the largest
    unit is handed out first) and keeps its priority; the other worker lowers its own, and the
    processes its tests start inherit it. (An unprivileged process cannot raise it again.)"""
    if "PYTEST_XDIST_WORKER" not in os.environ or _ran["services"] or _ran["niced"]:
        return
    if group_of(item) == "services":
        _ran["services"] = True
    else:
        os.nice(NICENESS)
        _ran["niced"] = True


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    stash = node.config.stash
    if GROUPS_FOLDER not in stash:
        stash[GROUPS_FOLDER] = tempfile.mkdtemp(prefix="datacreek-xdist-groups-")
    node.workerinput["datacreek_groups"] = stash[GROUPS_FOLDER]


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadgroup":
        raise pytest.UsageError("the tests of the shared services must run on one worker: "
                                "distribute with --dist loadgroup (the default), or run with -n 0")
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        """xdist's scope scheduling, with the groups the workers wrote as the scopes."""

        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:  # first asked once every worker has collected
                written = sorted(Path(config.stash[GROUPS_FOLDER]).glob("*.json"))
                if not written:
                    raise RuntimeError("no worker wrote its test groups (is tests/xdist_groups.py loaded there?)")
                self.groups = json.loads(written[0].read_text())
            return self.groups.get(nodeid, nodeid)

    return GroupScheduling(config, log)


def pytest_unconfigure(config):
    folder = config.stash.get(GROUPS_FOLDER, None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
