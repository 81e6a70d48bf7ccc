"""`python -m ctdemo explain`: PNGs per file, one JSON list, exit codes, nothing overwritten."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ctdemo import cli
from ctdemo.models.cards import ModelCard, preprocessing_spec

from conftest import ROOT, make_image_folder

pytestmark = pytest.mark.slow
KEYS = {"file", "predicted_class", "method", "lung_share", "lung_area", "faithfulness"}


def saved_model(folder: Path, kind: str) -> Path:
    """A tiny untrained CNN or MLP saved with its card (explaining needs no training)."""
    import keras

    from ctdemo.models.architectures import build_model
    from ctdemo.models.saving import save_model
    from ctdemo.models.specs import Architecture

    keras.utils.set_random_seed(3)
    model = (
        build_model(Architecture("cnn", 24, 0.0, filters=(4,), hidden_units=(8,)), 2)
        if kind == "cnn"
        else build_model(Architecture("mlp", 24, 0.0, hidden_units=(8,)), 2)
    )
    card = ModelCard(f"tiny-{kind}", ["COVID", "non-COVID"], "COVID", preprocessing_spec(24), {})
    path = folder / f"{kind}.keras"
    save_model(model, card, path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("explain")
    data = make_image_folder(base / "data", per_class=2, size=40)
    slices = sorted(str(path) for path in data.rglob("*.png"))
    return saved_model(base, "cnn"), saved_model(base, "mlp"), slices


def test_json_gives_one_record_per_file_and_the_pngs(setup, tmp_path, capsys):
    model, _, slices = setup
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    files = [*slices[:2], str(broken)]
    code = cli.main(["explain", "--model", str(model), *files, "--out", str(tmp_path / "o")])
    assert code == 1
    code = cli.main(
        ["explain", "--model", str(model), *files, "--out", str(tmp_path / "j"), "--json"]
    )
    output = capsys.readouterr()
    assert code == 1
    records = json.loads(output.out.splitlines()[-1])
    assert [record["file"] for record in records] == files
    for record in records[:2]:
        assert set(record) == KEYS and record["method"] == "gradcam"
        assert 0 <= record["lung_share"] <= 1 and 0 < record["lung_area"] < 1
        assert record["predicted_class"] in ("COVID", "non-COVID")
    assert set(records[2]) == {"file", "error"} and "not an image" in records[2]["error"]
    assert output.err.strip().splitlines()[-1] == "error: 1 of 3 files could not be explained"
    for stem in (Path(slices[0]).stem, Path(slices[1]).stem):
        heatmap = Image.open(tmp_path / "j" / f"{stem}.heatmap.png")
        assert heatmap.mode == "I;16" and heatmap.size == (40, 40)
        assert (tmp_path / "j" / f"{stem}.overlay.png").is_file()
    assert not list((tmp_path / "j").glob("broken.*"))


def test_an_existing_output_is_kept_unless_overwrite(setup, tmp_path, capsys):
    model, _, slices = setup
    args = ["explain", "--model", str(model), slices[0], "--out", str(tmp_path)]
    target = tmp_path / f"{Path(slices[0]).stem}.heatmap.png"
    target.write_bytes(b"mine")
    assert cli.main(args) == 1
    assert target.read_bytes() == b"mine"
    assert "already exist" in capsys.readouterr().out
    assert cli.main([*args, "--overwrite"]) == 0
    assert np.asarray(Image.open(target)).dtype == np.uint16
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{slices[0]}: ") and "heat inside the lungs" in line


def test_a_method_the_model_lacks_is_one_error_line(setup, tmp_path, capsys):
    _, mlp, slices = setup
    code = cli.main(["explain", "--model", str(mlp), slices[0], "--out", str(tmp_path)])
    assert code == 0, "an MLP is explained with saliency by default"
    capsys.readouterr()
    args = ["explain", "--model", str(mlp), slices[0], "--out", str(tmp_path), "--overwrite"]
    assert cli.main([*args, "--method", "gradcam"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: This model offers saliency, not gradcam")
    assert len(error.splitlines()) == 1
    with pytest.raises(SystemExit) as usage:
        cli.main([*args, "--method", "no-such-method"])
    assert usage.value.code == 2
    assert capsys.readouterr().err.startswith("error: argument --method: invalid choice")


def test_from_a_shell_the_json_is_strict_and_stderr_one_line(setup, tmp_path):
    model, _, slices = setup
    out = tmp_path / "maps"
    command = [sys.executable, "-m", "ctdemo", "explain", "--model", str(model)]
    result = subprocess.run(
        [*command, *slices, str(tmp_path / "missing.png"), "--out", str(out), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == ["error: 1 of 5 files could not be explained"]
    records = json.loads(result.stdout, parse_constant=pytest.fail)  # NaN or Infinity fails
    assert [set(record) for record in records[:4]] == [KEYS] * 4
    assert "No such file" in records[4]["error"]
    assert len(list(out.glob("*.heatmap.png"))) == 4
