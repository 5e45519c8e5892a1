"""cruijff_kit.inputs: every way a file can be bad gives one CkError line naming the file."""

from __future__ import annotations

import pytest

from cruijff_kit.errors import CkError
from cruijff_kit.inputs import load_json, load_yaml_mapping, parse_yaml, read_text


def test_missing_directory_and_undecodable_files(tmp_path):
    with pytest.raises(CkError, match="not found"):
        read_text(tmp_path / "nope.yaml", "settings file")
    with pytest.raises(CkError, match="is a directory"):
        read_text(tmp_path, "settings file")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"key: 1\n\xff\xfe\x00garbage")
    with pytest.raises(CkError, match=r"not UTF-8 text \(byte 7, line 2\)") as err:
        load_yaml_mapping(binary, "setup_finetune.yaml")
    assert str(binary) in str(err.value) and "\n" not in str(err.value)


def test_duplicate_keys_are_errors_at_any_depth(tmp_path):
    with pytest.raises(CkError, match=r"key given twice \(lines 1 and 3\)") as err:
        parse_yaml("lr: 1e-4\nepochs: 2\nlr: 3e-4\n", "setup_finetune.yaml")
    assert err.value.value == "lr"
    with pytest.raises(CkError, match=r"lines 3 and 4"):
        parse_yaml("runs:\n  - name: a\n    epochs: 1\n    epochs: 2\n", "plan", line_offset=0)
    with pytest.raises(CkError, match=r"lines 12 and 13"):
        parse_yaml("a: 1\nb: 1\nb: 2\n", "plan", line_offset=10)
    assert parse_yaml("a: {x: 1}\nb: {x: 2}\n", "ok") == {"a": {"x": 1}, "b": {"x": 2}}


def test_yaml_syntax_and_shape(tmp_path):
    path = tmp_path / "setup_finetune.yaml"
    path.write_text("a: 1\nb: [unclosed\n")
    with pytest.raises(CkError, match=r"not valid YAML at line \d"):
        load_yaml_mapping(path, "setup_finetune.yaml")
    path.write_text("- a\n- b\n")
    with pytest.raises(CkError, match="must be a YAML mapping"):
        load_yaml_mapping(path, "setup_finetune.yaml")
    path.write_text("")
    assert load_yaml_mapping(path, "setup_finetune.yaml") == {}


def test_truncated_json_names_line_and_column(tmp_path):
    path = tmp_path / "parity.json"
    path.write_text('{"train": [{"input": "0101", "output": "0"},\n {"input": "11')
    with pytest.raises(CkError, match=r"not valid JSON at line 2, column \d+") as err:
        load_json(path, "dataset")
    assert err.value.field == "dataset" and err.value.value == str(path)
    path.write_text('{"train": []}')
    assert load_json(path, "dataset") == {"train": []}


def test_settings_file_that_is_binary_or_has_a_duplicate_key(tmp_path, monkeypatch):
    import subprocess
    import sys

    settings = tmp_path / "settings.yaml"
    monkeypatch.setenv("CK_CONFIG", str(settings))
    for content in (b"\x89PNG\r\n\x1a\n\x00\x00", b"scratch: /a\nscratch: /b\n"):
        settings.write_bytes(content)
        proc = subprocess.run([sys.executable, "-m", "cruijff_kit", "config", "show"], capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert "settings file" in proc.stderr
