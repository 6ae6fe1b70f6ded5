"""Skin tone: the ITA reading (formula, lesion masks, field stop, hair, confidence), the phantom's order, tone as data
(folder columns, captions, sampling, conditioning) and the tone-following figures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr

from datamodules.captions import parse_caption
from datamodules.info import DataInfo
from datamodules.sources.phantom import draw
from datamodules.sources.phantom_render import render
from datamodules.tone import MIN_SKIN_FRACTION, ToneTable, ita_from_lab, read_tone, tone_group
from evaluation.tone_following import following_figures
from models.conditioners import ConditionEmbedding, prompt_conditions
from tests.test_data_sources import make_ham, module

SKIN = (214, 160, 130)  # a light-brown skin colour (sRGB)


def hand_lab(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    """CIELAB (D65, 2 degrees) of one sRGB colour, from the textbook formulas (IEC 61966-2-1, CIE 1976)."""
    linear = [((c / 255 + 0.055) / 1.055) ** 2.4 if c / 255 > 0.04045 else c / 255 / 12.92 for c in rgb]
    r, g, b = linear
    x = (0.412453 * r + 0.357580 * g + 0.180423 * b) / 0.950456
    y = 0.212671 * r + 0.715160 * g + 0.072169 * b
    z = (0.019334 * r + 0.119193 * g + 0.950227 * b) / 1.088754
    f = [t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116 for t in (x, y, z)]
    return 116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])


def patch(colour: tuple[int, int, int] = SKIN, size: int = 32) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.uint8), (size, size, 3)).copy()


def disc(size: int, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    return xx**2 + yy**2 <= radius**2


def test_ita_of_a_flat_patch_matches_the_hand_computed_value() -> None:
    lightness, _, b_star = hand_lab(SKIN)
    expected = math.degrees(math.atan((lightness - 50) / b_star))
    reading = read_tone(patch())
    assert reading.ita == pytest.approx(expected, abs=0.05) and reading.confident and reading.spread == pytest.approx(0, abs=1e-6)
    assert float(ita_from_lab(60.0, 10.0)) == pytest.approx(45.0)  # arctan(10 / 10)
    assert reading.group == int(tone_group(expected))


def test_ita_matches_derm_ita_on_a_flat_patch() -> None:
    derm_ita = pytest.importorskip("derm_ita", reason="derm-ita is a reference only (pip install --no-deps derm-ita patchify)")
    image = patch(size=64)
    assert read_tone(image).ita == pytest.approx(derm_ita.get_ita(Image.fromarray(image)), abs=0.05)


def test_tone_groups_follow_the_kinyanjui_edges() -> None:
    values = np.array([56.0, 55.0, 41.5, 41.0, 28.0, 27.9, 10.0, -29.9, -30.0, -60.0, np.nan])
    assert tone_group(values).tolist() == [1, 2, 2, 3, 4, 4, 5, 5, 6, 6, 0]


@pytest.mark.parametrize("paint", [(0, 0, 0), (255, 255, 255), (0, 0, 255), (255, 0, 0)])
def test_lesion_pixels_under_a_mask_are_never_counted(paint: tuple[int, int, int]) -> None:
    image, lesion = patch(size=48), disc(48, 12)
    baseline = read_tone(image, lesion)
    image[lesion] = paint  # an extreme lesion colour, lighter or darker than the skin
    reading = read_tone(image, lesion)
    assert reading.lesion_from == "mask" and reading.ita == pytest.approx(baseline.ita, abs=1e-9)
    assert reading.ita == pytest.approx(read_tone(patch()).ita, abs=1e-9)


def test_without_a_mask_a_dark_lesion_hair_and_the_field_stop_are_left_out() -> None:
    size = 64
    image = patch(size=size)
    image[disc(size, 14)] = (60, 35, 25)  # a pigmented lesion
    image[10, :] = (20, 15, 10)  # a hair across the field
    image[~disc(size, 36)] = (4, 4, 4)  # the dark corners of the lens's field stop
    reading = read_tone(image)
    assert reading.lesion_from == "otsu" and reading.confident
    assert reading.ita == pytest.approx(read_tone(patch()).ita, abs=0.5)


def test_too_little_skin_is_not_confident() -> None:
    size = 40
    image, lesion = patch(size=size), ~disc(size, 0)
    lesion[:2, :2] = False  # 4 skin pixels of 1600
    reading = read_tone(image, lesion)
    assert reading.skin_fraction < MIN_SKIN_FRACTION and not reading.confident and reading.group == 0


def test_the_reading_orders_the_phantom_skin_types() -> None:
    types, readings = [], []
    for index in range(120):
        _, attributes, tone, spec, rng = draw(0, "val", index)
        readings.append(read_tone(render(spec, tone, bool(attributes["hair"]), 32, rng)).ita)
        types.append(tone)
    rho = spearmanr(types, -np.array(readings))[0]
    assert rho >= 0.85, rho
    medians = [np.median([r for r, t in zip(readings, types) if t == k]) for k in range(3, 7)]
    assert medians == sorted(medians, reverse=True)  # types III-VI darker in turn (I and II: see docs/skin_tone.md)


def make_toned_folder(root: Path) -> Path:
    """A folder data set with its own ita and fitzpatrick columns on some rows; skin-coloured patches."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(40):
        Image.fromarray(patch(size=24)).save(root / f"img_{index}.png")
        given = -45.0 if index % 4 == 0 else 20.0 if index % 4 == 1 else ""
        rows.append({"file": f"img_{index}.png", "caption": f"skin {index}", "label": index % 2,
                     "ita": given, "fitzpatrick": ["II", "5", "", "VI"][index % 4]})
    pd.DataFrame(rows).to_csv(root / "captions.csv", index=False)
    return root


