"""CSV-described sources (folder, ham10000): malformed tables fail naming the file and the row."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.test_data_sources import check_batch, make_folder, make_ham, module


def _rewrite(path: Path, edit) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


def test_duplicate_files_are_refused_naming_the_rows(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "folder", count=12, labels=["nv", "mel"])
    table = pd.read_csv(root / "captions.csv")
    table.loc[9, "file"] = "./" + table.loc[2, "file"]  # the same image under another spelling
    table.to_csv(root / "captions.csv", index=False)
    with pytest.raises(ValueError, match=r"img_002\.png.*rows 4, 11.*two splits"):
        module(tmp_path, source="folder", root=str(root)).setup()
    ham = make_ham(tmp_path / "ham")
    metadata = pd.read_csv(ham / "HAM10000_metadata.csv")
    pd.concat([metadata, metadata.iloc[[0]]]).to_csv(ham / "HAM10000_metadata.csv", index=False)
    with pytest.raises(ValueError, match=rf"image_id '{metadata.image_id[0]}' in rows 2, {len(metadata) + 2}"):
        module(tmp_path, source="ham10000", root=str(ham)).setup()


def test_empty_labels_are_refused_naming_the_rows(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "folder", count=12, labels=["nv", "mel"])
    table = pd.read_csv(root / "captions.csv")
    table.loc[[3, 7], "label"] = ""  # used to become a class ''
    table.to_csv(root / "captions.csv", index=False)
    with pytest.raises(ValueError, match=r"row\(s\) 5, 9 have no 'label'"):
        module(tmp_path, source="folder", root=str(root)).setup()


def test_header_only_csv(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "folder", count=3)
    (root / "captions.csv").write_text("file,caption,label\n")
    with pytest.raises(ValueError, match=r"captions\.csv has a header but no rows"):  # was: cannot convert float NaN to integer
        module(tmp_path, source="folder", root=str(root)).setup()
    (root / "captions.csv").write_text("")
    with pytest.raises(ValueError, match=r"captions\.csv is empty"):
        module(tmp_path, source="folder", root=str(root)).setup()


def test_latin1_bytes_name_the_file_and_row(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "folder", count=12)
    data = (root / "captions.csv").read_bytes().replace(b"number 4", "numéro 4".encode("latin-1"))
    (root / "captions.csv").write_bytes(data)
    with pytest.raises(ValueError, match=r"captions\.csv is not UTF-8 text: byte 0xe9 at offset \d+ \(row 6\)"):
        module(tmp_path, source="folder", root=str(root)).setup()


def test_unquoted_comma_names_the_row_and_the_fix(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "folder", count=12, labels=["nv", "mel"])
    _rewrite(root / "captions.csv", lambda lines: [*lines[:4], "img_003.png,a lesion, irregular border,nv", *lines[5:]])
    with pytest.raises(ValueError, match=r"row 5 has 4 fields where the header has 3 \(file, caption, label\); quote"):
        module(tmp_path, source="folder", root=str(root)).setup()  # was: "N file(s) do not exist"
    _rewrite(root / "captions.csv", lambda lines: [*lines[:4], 'img_003.png,"a lesion, irregular border",nv', *lines[5:]])
    dm = module(tmp_path, source="folder", root=str(root))
    check_batch(dm)
    captions = dm.train_set.captions + dm.val_set.captions + dm.test_set.captions
    assert "a lesion, irregular border" in captions
