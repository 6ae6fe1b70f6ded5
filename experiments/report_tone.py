"""The per-skin-tone section of the report: per run and tone group, n, FID, conditioning and tone-following.

Groups are Fitzpatrick types on data that records them (the phantom) and ITA groups read from the
healthy skin elsewhere (``datamodules.tone``); metrics.json ``per_skin_tone`` holds the figures
(``evaluation.groups``, ``evaluation.tone_following``). A group without real images and without
tone prompts is left out.
"""

from __future__ import annotations

from typing import Any

DASH = "—"


def _interval(value: Any, interval: Any, digits: int) -> str:
    if not isinstance(value, (int, float)):
        return DASH
    bracket = f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]" if interval else ""
    return f"{value:.{digits}f}{bracket}"


def _number(value: Any, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else DASH


def tone_lines(runs: list[dict[str, Any]]) -> list[str]:
    """Markdown lines of the per-tone table (empty when no run has ``per_skin_tone``)."""
    rows = []
    for run in runs:
        block = run["metrics"].get("per_skin_tone")
        if not isinstance(block, dict) or not isinstance(block.get("groups"), dict):
            continue
        m = run["metrics"]
        name = f"{m.get('exp')}{' (' + run['variant'] + ')' if run.get('variant') else ''} seed {m.get('seed')}"
        scale = block.get("scale", "fitzpatrick")
        for group, entry in block["groups"].items():
            following = entry.get("tone_following") or {}
            if not entry.get("n") and not following.get("n"):
                continue
            rows.append(
                f"| {name} | {group} ({scale}) | {entry.get('n')} | {entry.get('num_generated')} | {_number(entry.get('fid'), 2)} | "
                f"{_number(entry.get('cond_accuracy'), 3)} | "
                f"{_interval(following.get('accuracy'), following.get('accuracy_interval'), 2)} ({following.get('n', 0)}) | "
                f"{_number(following.get('chance'), 2)} | {_interval(following.get('ita_mae'), following.get('ita_mae_interval'), 1)} | "
                f"{_interval(following.get('judge_accuracy'), following.get('judge_accuracy_interval'), 2)} |"
            )
    if not rows:
        return []
    return [
        "## Per skin tone", "",
        "Per tone group: real images of the evaluation split (n real), generated images of the main set prompted with (or, "
        "unconditional, read as) that tone, the FID within the group (— under 100 images on either side), the conditioning "
        "accuracy of the visual heads, and on the tone-balanced prompts the tone-following accuracy (the sample's ITA group is "
        "the prompting image's; 95 % Wilson interval, n prompts) beside a tone-blind generator's (chance), the mean |ITA "
        "error| in degrees, and on Fitzpatrick data the judge's reading of the type. See docs/skin_tone.md for what the "
        "groups can carry.", "",
        "| run | tone group | n real | n generated | FID | cond. acc. | tone-following acc. (n) | chance | ITA error (°) | judge acc. |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
