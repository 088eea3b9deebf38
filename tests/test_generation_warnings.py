"""Sampling uses the current transformers API: no deprecation (e.g. of `past_key_values`) is reported."""

import logging
import warnings

import pytest

from pper.generation import load_model
from pper.generation.hf import TransformersSampler
from pper.tasks import load_tasks


@pytest.fixture(scope="module")
def loaded():
    return load_model()


@pytest.mark.parametrize("mode", ["beam", "sample", "greedy"])
def test_sampling_reports_no_deprecation(loaded, mode):
    from transformers.utils import logging as hf_logging

    model, tokenizer, name = loaded
    tasks = load_tasks("humaneval", limit=2)
    sampler = TransformersSampler(model, tokenizer, name, batch_size=2, max_new_tokens=4)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    hf_logging.warning_once.cache_clear()  # messages said once per process are said again
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert len(list(sampler.sample(tasks, mode, 2))) == 2
    finally:
        logger.removeHandler(handler)
    deprecations = [str(w.message) for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    deprecations += [r.getMessage() for r in records if "deprecat" in r.getMessage().lower()]
    assert not deprecations
