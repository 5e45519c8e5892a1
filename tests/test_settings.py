"""Settings: flags > env (CK_*) > settings file > defaults, and `ck config`."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import pytest
import yaml

from cruijff_kit.cli import main
from cruijff_kit.errors import CkError
from cruijff_kit.settings import KEYS, load_settings, set_setting, settings_path, unset_setting


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No CK_* variable of the caller leaks in; the settings file is a temp file; cwd is tmp."""
    import os

    for name in list(os.environ):
        if name.startswith("CK_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CK_CONFIG", str(tmp_path / "cfg" / "settings.yaml"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "cfg" / "settings.yaml"


def test_defaults(tmp_path):
    s = load_settings(env={}, path=tmp_path / "absent.yaml")
    assert s.scratch == (tmp_path / "ck-scratch").resolve()
    assert s.scratch.is_absolute()
    assert s.models_dir == s.scratch / "models"
    assert s.slurm_time == "01:00:00" and s.slurm_mem == "32G"
    assert s.executor == "local" and s.max_local_jobs == 2
    assert s.modules == [] and s.slurm_account is None
    assert s.wandb_project == f"bit_sequences_{dt.date.today().isoformat()}"
    expected_venv = sys.prefix if sys.prefix != sys.base_prefix else None
    assert s.venv == expected_venv
    assert all(s.source(k) == "default" for k in KEYS)


@pytest.mark.parametrize("layers,winner", [
    (("flag", "env", "file"), "flag"),
    (("env", "file"), "env"),
    (("file",), "file"),
    ((), "default"),
])
def test_precedence_flag_env_file_default(tmp_path, layers, winner):
    cfg = tmp_path / "s.yaml"
    values = {"flag": tmp_path / "from_flag", "env": tmp_path / "from_env", "file": tmp_path / "from_file"}
    if "file" in layers:
        cfg.write_text(yaml.safe_dump({"scratch": str(values["file"]), "slurm_account": "file_acct"}))
    env = {"CK_SCRATCH": str(values["env"])} if "env" in layers else {}
    flags = {"scratch": str(values["flag"]), "slurm_account": None} if "flag" in layers else None
    s = load_settings(flags, env=env, path=cfg)
    assert s.source("scratch") == winner
    expected = values.get(winner, (tmp_path / "ck-scratch").resolve())
    assert s.scratch == expected
    # models_dir follows scratch whatever its source, and a None flag means "not given"
    assert s.models_dir == expected / "models" and s.source("models_dir") == "default"
    if "file" in layers:
        assert s.slurm_account == "file_acct" and s.source("slurm_account") == "file"


def test_env_var_names_and_parsing(tmp_path):
    env = {"CK_MODULES": "anaconda3/2024.6, cudatoolkit/12.4", "CK_MAX_LOCAL_JOBS": "4",
           "CK_EXECUTOR": "SLURM", "CK_SLURM_MEM": "64gb", "CK_MODELS_DIR": str(tmp_path / "m")}
    s = load_settings(env=env, path=tmp_path / "none.yaml")
    assert s.modules == ["anaconda3/2024.6", "cudatoolkit/12.4"]
    assert s.max_local_jobs == 4 and s.executor == "slurm" and s.slurm_mem == "64G"
    assert s.models_dir == tmp_path / "m" and s.source("models_dir") == "env"


def test_yaml_sexagesimal_time_in_file_is_read_back_as_time(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("slurm_time: 1:30:00\n")  # YAML 1.1 reads this as the integer 5400
    assert load_settings(env={}, path=cfg).slurm_time == "01:30:00"


def test_zero_time_is_refused_as_text_or_as_seconds(tmp_path):
    cfg = tmp_path / "s.yaml"
    for text in ("slurm_time: 00:00:00\n", "slurm_time: 0\n"):  # the int path must refuse zero too
        cfg.write_text(text)
        with pytest.raises(CkError, match="zero"):
            load_settings(env={}, path=cfg)


@pytest.mark.parametrize("key,value,field", [
    ("slurm_time", "90 minutes", "slurm_time"),
    ("slurm_mem", "lots", "slurm_mem"),
    ("slurm_mem", "512B", "slurm_mem"),  # bytes: a bare 512 would mean 512 MB to SLURM
    ("executor", "kubernetes", "executor"),
    ("max_local_jobs", "0", "max_local_jobs"),
    ("wandb_project", "my/project", "wandb_project"),
])
def test_bad_values_are_errors(tmp_path, key, value, field):
    with pytest.raises(CkError) as err:
        load_settings({key: value}, env={}, path=tmp_path / "none.yaml")
    assert err.value.field == field and err.value.fix
    with pytest.raises(CkError):
        load_settings(env={f"CK_{key.upper()}": value}, path=tmp_path / "none.yaml")


def test_unknown_key_names_the_closest(tmp_path):
    with pytest.raises(CkError, match="did you mean slurm_partition"):
        set_setting("slurm_partiton", "gpu", path=tmp_path / "s.yaml")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("scrach: /tmp/x\n")
    with pytest.raises(CkError, match="did you mean scratch"):
        load_settings(env={}, path=cfg)
    with pytest.raises(CkError, match="did you mean models_dir"):
        load_settings({"model_dir": "/x"}, env={}, path=tmp_path / "none.yaml")


def test_set_is_validated_atomic_and_round_trips(tmp_path):
    cfg = tmp_path / "conf" / "s.yaml"
    set_setting("scratch", "rel/scratch", path=cfg)  # stored absolute: the file must not depend on cwd
    set_setting("modules", "a,b", path=cfg)
    set_setting("slurm_time", "10:00:00", path=cfg)
    before = cfg.read_bytes()
    with pytest.raises(CkError):
        set_setting("slurm_time", "ten hours", path=cfg)
    with pytest.raises(CkError):
        set_setting("nonsense_key", "1", path=cfg)
    assert cfg.read_bytes() == before
    assert sorted(p.name for p in cfg.parent.iterdir()) == ["s.yaml"]  # no temp files left behind
    s = load_settings(env={}, path=cfg)
    assert s.scratch == (tmp_path / "rel" / "scratch").resolve() and s.source("scratch") == "file"
    assert s.modules == ["a", "b"] and s.slurm_time == "10:00:00"
    assert unset_setting("modules", path=cfg) and not unset_setting("modules", path=cfg)
    assert load_settings(env={}, path=cfg).source("modules") == "default"


def test_settings_path_uses_ck_config(tmp_path):
    assert settings_path({"CK_CONFIG": str(tmp_path / "x.yaml")}) == tmp_path / "x.yaml"
    assert settings_path({}) == Path.home() / ".config" / "cruijff_kit" / "settings.yaml"


def test_ck_config_cli(isolated, capsys, monkeypatch, tmp_path):
    assert main(["config", "set", "slurm_account", "msalganik"]) == 0
    assert yaml.safe_load(isolated.read_text()) == {"slurm_account": "msalganik"}
    monkeypatch.setenv("CK_SLURM_PARTITION", "gpu")
    capsys.readouterr()
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if not line.startswith("#")}
    assert set(lines) == set(KEYS)
    assert "msalganik" in lines["slurm_account"] and "[file]" in lines["slurm_account"]
    assert "[env CK_SLURM_PARTITION]" in lines["slurm_partition"]
    assert "[default]" in lines["scratch"] and str(tmp_path / "ck-scratch") in lines["scratch"]
    assert main(["config", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(isolated)
    assert main(["config", "set", "slurm_acount", "x"]) == 2
    assert "did you mean slurm_account" in capsys.readouterr().err
    assert main(["config", "set", "max_local_jobs", "-1"]) == 2
    assert yaml.safe_load(isolated.read_text()) == {"slurm_account": "msalganik"}


def test_a_misspelt_key_in_the_file_can_be_unset(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("scrach: /x\nslurm_account: a\n")
    with pytest.raises(CkError, match="did you mean scratch"):
        set_setting("slurm_account", "b", path=cfg)
    assert unset_setting("scrach", path=cfg)
    assert load_settings(env={}, path=cfg).slurm_account == "a"
