"""experiments.generate as a command: its output folder, its prompts and its conditioning arguments."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.command import command_line
from experiments.compose import compose_config
from experiments.generate import generate
from tests.helpers import untrained_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ckpts")
    return {exp: untrained_checkpoint(folder / f"{exp}.ckpt", exp, "model.sampler.steps=2") for exp in ("ddpm", "ddpm_class")}


def _generate(*args: str) -> list[dict]:
    return generate(compose_config("generate", command_line(["progress=false", *args], verbatim=("prompt",))))


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


# ---- the output folder ----------------------------------------------------------------------------


def test_a_folder_with_other_files_is_left_alone(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    data = tmp_path / "training_data"
    data.mkdir()
    (data / "captions.csv").write_text("file,caption\n" + "".join(f"{i}.png,a lesion\n" for i in range(70)))
    (data / "00000.png").write_bytes(b"a user's image")
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    for extra in ([], ["overwrite=true"]):
        with pytest.raises(ValueError, match="not empty|did not write"):
            _generate(f"ckpt={checkpoints['ddpm']}", f"out={data}", "num_images=2", *extra)
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before  # captions.csv keeps its 70 rows


def test_overwrite_replaces_only_an_earlier_generate_set(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "set"
    _generate(f"ckpt={checkpoints['ddpm']}", f"out={out}", "num_images=5", "grid=true")
    manifest = json.loads((out / "generate.json").read_text())
    assert manifest["complete"] and {"00004.png", "metadata.csv", "captions.csv", "grid.png"} <= set(manifest["files"])
    with pytest.raises(ValueError, match="not empty.*overwrite=true"):
        _generate(f"ckpt={checkpoints['ddpm']}", f"out={out}", "num_images=2")
    with pytest.raises(FileNotFoundError):
        _generate(f"ckpt={out / 'missing.ckpt'}", f"out={out}", "num_images=2", "overwrite=true")
    assert len(list(out.glob("0*.png"))) == 5 and (out / "grid.png").is_file()  # the old set is cleared only once the new one can be made
    _generate(f"ckpt={checkpoints['ddpm']}", f"out={out}", "num_images=2", "overwrite=true")
    assert sorted(p.name for p in out.glob("*.png")) == ["00000.png", "00001.png"]  # no stale images for evaluate fake=DIR
    assert len(_rows(out / "captions.csv")) == 2
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt.*nothing was deleted"):
        _generate(f"ckpt={checkpoints['ddpm']}", f"out={out}", "num_images=2", "overwrite=true")
    assert (out / "notes.txt").read_text() == "mine" and (out / "00001.png").is_file()


# ---- prompts reach the model as typed -------------------------------------------------------------

TRICKY_PROMPTS = [
    "malignant lesion #2 with hair", "diagnosis: malignant", "benign lesion, irregular border", "[a, b]", "no",
    "true", "42", "null", "it's ${oc.env:HOME} (50%)", "naevus on Fitzpatrick type Ⅴ skin; \\ end",
]


@pytest.mark.parametrize("prompt", TRICKY_PROMPTS)
def test_prompts_compose_exactly_as_typed(prompt: str) -> None:
    cfg = compose_config("generate", command_line(["ckpt=x", "out=y", f"prompt={prompt}"], verbatim=("prompt",)))
    assert cfg.prompt == prompt and isinstance(cfg.prompt, str)
    quoted = compose_config("generate", command_line(["ckpt=x", "out=y", "prompt='a, b'"], verbatim=("prompt",)))
    assert quoted.prompt == "a, b"  # quoted for Hydra by the user: Hydra's quoting applies


def test_prompt_reaches_the_model_from_the_command_line(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    prompt = "malignant lesion #2 with hair, diagnosis: [a, b]"
    result = subprocess.run(
        [sys.executable, "-m", "experiments.generate", f"ckpt={checkpoints['ddpm_class']}", f"out={tmp_path / 'out'}",
         f"prompt={prompt}", "num_images=2", "progress=false"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "WANDB_MODE": "disabled"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["caption"] for r in _rows(tmp_path / "out" / "captions.csv")] == [prompt, prompt]
    assert {r["label"] for r in _rows(tmp_path / "out" / "captions.csv")} == {"malignant"}  # parsed from the whole text


def test_unreadable_value_says_how_to_quote() -> None:
    result = subprocess.run([sys.executable, "-m", "experiments.generate", "ckpt=x", "out=my set #2"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "\"out='my set #2'\"" in result.stderr


# ---- conditioning arguments -----------------------------------------------------------------------


@pytest.mark.parametrize("argument", ["prompt=a benign lesion", "reference=ref.png", "guidance_scale=2", "balanced=true"])
def test_an_unconditional_model_rejects_conditioning(checkpoints: dict[str, Path], tmp_path: Path, argument: str) -> None:
    with pytest.raises(ValueError, match=f"unconditional .* cannot use {argument.split('=')[0]}"):
        _generate(f"ckpt={checkpoints['ddpm']}", f"out={tmp_path / 'out'}", argument)  # were silently ignored
    assert not (tmp_path / "out").exists()


def test_a_label_model_rejects_a_reference(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reference= feeds the hybrid's visual branch"):
        _generate(f"ckpt={checkpoints['ddpm_class']}", f"out={tmp_path / 'out'}", "prompt=a benign lesion", "reference=ref.png")


def test_unknown_vocabulary_warns_and_is_recorded(checkpoints: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a psoriasis plaque on Fitzpatrick type VII skin\na benign lesion on Fitzpatrick type II skin\n")
    with caplog.at_level(logging.WARNING, logger="experiments.generate"):
        _generate(f"ckpt={checkpoints['ddpm_class']}", f"out={tmp_path / 'out'}", f"prompts={prompts}", "num_images=2")
    recorded = json.loads((tmp_path / "out" / "generate.json").read_text())["unrecognised_prompts"]
    assert list(recorded) == ["a psoriasis plaque on Fitzpatrick type VII skin"]
    assert any("no diagnosis" in p for p in recorded["a psoriasis plaque on Fitzpatrick type VII skin"])
    assert any("skin type" in p for p in recorded["a psoriasis plaque on Fitzpatrick type VII skin"])
    assert "psoriasis" in caplog.text and "benign lesion on" not in caplog.text
    assert [r["label"] for r in _rows(tmp_path / "out" / "captions.csv")] == ["", "benign"]


@pytest.mark.parametrize("count", ["0", "-1"])
def test_no_images_is_refused(checkpoints: dict[str, Path], tmp_path: Path, count: str) -> None:
    with pytest.raises(ValueError, match=f"num_images={count}: must be a positive integer"):
        _generate(f"ckpt={checkpoints['ddpm']}", f"out={tmp_path / 'out'}", f"num_images={count}")
    assert not (tmp_path / "out").exists()  # used to write header-only CSVs
