"""docs/notebook.md runs as written: its Python blocks, in order, against a checkpoint trained here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from experiments.run import run
from tests.helpers import compose_config, smoke_overrides

PAGE = Path(__file__).resolve().parents[1] / "docs" / "notebook.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("exp", ["hybrid", "ddpm"])
def test_the_notebook_page_runs(exp: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run(compose_config(*smoke_overrides(tmp_path / "run", exp, "trainer.max_steps=2")))
    blocks = python_blocks(PAGE.read_text())
    assert len(blocks) >= 4 and "CKPT = Path(" in blocks[0]
    blocks[0] = re.sub(r'CKPT = Path\(".*?"\)', f'CKPT = Path("{tmp_path / "run" / "checkpoints" / "last.ckpt"}")', blocks[0])
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(PAGE), "exec"), namespace)  # noqa: S102 - the page's own code
    for name in ("prompted.png", "real.png", "like_validation.png"):
        assert (tmp_path / "notebook_out" / name).stat().st_size > 100
    assert namespace["samples"].shape[-1] == namespace["batch"]["image"].shape[-1]
