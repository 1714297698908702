"""The sweep file is checked before anything starts: every bad field is named, exit status 2."""
from __future__ import annotations

import copy

import pytest
import yaml

from clipsep_ray.config import ConfigError
from clipsep_ray.tune.sweep import load_sweep, parse_sweep

GOOD = {
    "base": "tiny",
    "overrides": {"train.max_steps": 600, "data.train_uri": "/data/train", "data.val_uri": "/data/val"},
    "objective": {"metric": "val_sdri_text", "mode": "max"},
    "space": {"model.num_masks": {"choices": [8, 16, 32, 64]}, "model.noise_heads": {"choices": [0, 1, 2, 3]},
              "train.lr": {"low": 1.0e-4, "high": 3.0e-3, "log": True},
              "train.noise_reg_gamma": {"low": 0.1, "high": 1.0}},
    "search": {"trials": 8, "max_concurrent": 1, "seed": 0},
    "scheduler": {"type": "asha", "grace_steps": 200},
}


def _with(path: str, value):
    data = copy.deepcopy(GOOD)
    keys = path.split("/")
    node = data
    for k in keys[:-1]:
        node = node[k]
    if value is KeyError:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return data


def test_good_sweep_parses_to_optuna_distributions():
    sweep = parse_sweep(GOOD, name="masks")
    assert sweep.trials == 8 and sweep.metric == "val_sdri_text" and sweep.scheduler == "asha"
    d = {k: p.distribution() for k, p in sweep.space.items()}
    assert d["model.num_masks"].choices == (8, 16, 32, 64)
    assert d["train.lr"].log and d["train.lr"].low == 1e-4
    assert sweep.trial_config({"model.num_masks": 64, "train.lr": 1e-3}).model.num_masks == 64
    assert sweep.base_config().train.max_steps == 600


@pytest.mark.parametrize("path,value,named", [
    ("colour", "red", "colour"),                                           # unknown top-level key
    ("search/trails", 3, "search.trails"),                                 # unknown nested key
    ("space/model.num_mask", {"choices": [8]}, "model.num_mask"),          # unknown config field
    ("overrides/train.maxsteps", 3, "train.maxsteps"),                     # unknown override field
    ("space/model.num_masks", {"choices": []}, "space.model.num_masks"),   # empty choices
    ("space/train.lr", {"low": 3e-3, "high": 1e-4}, "space.train.lr"),     # inverted range
    ("space/train.lr", {"low": 1e-3, "high": 1e-3}, "space.train.lr"),     # empty range
    ("space/model.num_masks", {"choices": ["many"]}, "space.model.num_masks"),  # wrong type
    ("space/model.unet_depth", {"low": 2.5, "high": 4}, "space.model.unet_depth"),  # float range, int field
    ("space/train.lr", {"low": "a", "high": 1}, "space.train.lr.low"),     # wrong type
    ("search/trials", 0, "search.trials"),
    ("search/trials", "8", "search.trials"),
    ("objective/metric", "val_sdri_smell", "val_sdri_smell"),              # never reported
    ("objective/mode", "maximum", "objective.mode"),
    ("scheduler/type", "hyperband", "scheduler.type"),
    ("scheduler/grace_steps", 601, "scheduler.grace_steps"),               # beyond train.max_steps
    ("base", "huge", "base"),
    ("objective", KeyError, "objective"),
    ("space/model.num_masks", {"low": 8, "high": 32, "step": 0.5}, "integer field"),  # Optuna: step 0
])
def test_bad_sweep_is_rejected_naming_the_field(path, value, named):
    with pytest.raises(ConfigError) as err:
        parse_sweep(_with(path, value), source="bad.yaml")
    assert named in str(err.value) and "bad.yaml" in str(err.value)


def test_nit_metrics_need_noise_heads_in_the_space():
    data = _with("objective/metric", "val_nit_noise_share")
    assert parse_sweep(data).metric == "val_nit_noise_share"  # noise_heads 1..3 are in the space
    data["space"]["model.noise_heads"] = {"choices": [0]}
    with pytest.raises(ConfigError, match="never reports 'val_nit_noise_share'"):
        parse_sweep(data)


