"""The manifest sums each stage's usage and carries the trainers' speed from training.json."""
import json

from delib.run.manifest import Manifest


def test_usage_and_training_speed_reach_the_manifest(tmp_path):
    (tmp_path / "02_generate").mkdir()
    (tmp_path / "02_generate" / "usage.json").write_text(json.dumps(
        {"generator": {"requests": 3, "prompt_tokens": 300, "completion_tokens": 90, "wall_s": 4.5}}))
    (tmp_path / "04_sft").mkdir()
    (tmp_path / "04_sft" / "usage.json").write_text(json.dumps(
        {"sft_trainer": {"requests": 6, "prompt_tokens": 3000, "wall_s": 30.0}, "generator": {"requests": 1}}))
    (tmp_path / "04_sft" / "training.json").write_text(json.dumps(
        {"steps": 6, "train_seconds": 30.0, "seconds_per_step_median": 5.0, "tokens_per_second": 100.0,
         "loss_first": 2.0, "loss_last": 1.5, "checkpoint": "/somewhere"}))
    m = Manifest(tmp_path)
    m.collect_usage(tmp_path)
    m.save()
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["usage"]["per_role"]["generator"]["requests"] == 4
    assert data["usage"]["per_stage"]["04_sft"]["sft_trainer"]["wall_s"] == 30.0
    assert data["training"] == {"04_sft": {"steps": 6, "train_seconds": 30.0, "seconds_per_step_median": 5.0,
                                           "tokens_per_second": 100.0, "loss_first": 2.0, "loss_last": 1.5}}
