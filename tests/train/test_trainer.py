"""The training loop end to end on a tiny model: outputs, metrics, exact resume, errors, options."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from mmgpt.config import ConfigError
from mmgpt.model.checkpoints import load_pretrained
from mmgpt.train.checkpoint import list_checkpoints, load_trainer_state
from mmgpt.train.config import load_train_config
from mmgpt.train.run import train
from mmgpt.train.trainer import TrainingError


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def adapter_weights(folder):
    return load_file(str(folder / "adapter_model.safetensors"))


def assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


def test_a_lora_run_writes_a_peft_adapter_checkpoints_and_metrics(train_config, tiny_model_dir, tmp_path):
    cfg = load_train_config(train_config)
    result = train(cfg)
    run_dir = tmp_path / "run"
    assert result.steps == 4 and result.output == run_dir / "adapter"
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-00000002", "step-00000004"]
    lines = records(run_dir)
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    assert all(r["loss_vl"] > 0 and r["loss_lo"] > 0 and r["samples"] == 4 for r in lines)
    assert lines[0]["lr"] == 0.0 and lines[1]["lr"] == 1e-3  # the reference's warmup from 0 (one step), then cosine
    assert lines[-1]["lr"] < lines[1]["lr"]
    # peft itself loads the adapter onto the bare LM, with exactly the weights training ended with.
    model, _ = load_pretrained(tiny_model_dir)
    peft_model = PeftModel.from_pretrained(model.lang_encoder, str(result.output))
    loaded = {k: v for k, v in peft_model.state_dict().items() if "lora_" in k}
    saved = adapter_weights(result.output)
    assert len(loaded) == len(saved) > 0
    final = adapter_weights(list_checkpoints(run_dir)[-1] / "adapter")
    assert_same_weights(saved, final)
    assert any(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k)  # training moved B off zero


def test_training_lowers_the_loss(train_config):
    cfg = load_train_config(train_config, ["max_steps=16", "optimizer.lr=1e-2", "checkpoint.every=0"])
    train(cfg)
    losses = [r["loss"] for r in records(Path(cfg.run_dir))]
    assert sum(losses[-4:]) < sum(losses[:4])


def test_resume_from_a_mid_run_checkpoint_ends_bitwise_equal(train_config, tmp_path):
    cfg = load_train_config(train_config, ["max_steps=6", "gradient_accumulation=2"])
    full = train(cfg)
    # A second run that only has the step-4 checkpoint of the first, as if it had died right after saving it.
    other = tmp_path / "resumed"
    (other / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "run" / "checkpoints" / "step-00000004", other / "checkpoints" / "step-00000004")
    resumed = train(
        load_train_config(train_config, ["max_steps=6", "gradient_accumulation=2", f"run_dir={other}"]), resume=True
    )
    assert resumed.steps == 6
    assert_same_weights(adapter_weights(full.output), adapter_weights(resumed.output))
    state = load_trainer_state(list_checkpoints(other)[-1])
    assert state.step == 6 and len(state.ranks) == 1 and state.ranks[0]["data"]["step"] == 12


def test_an_existing_run_is_not_overwritten_without_resume(train_config):
    cfg = load_train_config(train_config, ["max_steps=2"])
    train(cfg)
    with pytest.raises(ConfigError, match="pass --resume"):
        train(cfg)
    assert train(cfg, resume=True).steps == 2  # nothing left to do


def test_a_non_finite_loss_names_the_samples_and_keeps_the_last_checkpoint(train_config, monkeypatch):
    import mmgpt.train.trainer as trainer_module

    real = trainer_module.batch_loss
    calls = {"n": 0}

    def poisoned(model, batch, device):
        calls["n"] += 1
        loss = real(model, batch, device)
        return loss * float("nan") if calls["n"] > 4 else loss  # steps 1-2 are fine (2 batches each)

    monkeypatch.setattr(trainer_module, "batch_loss", poisoned)
    cfg = load_train_config(train_config, ["checkpoint.every=1"])
    with pytest.raises(TrainingError, match=r"non-finite loss at step 3 .*on samples llava:\d+.*step-00000002"):
        train(cfg)


def test_language_ratio_zero_trains_on_vision_language_only(train_config):
    cfg = load_train_config(train_config, ["data.language_ratio=0", "max_steps=2"])
    train(cfg)
    assert all(r["loss_lo"] is None and r["samples"] == 2 for r in records(Path(cfg.run_dir)))


def test_gradient_checkpointing_gives_the_same_adapter(train_config, tmp_path):
    plain = train(load_train_config(train_config, ["max_steps=2", "checkpoint.every=0"]))
    checkpointed = train(
        load_train_config(
            train_config, ["max_steps=2", "checkpoint.every=0", "gradient_checkpointing=true", f"run_dir={tmp_path}/gc"]
        )
    )
    assert_same_weights(adapter_weights(plain.output), adapter_weights(checkpointed.output), atol=1e-6)


def test_openflamingo_pretraining_writes_a_loadable_model(train_config, tmp_path):
    cfg = load_train_config(train_config, ["trainable=openflamingo", "max_steps=2", "checkpoint.every=0"])
    result = train(cfg)
    model, _ = load_pretrained(result.output)
    assert result.output == tmp_path / "run" / "model"
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_runs(train_config, precision):
    result = train(load_train_config(train_config, [f"precision={precision}", "max_steps=2", "checkpoint.every=0"]))
    weights = adapter_weights(result.output)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights.values())


def test_validation_loss_and_best_checkpoint(train_config, data_config, tmp_path):
    cfg = load_train_config(
        train_config, ["validation.every=2", "validation.batches=2", f"validation.data={data_config}"]
    )
    train(cfg)
    val = [r for r in records(tmp_path / "run") if "val_loss" in r]
    assert [r["step"] for r in val] == [2, 4]
    assert all(r["val_loss"] == pytest.approx(r["val_loss_vl"] + r["val_loss_lo"]) for r in val)
    best_step = min(val, key=lambda r: r["val_loss"])["step"]
    assert load_trainer_state(tmp_path / "run" / "best").step == best_step


def test_pretraining_from_random_weights_trains_every_part(train_config, tmp_path):
    from mmgpt.config import save_yaml
    from mmgpt.train.checkpoint import TRAINABLE_FILE
    from tests.model.conftest import make_tokenizer, tiny_config

    tokenizer = make_tokenizer()
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    save_yaml(tiny_config("llama", vocab_size=len(tokenizer) + 3), tmp_path / "tiny.yaml")
    cfg = load_train_config(
        {
            **train_config,
            "model": str(tmp_path / "tiny.yaml"),
            "init": "random",
            "model_options": {"tokenizer": str(tmp_path / "tokenizer")},
            "trainable": "all",
            "max_steps": 2,
        }
    )
    result = train(cfg)
    trained = load_file(str(list_checkpoints(tmp_path / "run")[-1] / TRAINABLE_FILE))
    model, _ = load_pretrained(result.output)
    assert trained.keys() == dict(model.named_parameters()).keys()  # the ViT too
    assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(ConfigError, match=r"model_options\.tokenizer"):
        train(
            load_train_config({**train_config, "model": str(tmp_path / "tiny.yaml"), "init": "random", "run_dir": "x"})
        )


def test_world_generation_metrics_pick_the_best_checkpoint(train_config, tmp_path):
    from mmgpt.world.config import WorldConfig
    from mmgpt.world.write import generate_world

    world = tmp_path / "world"
    generate_world(world, WorldConfig(scenes=2, heldout=2, language=2, heldout_language=2))
    cfg = load_train_config(
        train_config,
        [f"validation.world={world}", "validation.world_scenes=1", "validation.every=2",
         "validation.metric=world_shape", "validation.mode=max", "max_steps=4"],
    )  # fmt: skip
    train(cfg)
    val = [r for r in records(tmp_path / "run") if "world_shape" in r]
    assert [r["step"] for r in val] == [2, 4]
    assert all(0.0 <= r["world_language"] <= 1.0 and "world_detail_words" in r for r in val)
    best = max(val, key=lambda r: (r["world_shape"], -r["step"]))["step"]
    assert load_trainer_state(tmp_path / "run" / "best").step == best


def test_gate_init_opens_every_gate_before_training(train_config, tiny_model_dir):
    from mmgpt.train.run import load_run_model

    model, _ = load_run_model(load_train_config(train_config, ["gate_init=0.25"]))
    assert {float(g) for b in model.gated_blocks().values() for g in (b.attn_gate, b.ff_gate)} == {0.25}


def test_vision_positions_adds_the_table_before_training(train_config, tiny_model_dir):
    from mmgpt.train.run import load_base_model, load_run_model

    base, _ = load_base_model(str(tiny_model_dir))
    before = base.vision_encoder.model.embeddings.position_embedding.weight.detach().clone()
    model, _ = load_run_model(load_train_config(train_config, ["vision_positions=3.0"]))
    weight = model.vision_encoder.model.embeddings.position_embedding.weight
    added = (weight.detach() - before)[1:]
    assert torch.allclose(added.norm(dim=1), torch.full((added.shape[0],), 3.0))


def test_perceiver_latents_grows_the_perceiver_trains_and_saves_it_grown(train_config, tiny_model_dir):
    from mmgpt.train.run import load_base_model

    base, _ = load_base_model(str(tiny_model_dir))
    have = base.perceiver.num_latents
    overrides = ["trainable=openflamingo", f"perceiver_latents={have + 3}", "max_steps=2", "checkpoint.every=0"]
    result = train(load_train_config(train_config, overrides))
    model, _ = load_pretrained(result.output)
    assert model.perceiver.num_latents == model.config.perceiver.num_latents == have + 3
    assert not torch.equal(model.perceiver.latents[:have], base.perceiver.latents)  # trained, not only copied
    with pytest.raises(ConfigError, match="a LoRA run neither trains nor saves"):
        load_train_config(train_config, [f"perceiver_latents={have + 3}"])
