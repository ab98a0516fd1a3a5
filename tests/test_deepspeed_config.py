"""DeepSpeed accelerate configs run as FSDP2 sharding (instructrl.distributed.deepspeed_sharding):
the ZeRO stage and offload devices, from accelerate's own keys or from a DeepSpeed JSON file,
give the sharding plan; bad files and unsupported settings are clear errors; the file's
precision is followed. The 2-process run of a DeepSpeed config is in tests/test_fsdp.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from instructrl.config import load_config
from instructrl.distributed import (Sharding, deepspeed_note, mixed_precision,
                                    sharding_plan)
from instructrl.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def ds(monkeypatch):
    """A DeepSpeed launch's environment, no other launcher's."""
    for k in ("ACCELERATE_USE_FSDP", "ACCELERATE_DEEPSPEED_ZERO_STAGE",
              "ACCELERATE_DEEPSPEED_CONFIG_FILE", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE",
              "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "ACCELERATE_MIXED_PRECISION"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    return monkeypatch


def write(tmp_path, cfg, name="ds.json") -> Path:
    path = tmp_path / name
    path.write_text(cfg if isinstance(cfg, str) else json.dumps(cfg, indent=1))
    return path


@pytest.mark.parametrize("stage,reshard", [("3", True), ("2", False), ("1", False)])
def test_zero_stage_from_accelerates_keys(ds, stage, reshard):
    ds.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", stage)
    plan = sharding_plan()
    assert plan == Sharding(reshard, False, f"DeepSpeed ZeRO-{stage} (accelerate config)")
    assert "DeepSpeed's engine is not used" in deepspeed_note(plan)


def test_zero_0_is_plain_data_parallelism_and_stage_2_the_default(ds):
    ds.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "0")
    assert sharding_plan() is None
    assert "plain data parallelism" in deepspeed_note(None)
    ds.delenv("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    assert sharding_plan().reshard_after_forward is False  # accelerate's default: ZeRO-2


def test_cpu_offload_of_params_or_optimizer_offloads(ds):
    ds.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    assert not sharding_plan().offload
    ds.setenv("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "cpu")
    assert sharding_plan().offload
    ds.setenv("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "nvme")
    with pytest.raises(InputError, match="offload_optimizer_device.*NVMe"):
        sharding_plan()


def test_a_deepspeed_json_file_gives_stage_offload_and_precision(ds, tmp_path):
    path = write(tmp_path, {
        "zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}},
        "bf16": {"enabled": True}, "train_batch_size": 64, "gradient_clipping": "auto",
        "optimizer": {"type": "AdamW"}})
    ds.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(path))
    ds.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")  # the file wins, as in accelerate
    plan = sharding_plan()
    assert plan == Sharding(True, True, f"DeepSpeed ZeRO-3 ({path})")
    note = deepspeed_note(plan)
    # the sections the recipe sets are named; "auto" ones are not
    assert note.endswith(f"Set by the recipe, not by {path}: train_batch_size, optimizer")
    cpu = torch.device("cpu")
    ds.setenv("ACCELERATE_MIXED_PRECISION", "no")  # accelerate's value when the file says it
    assert mixed_precision(load_config(None).model, cpu) == "bf16"
    assert mixed_precision(load_config(None, ["model.mixed_precision=fp32"]).model, cpu) == "fp32"
    path.write_text(json.dumps({"zero_optimization": {"stage": 3}, "fp16": {"enabled": "auto"}}))
    assert mixed_precision(load_config(None).model, cpu) == "fp32"


@pytest.mark.parametrize("text,match", [
    ('{"zero_optimization": {"stage": 3},\n  "bf16": {enabled: true}}', r"ds\.json:2: not valid JSON"),
    ('{"zero_optimization": {"stage": "auto"}}', r"ds\.json: field 'zero_optimization.stage': ZeRO stage 'auto'"),
    ('{"zero_optimization": {"stage": 3, "offload_param": {"device": "nvme"}}}',
     r"field 'zero_optimization.offload_param.device': NVMe offload is not supported"),
    ('{"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "gpu"}}}',
     r"offload device 'gpu' is not none, cpu or nvme"),
    ('[1, 2]', "must be a JSON object"),
])
def test_bad_deepspeed_files_are_named(ds, tmp_path, text, match):
    ds.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(write(tmp_path, text)))
    with pytest.raises(InputError, match=match):
        sharding_plan()


def test_a_missing_deepspeed_file_is_named(ds, tmp_path):
    ds.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(tmp_path / "nope.json"))
    with pytest.raises(InputError, match="nope.json: field 'deepspeed_config_file': .*not exist"):
        sharding_plan()


@pytest.mark.parametrize("name,reshard", [("8-gpus-zero2.yaml", False), ("8-gpus-zero3.yaml", True)])
def test_shipped_deepspeed_configs_shard_as_their_headers_say(ds, name, reshard):
    from accelerate.commands.config.config_args import load_config_from_file

    acc = load_config_from_file(str(ROOT / "recipes" / "accelerate" / name))
    assert acc.distributed_type == "DEEPSPEED"
    # the keys `accelerate launch` exports from a config's deepspeed_config section
    ds.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", str(acc.deepspeed_config["zero_stage"]))
    for k in ("offload_param_device", "offload_optimizer_device"):
        ds.setenv(f"ACCELERATE_DEEPSPEED_{k.upper()}", acc.deepspeed_config[k])
    assert sharding_plan() == Sharding(reshard, False, f"DeepSpeed ZeRO-{2 + reshard} "
                                                       "(accelerate config)")
