"""`prfaas model prepare`: a real conversion of the packaged GGUF, and idempotence."""

import json
import subprocess
import sys

from prfaas.model import DEFAULT_MODEL_DIR, gguf_source, is_prepared, prepare_model


def test_prepare_converts_the_packaged_gguf_once(tmp_path):
    assert gguf_source().is_file()
    target = tmp_path / "model"
    assert prepare_model(target) == target
    config = json.loads((target / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["num_hidden_layers"] == 30 and config["num_key_value_heads"] == 3
    assert (target / "model.safetensors").stat().st_size > 200_000_000
    template = (target / "chat_template.jinja").read_text()
    assert "<|im_start|>" in template
    weights_mtime = (target / "model.safetensors").stat().st_mtime_ns
    prepare_model(target)  # second run: nothing rewritten
    assert (target / "model.safetensors").stat().st_mtime_ns == weights_mtime
    assert not (tmp_path / "model.partial").exists()


def test_cli_prepare_is_idempotent_on_the_default_model():
    for _ in range(2):
        out = subprocess.run([sys.executable, "-m", "prfaas", "model", "prepare"],
                             capture_output=True, text=True, timeout=300, check=True)
        assert out.stdout.strip() == str(DEFAULT_MODEL_DIR)
    assert is_prepared(DEFAULT_MODEL_DIR)
