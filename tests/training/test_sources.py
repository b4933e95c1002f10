"""Label lists and split files as people write them: BOMs, split spellings, identities, frame budgets.

A row read wrongly mislabels data silently (a ``Validation`` row would be in no split ``training.data``
selects), so every bad row must be refused with its line number rather than passed through.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.sources import Source, discover, from_ffpp, from_label_list


def write_list(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8-sig"))  # what spreadsheet programs export
    return path


def test_bom_list_with_split_spellings_identity_and_frames(tmp_path: Path) -> None:
    labels = write_list(
        tmp_path / "list.csv",
        (
            "Label,Path,Split,Identity,Frames\n"
            "fake,videos/a.mp4, Validation ,alice,64\n"
            "real,videos/b.mp4,TRAINING,,\n"
            "1,/abs/c.jpg,dev,bob,\n"
            "0,videos/d.mp4,,carol,8\n"
        ),
    )
    assert discover(labels) == [
        Source(tmp_path / "videos" / "a.mp4", 1, "val", "alice", 64),
        Source(tmp_path / "videos" / "b.mp4", 0, "train", "b", None),
        Source(Path("/abs/c.jpg"), 1, "val", "bob", None),
        Source(tmp_path / "videos" / "d.mp4", 0, "train", "carol", 8),
    ]


def test_minimal_list_keeps_its_defaults(tmp_path: Path) -> None:
    labels = write_list(tmp_path / "list.csv", "label,path,frames\nreal,x.mp4,\nfake,y.mp4,12\n")
    assert from_label_list(labels) == [
        Source(tmp_path / "x.mp4", 0, "train", "x"),
        Source(tmp_path / "y.mp4", 1, "train", "y", 12),
    ]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("real,a.mp4,holdout,", r"line 3: unknown split 'holdout'"),
        ("real,a.mp4,train,many", r"line 3: frames must be a whole number, not 'many'"),
        ("real,a.mp4,train,0", r"line 3: frames must be positive"),
        ("genuine,a.mp4,train,", r"line 3: unknown label 'genuine'"),
        ("real,,train,", r"line 3: empty path"),
    ],
)
def test_bad_rows_are_refused_with_their_line(tmp_path: Path, row: str, message: str) -> None:
    labels = write_list(tmp_path / "list.csv", f"label,path,split,frames\nfake,ok.mp4,test,\n{row}\n")
    with pytest.raises(ValueError, match=message):
        from_label_list(labels)


def test_missing_column_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no path column"):
        from_label_list(write_list(tmp_path / "list.csv", "label,file\nreal,a.mp4\n"))


def test_a_file_listed_twice_differently_is_refused(tmp_path: Path) -> None:
    same = write_list(tmp_path / "same.csv", "label,path\nreal,a.mp4\nreal,./a.mp4\n")
    assert len(from_label_list(same)) == 1
    clash = write_list(tmp_path / "clash.csv", "label,path,split\nreal,a.mp4,train\nreal,./a.mp4,test\n")
    with pytest.raises(ValueError, match="line 3: .*already listed differently on line 2"):
        from_label_list(clash)


def test_ffpp_id_in_two_split_files_is_refused(tmp_path: Path) -> None:
    videos = tmp_path / "ffpp" / "original_sequences" / "youtube" / "c23" / "videos"
    videos.mkdir(parents=True)
    (videos / "000.mp4").write_bytes(b"")
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "train.json").write_text(json.dumps([["000", "003"]]))
    (splits / "val.json").write_text(json.dumps([["001", "002"]]))
    assert from_ffpp(tmp_path / "ffpp", splits) == [Source(videos / "000.mp4", 0, "train", "000")]
    (splits / "test.json").write_text(json.dumps([["003", "004"]]))
    with pytest.raises(ValueError, match="003 is in both train.json and test.json"):
        from_ffpp(tmp_path / "ffpp", splits)
