"""Shared fixtures: tiny random models built from configs (no downloads, `steering.testing`), seeded."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from steering.runtime.models import LoadedModel
from steering.testing import ByteTokenizer, save_tiny_model, tiny_lm
from steering.testing import tiny_llama as _llama

# the builders live in steering.testing; test modules that import them from here still find them
__all__ = ["ByteTokenizer", "_llama", "save_tiny_model", "tiny_lm"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is visible to torch")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def seeded() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(params=["llama", "gpt2"])
def lm(request: pytest.FixtureRequest) -> LoadedModel:
    return tiny_lm(request.param)


@pytest.fixture
def llama() -> LoadedModel:
    return tiny_lm("llama")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    save_tiny_model(folder)
    return folder
