"""Score a reader's responses against the study's answer key (experiments.export_reader_study).

    python -m experiments.score_reader_study key=DIR-answer-key/answers.csv responses=DIR/responses.csv
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from evaluation.reader_study import score_responses
from experiments.command import command


@command("score_reader_study")
def main(cfg: DictConfig) -> None:
    scores = score_responses(Path(cfg.key), Path(cfg.responses))
    out = Path(cfg.out) if cfg.out else Path(cfg.responses).with_name("scores.json")
    out.write_text(json.dumps(scores, indent=2))
    print(json.dumps(scores))


if __name__ == "__main__":
    main()