def test_a_folder_data_sets_own_tone_columns_win(tmp_path: Path) -> None:
    dm = module(tmp_path, source="folder", root=str(make_toned_folder(tmp_path / "toned")), val_fraction=0.25, test_fraction=0.25)
    dm.setup()
    estimate = read_tone(patch(size=16)).ita
    for table in dm.table.splits.values():
        given = np.array([int(i.split("_")[1].split(".")[0]) % 4 for i in table.image_ids])
        assert np.allclose(table.ita[given == 0], -45.0) and (table.tone_group[given == 0] == 6).all()
        assert np.allclose(table.ita[given == 1], 20.0) and (table.tone_group[given == 1] == 4).all()
        assert np.allclose(table.ita[given >= 2], estimate, atol=0.5)  # no column value: read from the pixels
        assert table.skin_tone.tolist() == [[2, 5, 0, 6][g] for g in given]
    assert dm.info.skin_tones and dm.info.tone_field == "skin_tone"  # a Fitzpatrick column is the data's tone


def test_a_bad_tone_column_names_the_row(tmp_path: Path) -> None:
    root = make_toned_folder(tmp_path / "toned")
    table = pd.read_csv(root / "captions.csv", keep_default_na=False)
    table.loc[3, "fitzpatrick"] = "VII"
    table.to_csv(root / "captions.csv", index=False)
    with pytest.raises(ValueError, match=r"row 5 has fitzpatrick 'VII'"):
        module(tmp_path, source="folder", root=str(root)).setup()
    table.loc[3, "fitzpatrick"] = "2"
    table.loc[6, "ita"] = "pale"
    table.to_csv(root / "captions.csv", index=False)
    with pytest.raises(ValueError, match=r"row 8 has ita 'pale'"):
        module(tmp_path, source="folder", root=str(root)).setup()


def test_the_sampler_balances_tone_groups(tmp_path: Path) -> None:
    root = tmp_path / "skewed"
    root.mkdir()
    groups = [1] * 60 + [4] * 12 + [6] * 8  # very light, tan, dark
    rows = [{"file": f"img_{index}.png", "caption": "skin", "ita": {1: 70.0, 4: 20.0, 6: -50.0}[group], "split": "train"}
            for index, group in enumerate(groups)]
    rows += [{"file": f"{split}.png", "caption": "skin", "ita": 70.0, "split": split} for split in ("val", "test")]
    for row in rows:
        Image.fromarray(patch(size=16)).save(root / row["file"])
    pd.DataFrame(rows).to_csv(root / "captions.csv", index=False)
    natural = module(tmp_path, source="folder", root=str(root), batch_size=8)
    balanced = module(tmp_path, source="folder", root=str(root), batch_size=8, sampler="balanced", sampler_key="tone")
    shares = {}
    for name, dm in (("natural", natural), ("balanced", balanced)):
        dm.setup()
        tones = torch.cat([batch["tone_group"] for batch in dm.train_dataloader()])
        shares[name] = {g: float((tones == g).float().mean()) for g in (1, 4, 6)}
    assert shares["natural"][1] == pytest.approx(0.75, abs=0.05)
    assert all(share == pytest.approx(1 / 3, abs=0.05) for share in shares["balanced"].values()), shares