def test_command_exits_2_naming_the_field_and_starts_nothing(tmp_path, capsys):
    from clipsep_ray.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_with("space/train.lr", {"low": 1.0, "high": 0.1})))
    assert main(["tune", "--sweep", str(path), "--storage", str(tmp_path / "sweeps")]) == 2
    err = capsys.readouterr().err
    assert "space.train.lr" in err and "inverted" in err
    assert not (tmp_path / "sweeps").exists()  # nothing started: no study, no runs
    assert main(["tune", "--sweep", str(path), "train.max_stepz=3"]) == 2
    assert "train.max_stepz" in capsys.readouterr().err


def test_shipped_sweep_files_are_valid():
    for name in ("masks", "nit-noisy"):
        sweep = load_sweep(f"tuning/{name}.yaml")
        assert sweep.name == name and sweep.trials >= 1
    assert "model.noise_heads" in load_sweep("tuning/nit-noisy.yaml").space
    assert "model.num_masks" in load_sweep("tuning/masks.yaml").space


def test_ray_job_entry_point_runs_the_tune_command(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_with("search/max_concurrent", 0)))
    out = subprocess.run([sys.executable, "tuning/sweep.py", "--sweep", str(path), "--storage", str(tmp_path / "s")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "search.max_concurrent" in out.stderr


def test_study_storage_comes_from_optuna_storage_when_not_given(tmp_path, monkeypatch):
    """On a cluster the study URL (with its password) comes from the environment, never the
    entrypoint: without --study-storage, OPTUNA_STORAGE is the study's storage."""
    from clipsep_ray.commands import call
    from clipsep_ray.config import ConfigError

    monkeypatch.delenv("OPTUNA_STORAGE", raising=False)
    with pytest.raises(ConfigError, match="no study at"):  # the default: a SQLite file under --storage
        call("tune", ["report", "--study", "nope", "--storage", str(tmp_path / "sweeps")])
    monkeypatch.setenv("OPTUNA_STORAGE", f"sqlite:///{tmp_path / 'server.db'}")
    with pytest.raises(ConfigError, match="no study named 'nope'"):  # looked up in that storage
        call("tune", ["report", "--study", "nope", "--storage", str(tmp_path / "sweeps")])


def test_exponents_read_as_numbers_and_asha_reaches_the_longest_searched_run():
    text = yaml.safe_dump(GOOD).replace("0.0001", "1e-4")  # YAML 1.1 reads 1e-4 (no dot) as a string
    assert "1e-4" in text
    sweep = parse_sweep(yaml.safe_load(text))
    assert sweep.space["train.lr"].low == 1e-4
    assert sweep.longest_run(sweep.base_config()) == 600
    longer = parse_sweep(_with("space/train.max_steps", {"choices": [400, 1200]}))
    assert longer.longest_run(longer.base_config()) == 1200  # ASHA cut every trial at the base's 600


def test_best_config_is_the_one_the_best_trial_ran_with():
    """A later session's sweep file (other overrides) replaces the study's base config; best.yaml
    rebuilt the best trial from it, a config that trial never ran."""
    import optuna

    from clipsep_ray.tune.report import best_config, trial_rows

    sweep = parse_sweep(GOOD)
    ran = sweep.base_config().to_dict()
    later = parse_sweep(_with("overrides/train.max_steps", 1200)).base_config().to_dict()
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("sweep", sweep.to_dict())
    study.set_user_attr("base_config", later)
    dist = {"train.lr": sweep.space["train.lr"].distribution()}
    study.add_trial(optuna.trial.create_trial(params={"train.lr": 2e-3}, distributions=dist, value=5.0,
                                              user_attrs={"base_config": ran, "step": 600}))
    cfg, best = best_config(study)
    assert cfg.train.max_steps == 600 and cfg.train.lr == 2e-3
    assert trial_rows(study)[0]["note"] == ""  # ran its full 600 steps: not "stopped by ASHA"
