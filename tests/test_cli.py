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


# ------------------------------------------------------------------------------------------------------------
# Every failure a user can cause: exit 2, one stderr line, nothing written, nothing existing destroyed.
# The argument lists are checked before any model is loaded, so these run in milliseconds.
def snapshot(root):
    """Every path under root with its bytes (files) or None (dirs): 'nothing written, nothing destroyed'."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def refused(argv, tmp_path, capsys, expect: str):
    before = snapshot(tmp_path)
    code, out, err = run(argv, capsys)
    assert code == 2, (code, err)
    line = one_error_line(err)
    assert expect in line, line
    assert snapshot(tmp_path) == before
    return line


def write(path, text):
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text,expect", [
    ("name: x\nrules: [{types: 5, weight: {format: int8}}]\n", "rules[0].types: expected"),
    ("name: x\nrules: [{weight: {format: int8}, input: {format: int8, dynamic: 'false'}}]\n",
     "rules[0].input.dynamic: expected true or false, got the string 'false'"),
    ("name: x\nkeep_float: 5\nrules: [{weight: {format: int8}}]\n", "keep_float: expected"),
    ("name: x\nrules: [{weight: {format: [int8]}}]\n", "rules[0].weight.format: expected"),
    ("[" * 100_000, "nests deeper"),
    ("name: x\nrules:\n  - weight: {format: int8\n", "is not valid YAML"),
    ("name: [a, b]\nrules: [{weight: {format: int8}}]\n", "name: expected a non-empty string, got a list"),
])
def test_bad_recipe_files_are_one_line(tmp_path, capsys, text, expect):
    recipe = write(tmp_path / "r.yaml", text)
    refused(["quantize", "--model", "digits-dit", "--recipe", recipe, "--out", str(tmp_path / "a")],
            tmp_path, capsys, expect)


def test_quantize_out_under_a_regular_file(tmp_path, capsys):
    (tmp_path / "f").write_text("keep")
    refused(["quantize", "--model", "digits-dit", "--recipe", "w8a8-minmax", "--out", str(tmp_path / "f" / "a")],
            tmp_path, capsys, "is a file, so nothing can be created under it")


def test_quantize_out_unwritable(tmp_path, capsys):
    # /proc refuses every mkdir, for root too (chmod would not stop root)
    refused(["quantize", "--model", "digits-dit", "--recipe", "w8a8-minmax", "--out", "/proc/trtq-test/a"],
            tmp_path, capsys, "cannot write in /proc")


def test_quantize_out_is_an_existing_regular_file(tmp_path, capsys):
    (tmp_path / "f").write_text("keep")
    refused(["quantize", "--model", "digits-dit", "--recipe", "w8a8-minmax", "--out", str(tmp_path / "f")],
            tmp_path, capsys, "is not a directory")


def test_eval_artifact_is_a_regular_file(tmp_path, capsys):
    (tmp_path / "f").write_text("{}")
    refused(["eval", "--model", "digits-dit", "--artifact", str(tmp_path / "f"), "--samples", "4"],
            tmp_path, capsys, "is a file, not an artifact directory")


def test_eval_absurd_sample_count(tmp_path, capsys):
    refused(["eval", "--model", "digits-dit", "--recipe", "w8a8-minmax", "--samples", str(10**12)],
            tmp_path, capsys, "--samples must be in [2, 100000]")


def test_eval_json_under_a_regular_file(tmp_path, capsys):
    (tmp_path / "f").write_text("keep")
    refused(["eval", "--model", "digits-dit", "--recipe", "w8a8-minmax", "--samples", "4",
             "--json", str(tmp_path / "f" / "m.json")], tmp_path, capsys, "is a file")


def test_eval_json_is_a_directory(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    refused(["eval", "--model", "digits-dit", "--recipe", "w8a8-minmax", "--json", str(tmp_path / "d")],
            tmp_path, capsys, "is not a regular file")


def test_eval_bogus_device(tmp_path, capsys):
    refused(["eval", "--model", "digits-dit", "--recipe", "w8a8-minmax", "--device", "bogus"],
            tmp_path, capsys, "--device 'bogus': expected cpu, cuda or cuda:N")


@pytest.mark.parametrize("meta,expect", [("{", "is not valid JSON"), ("[1,2]", "expected a model metadata mapping"),
                                         ('{"kind": "vae"}', "kind: expected one of"),
                                         ('{"kind": "dit", "sample_size": "32"}', "sample_size: expected")])
def test_eval_model_folder_with_broken_metadata(tmp_path, capsys, meta, expect):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "trtq_model.json").write_text(meta)
    refused(["eval", "--model", str(tmp_path / "model"), "--recipe", "w8a8-minmax", "--samples", "4"],
            tmp_path, capsys, expect)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the CPU refusal")
def test_eval_cuda_only_baseline_on_cpu(tmp_path, capsys):
    refused(["eval", "--model", "digits-dit", "--recipe", "modelopt-nvfp4", "--samples", "4"],
            tmp_path, capsys, "runs only on a CUDA GPU")


def test_demo_out_is_a_regular_file(tmp_path, capsys):
    (tmp_path / "f").write_text("keep")
    refused(["demo", "--out", str(tmp_path / "f")], tmp_path, capsys, "is not a directory")


@pytest.mark.parametrize("n", ["0", "1"])
def test_demo_too_few_samples_creates_nothing(tmp_path, capsys, n):
    refused(["demo", "--out", str(tmp_path / "demo"), "--samples", n], tmp_path, capsys, "--samples must be in")
    assert not (tmp_path / "demo").exists()


def test_quantize_recipe_name_must_be_a_string(tmp_path, capsys):
    recipe = write(tmp_path / "r.json", '{"name": ["a", "b"], "rules": [{"weight": {"format": "int8"}}]}')
    refused(["quantize", "--model", "digits-dit", "--recipe", recipe, "--out", str(tmp_path / "a")],
            tmp_path, capsys, "name: expected a non-empty string")


def test_usage_errors_are_one_line_too(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--model", "digits-dit", "--samples", "many"])
    assert e.value.code == 2
    one_error_line(capsys.readouterr().err)


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    argv = ["eval", "--model", "digits-dit", "--recipe", "w8a8-minmax", "--device", "bogus"]
    assert main(["--debug", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("trtq: error: --device")
    monkeypatch.setenv("TRTQ_DEBUG", "1")
    assert main(argv) == 2
    assert "Traceback" in capsys.readouterr().err
