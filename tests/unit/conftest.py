"""Fixtures shared by the unit tests' training modules."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A saved tiny random Llama and its tokenizer (base_model.TINY)."""
    torch = pytest.importorskip("torch")
    from datacreek_assets.finetune.base_model import TINY, base_model_dir

    torch.set_num_threads(1)
    return base_model_dir(TINY, tmp_path_factory.mktemp("base"))
