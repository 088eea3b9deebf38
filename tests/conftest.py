from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Tests never reach a hub: Hugging Face loaders run on local folders only, with a throwaway cache.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="pper-hf-cache-"))

FIXTURES = Path(__file__).parent / "fixtures"
SHARED_DATA = Path(os.environ.get("PPER_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
MBPP = SHARED_DATA / "mbpp.jsonl"


@pytest.fixture
def mbpp_path() -> Path:
    if not MBPP.exists():
        pytest.skip(f"MBPP not found at {MBPP} (set PPER_SHARED_DATA to the folder holding mbpp.jsonl)")
    return MBPP


@pytest.fixture
def apps_path() -> Path:
    return FIXTURES / "apps_sample.jsonl"


@pytest.fixture
def codecontests_path() -> Path:
    return FIXTURES / "codecontests_sample.jsonl"
