"""The CLI: bad input is one clear line on stderr, exit status 2, nothing written."""

import pytest

from trtq.cli import main


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("trtq: error: ")
    return lines[0]


def test_recipes_lists_builtins_and_baselines(capsys):
    code, out, _ = run(["recipes"], capsys)
    assert code == 0
    for name in ("w8a8-minmax", "w8a8-percentile", "modelopt-int8"):
        assert name in out


def test_eval_unknown_recipe(tmp_path, capsys):
    j = tmp_path / "m.json"
    code, _, err = run(["eval", "--model", "digits-unet", "--recipe", "w3a3-magic", "--json", str(j)], capsys)
    assert code == 2 and "unknown recipe 'w3a3-magic'" in one_error_line(err)
    assert not j.exists()


def test_eval_unknown_model(tmp_path, capsys):
    j = tmp_path / "m.json"
    code, _, err = run(["eval", "--model", "sd-xxl", "--recipe", "w8a8-minmax", "--json", str(j)], capsys)
    assert code == 2 and "digits-unet" in one_error_line(err)
    assert not j.exists()


def test_eval_bad_sample_count(capsys):
    code, _, err = run(["eval", "--model", "digits-unet", "--recipe", "w8a8-minmax", "--samples", "1"], capsys)
    assert code == 2 and "--samples" in one_error_line(err)


def test_eval_artifact_that_is_not_one(tmp_path, capsys):
    code, _, err = run(["eval", "--model", "digits-unet", "--artifact", str(tmp_path)], capsys)
    assert code == 2 and "not a trtq artifact" in one_error_line(err)


def test_eval_recipe_and_artifact_are_exclusive(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--model", "digits-unet", "--recipe", "w8a8-minmax", "--artifact", str(tmp_path)])
    assert e.value.code == 2


def test_quantize_refuses_to_overwrite_a_foreign_directory(tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep")
    code, _, err = run(["quantize", "--model", "digits-unet", "--recipe", "w8a8-minmax", "--out", str(tmp_path)],
                       capsys)
    assert code == 2 and "refusing to overwrite" in one_error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]


def test_quantize_refuses_outside_baselines(tmp_path, capsys):
    code, _, err = run(["quantize", "--model", "digits-unet", "--recipe", "modelopt-int8", "--out",
                        str(tmp_path / "a")], capsys)
    assert code == 2 and "outside baseline" in one_error_line(err)
    assert not (tmp_path / "a").exists()


def test_recipe_file_with_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nrules:\n  - weight: {format: int8, granularity: group, axis: 1}\n")
    code, _, err = run(["quantize", "--model", "digits-unet", "--recipe", str(bad), "--out", str(tmp_path / "a")],
                       capsys)
    assert code == 2 and "group_size" in one_error_line(err)
    assert not (tmp_path / "a").exists()


def test_quantize_then_eval_the_artifact(tmp_path, capsys):
    """The whole CLI path on a trained zoo model, kept tiny: quantize -> artifact -> eval --artifact -> JSON."""
    import json

    art, j = tmp_path / "art", tmp_path / "m.json"
    code, out, err = run(["quantize", "--model", "digits-dit", "--recipe", "w8a8-minmax", "--out", str(art),
                          "--steps", "2", "--calib-samples", "2"], capsys)
    assert code == 0, err
    assert (art / "manifest.json").is_file()
    code, out, err = run(["eval", "--model", "digits-dit", "--artifact", str(art), "--samples", "10", "--steps", "2",
                          "--json", str(j), "--quiet"], capsys)
    assert code == 0, err
    metrics = json.loads(j.read_text())
    assert metrics["recipe"] == "w8a8-minmax" and metrics["model"] == "digits-dit"
    assert 0 <= metrics["accuracy"] <= 1 and metrics["fid"] > 0 and 0 < metrics["ssim"] <= 1
    assert metrics["psnr_db"] is None or metrics["psnr_db"] > 10


def test_artifact_of_one_zoo_model_is_refused_by_the_other(tmp_path, capsys):
    art = tmp_path / "art"
    assert run(["quantize", "--model", "digits-dit", "--recipe", "w8a8-minmax", "--out", str(art),
                "--steps", "1", "--calib-samples", "1"], capsys)[0] == 0
    code, _, err = run(["eval", "--model", "digits-unet", "--artifact", str(art), "--samples", "4"], capsys)
    assert code == 2 and "made for model 'digits-dit'" in one_error_line(err)
