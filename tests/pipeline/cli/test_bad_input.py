"""Bad input on the command line: a specific one-line error and exit status 2, never a traceback or a
silent drop. Each case failed before its fix (named in the test's docstring)."""

from __future__ import annotations

import pytest

from pipeline.cli import main


def run_cli(capsys, *argv) -> tuple[int, str]:
    rc = main(list(argv))
    err = capsys.readouterr().err
    return rc, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_a_binary_config_file_is_refused_by_name(tmp_path, capsys):
    """Was a UnicodeDecodeError traceback."""
    binary = tmp_path / "weights.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    rc, err = run_cli(capsys, "train", "-c", str(binary), "--print-config")
    assert rc == 2
    assert "weights.bin: not a YAML text file" in one_error_line(err)


def test_a_folder_as_config_is_refused(tmp_path, capsys):
    rc, err = run_cli(capsys, "generate", "-c", str(tmp_path), "--print-config")
    assert rc == 2 and "is a folder" in one_error_line(err)


def test_duplicate_yaml_keys_are_refused_with_their_line(tmp_path, capsys):
    """Was: the last value silently won."""
    cfg = tmp_path / "train.yaml"
    cfg.write_text("iterations: 10\nlosses:\n  landmark: 0\n  landmark: 5.0e+5\n")
    rc, err = run_cli(capsys, "train", "-c", str(cfg), "--print-config")
    assert rc == 2
    assert "train.yaml: line 4: duplicate key 'landmark' (first on line 3)" in one_error_line(err)


def test_a_key_under_a_non_mapping_override_is_refused(capsys):
    """`--set model=5 --preset tiny` silently dropped model=5 (and started a 50,000-step run)."""
    rc, err = run_cli(capsys, "train", "--set", "model=5", "--preset", "tiny", "--print-config")
    assert rc == 2
    line = one_error_line(err)
    assert "model.preset=tiny" in line and "model is set to 5" in line and "not a mapping" in line


def test_run_refuses_a_section_setting_the_run_would_replace(capsys):
    """`hfld run --set train.model.preset=tiny` was printed by --print-config, then silently replaced."""
    rc, err = run_cli(capsys, "run", "--set", "train.model.preset=tiny", "--print-config")
    assert rc == 2
    line = one_error_line(err)
    assert line.startswith("error: train.model:") and "replaced by the run's model" in line
    for override, field in (("generate.seed=3", "generate.seed"), ("train.losses.landmark=7", "train.losses.landmark"),
                            ("evaluate.output_dir=/tmp/x", "evaluate.output_dir"), ("tune.space=tiny", "tune.space"),
                            ("train.resume=/x/c.safetensors", "train.resume"),
                            # the sweep trains with the run's own train section: tune.train is refused as a whole
                            ("tune.train.seed=2", "tune.train")):
        rc, err = run_cli(capsys, "run", "--set", override, "--print-config")
        assert rc == 2 and one_error_line(err).startswith(f"error: {field}:"), (override, err)
    rc, _ = run_cli(capsys, "run", "--preset", "tiny", "--set", "seed=3", "--set", "train.iterations=7", "--print-config")
    assert rc == 0   # run-level settings and the sections' own settings stay allowed


@pytest.mark.parametrize("n", ["0", "-3"])
def test_preview_refuses_a_face_count_below_one(tmp_path, capsys, n):
    """Was a traceback from deep inside the sampler (or an empty sheet)."""
    rc, err = run_cli(capsys, "preview", "--preset", "tiny", "--n", n, "--out", str(tmp_path / "f.png"))
    assert rc == 2 and f"--n: {n} faces" in one_error_line(err)
    assert not (tmp_path / "f.png").exists()


def test_preview_refuses_an_output_folder_or_a_path_under_a_file(tmp_path, capsys):
    """Was an IsADirectoryError / NotADirectoryError traceback after the networks ran."""
    rc, err = run_cli(capsys, "preview", "--preset", "tiny", "--out", str(tmp_path))
    assert rc == 2 and "--out:" in one_error_line(err) and "is a folder" in err
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    rc, err = run_cli(capsys, "preview", "--preset", "tiny", "--out", str(blocker / "faces.png"))
    assert rc == 2 and "--out:" in one_error_line(err) and "is not a directory" in err
    rc, err = run_cli(capsys, "preview", "--preset", "tiny", "--out", str(tmp_path / "faces.notanimage"))
    assert rc == 2 and "no image extension" in one_error_line(err)


def test_preview_writes_a_sheet_for_good_input(tmp_path, capsys):
    out = tmp_path / "sub" / "faces.png"
    rc, _ = run_cli(capsys, "preview", "--preset", "tiny", "--n", "2", "--out", str(out))
    assert rc == 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