def test_the_tone_sampler_needs_known_tones(tmp_path: Path) -> None:
    root = tmp_path / "black"
    root.mkdir()
    for index in range(12):
        Image.fromarray(patch((0, 0, 0), size=16)).save(root / f"img_{index}.png")  # all field stop: no skin to read
    pd.DataFrame({"file": [f"img_{i}.png" for i in range(12)], "caption": "nothing"}).to_csv(root / "captions.csv", index=False)
    dm = module(tmp_path, source="folder", root=str(root), sampler="balanced", sampler_key="tone")
    dm.setup()
    assert np.isnan(dm.table.splits["train"].ita).all() and not dm.table.splits["train"].tone_group.any()
    with pytest.raises(ValueError, match="sampler_key=tone: no training image"):
        dm.train_dataloader()
    with pytest.raises(ValueError, match="sampler_key must be one of label, tone"):
        module(tmp_path, source="folder", root=str(root), sampler_key="colour")


def test_captions_name_a_confident_tone_group_and_parse_back(tmp_path: Path) -> None:
    dm = module(tmp_path, source="ham10000", root=str(make_ham(tmp_path / "ham")))
    dm.setup()
    info = dm.info
    assert info.tone_groups and info.tone_field == "tone_group"
    caption = dm.caption_for(5, {}, tone_group=5, seed=1)
    assert "brown skin" in caption and parse_caption(caption, info)["tone_group"] == 5
    assert parse_caption("a melanoma on very light skin", info)["tone_group"] == 1
    assert "tone_group" not in parse_caption("a nevus with dark brown pigment", info)  # pigment words are no tone
    assert "brown" not in dm.caption_for(5, {}, tone_group=0, seed=1)
    fitzpatrick = DataInfo("folder", 16, ("nv",), skin_tones=True, tone_groups=True)
    from datamodules.sources.metadata_captions import metadata_caption

    both = metadata_caption(fitzpatrick, 0, {}, skin_tone=5, tone_group=2, seed=0)
    assert "Fitzpatrick skin type V" in both and "light skin" not in both  # a recorded type wins over the reading
    for table in dm.table.splits.values():
        for text, group in zip(table.captions, table.tone_group):
            assert parse_caption(text, info).get("tone_group", 0) == group


def test_label_conditioning_embeds_the_ita_group_where_no_type_is_recorded() -> None:
    ham = DataInfo("ham10000", 16, ("nv", "mel"), tone_groups=True)
    embedding = ConditionEmbedding(ham, 8)
    conditions = prompt_conditions(["a melanoma on tan skin", "a melanoma"], ham)
    assert conditions["tone_group"].tolist() == [4, 0]
    index = embedding.indices(conditions, 2, "cpu")
    assert index["skin_tone"].tolist() == [3, 6]  # tan -> row 3; unknown -> the "unknown" row
    assert "skin_tone" not in ConditionEmbedding(DataInfo("ham10000", 16, ("nv",)), 8).sizes  # an older checkpoint's info


def test_tone_following_against_chance_and_a_perfect_generator() -> None:
    rng = np.random.default_rng(0)
    prompted = np.repeat(np.arange(1, 7), 40)
    centre = np.array([70, 48, 34, 19, -10, -50.0])
    target_ita = centre[prompted - 1]
    real_groups = np.repeat(np.arange(1, 7), 10)

    def table(ita: np.ndarray) -> ToneTable:
        count = len(ita)
        return ToneTable(ita, np.zeros(count), np.ones(count), np.ones(count, bool), np.array(["otsu"] * count))

    perfect = following_figures(prompted, prompted, target_ita, table(target_ita + rng.normal(0, 1, 240)), real_groups, real_groups,
                                ("a", "b", "c", "d", "e", "f"), 0.95, 200)
    assert perfect["accuracy"] == 1.0 and perfect["ita_mae"] < 1.5 and perfect["per_group"]["f"]["real_agreement"] == 1.0
    blind = following_figures(prompted, prompted, target_ita, table(rng.permutation(target_ita)), real_groups, real_groups,
                              ("a", "b", "c", "d", "e", "f"), 0.95, 200)
    assert blind["accuracy"] == pytest.approx(1 / 6, abs=0.08) and blind["per_group"]["a"]["chance"] == pytest.approx(1 / 6)
    low, high = blind["accuracy_interval"]
    assert low < blind["accuracy"] < high and blind["ita_mae"] > 20


def test_downstream_recall_per_diagnosis_within_each_tone_group() -> None:
    from evaluation.downstream_tones import recall_by_tone

    labels = np.array([0, 0, 1, 1, 0, 1, 1, 0])
    tones = np.array([1, 1, 1, 1, 6, 6, 6, 0])
    predicted = np.array([0, 0, 1, 0, 1, 1, 1, 1])  # right on light skin but one, wrong on the dark-skin nevus
    result = recall_by_tone(predicted, labels, tones, ("nv", "mel"), ("very light", "light", "intermediate", "tan", "brown", "dark"))
    assert result["very light"]["per_class"]["mel"]["recall"] == 0.5 and result["very light"]["per_class"]["nv"]["recall"] == 1.0
    assert result["dark"]["per_class"]["nv"]["recall"] == 0.0 and result["dark"]["per_class"]["mel"]["recall"] == 1.0
    assert result["dark"]["balanced_accuracy"] == 0.5 and result["dark"]["n"] == 3 and result["unknown_tone"] == 1
    low, high = result["dark"]["per_class"]["mel"]["recall_interval"]
    assert low < 1.0 == high  # two images: a wide Wilson interval
    assert result["tan"]["per_class"]["nv"]["recall"] is None and result["tan"]["balanced_accuracy"] is None
    names = ("very light", "light", "intermediate", "tan", "brown", "dark")
    assert recall_by_tone(np.eye(2)[predicted], labels, tones, ("nv", "mel"), names) == result  # probabilities or classes


def test_tone_groups_leave_the_judge_and_the_fingerprint_of_the_data_alone() -> None:
    from evaluation.judge import JUDGE_SETTINGS, judge_key

    class Split:
        image_ids = ["a", "b"]

    before, after = DataInfo("ham10000", 32, ("nv", "mel")), DataInfo("ham10000", 32, ("nv", "mel"), tone_groups=True)
    settings = dict.fromkeys(JUDGE_SETTINGS, 1)
    assert judge_key(before, Split(), settings) == judge_key(after, Split(), settings)  # runs before and after share a judge
    assert DataInfo.from_dict(after.to_dict()).tone_groups and not DataInfo.from_dict(before.to_dict()).tone_groups


HAM_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ham10000"


def test_the_tone_bench_validates_the_reading(tmp_path: Path) -> None:
    from experiments.bench import SUITES

    options = {"budget": "smoke", "phantom_num_val": "60", "resamples": "50", "grid": str(tmp_path / "extremes.png"),
               "num_extremes": "4", "overrides": f"paths.cache_dir={tmp_path / 'cache'}"}
    if HAM_ROOT.is_dir():
        options.update(ham_root=str(HAM_ROOT), ham_image_size="32",
                       overrides=options["overrides"] + " data.num_train=30 data.num_val=40 data.num_test=30")
    results = SUITES["tone"](options)
    phantom = results["tone.phantom"]
    assert phantom["n"] == 60 and phantom["spearman"] > 0.8 and phantom["spearman_interval"][0] <= phantom["spearman"]
    low, high = phantom["bin_accuracy_interval"]
    assert low <= phantom["bin_accuracy"] <= high and sum(e["n"] for e in phantom["per_type"].values()) == 60
    if not HAM_ROOT.is_dir():
        pytest.skip(f"HAM10000 is not at {HAM_ROOT}: the phantom part ran, the real-data part did not")
    ham = results["tone.ham10000"]
    assert sum(ham["counts"]["val"].values()) == ham["n"] == 40 and Path(ham["grid"]).is_file()
    assert ham["mask_vs_otsu"]["spearman"] > 0.5 and ham["size_vs_native"]["group_agreement"] > 0.5
