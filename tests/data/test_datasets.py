"""Case discovery for every layout (placeholder files in tmp_path, and the real data) and k-fold splits."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from volseg.data import Case, find_cases, holdout_split, load_folds, make_folds, save_folds, split_for_fold
from volseg.errors import ConfigError, InputFileError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def real(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data not found at {path} (it lives in ../shared/data beside the checkout)")
    return path


def touch(root: Path, *names: str) -> None:
    """Empty files: discovery goes by names only."""
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def msd(root: Path, ids: list[str], modality: dict | None = None, **extra: object) -> Path:
    training = [{"image": f"./imagesTr/{i}.nii.gz", "label": f"./labelsTr/{i}.nii.gz"} for i in ids]
    write_json(
        root / "dataset.json",
        {
            "modality": modality or {"0": "MRI"},
            "training": training,
            "labels": {"0": "background", "1": "Anterior"},
            **extra,
        },
    )
    touch(root, *(f"imagesTr/{i}.nii.gz" for i in ids), *(f"labelsTr/{i}.nii.gz" for i in ids))
    return root


def nnunet(root: Path, ids: list[str], n: int = 2, ending: str = ".nii.gz") -> Path:
    write_json(
        root / "dataset.json",
        {
            "channel_names": {str(c): name for c, name in zip(range(n), ["T2", "ADC", "T1"])},
            "labels": {"background": 0, "peripheral": 1, "transition": 2, "whole": [1, 2]},
            "numTraining": len(ids),
            "file_ending": ending,
        },
    )
    touch(
        root, *(f"imagesTr/{i}_{c:04d}{ending}" for i in ids for c in range(n)), *(f"labelsTr/{i}{ending}" for i in ids)
    )
    return root


def brats(root: Path, ids: list[str], new: bool = False, seg: bool = True, ext: str = ".nii.gz") -> Path:
    sep, kinds = ("-", ["t1n", "t1c", "t2w", "t2f"]) if new else ("_", ["t1", "t1ce", "t2", "flair"])
    for i in ids:
        touch(root, *(f"{i}/{i}{sep}{k}{ext}" for k in kinds + (["seg"] if seg else [])))
    return root


def error(root: Path, **kwargs: object) -> str:
    with pytest.raises(InputFileError) as info:
        find_cases(root, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- MSD


def test_msd_cases_channels_labels_and_test_list(tmp_path, caplog):
    msd(tmp_path, ["la_3", "la_1", "la_2"], {"0": "FLAIR", "1": "T1w"}, test=["./imagesTs/la_9.nii.gz"])
    touch(tmp_path, "imagesTs/la_9.nii.gz", "imagesTr/._la_1.nii.gz", "labelsTr/._la_1.nii.gz")
    with caplog.at_level(logging.INFO, logger="volseg.data.datasets"):
        ds = find_cases(tmp_path)
    assert "detected layout msd" in caplog.text
    assert (ds.layout, ds.case_ids, ds.num_channels, ds.modality) == ("msd", ["la_1", "la_2", "la_3"], 2, "MRI")
    assert ds.channel_names == ["FLAIR", "T1w"] and ds.label_names == {0: "background", 1: "Anterior"}
    assert ds.cases[0] == Case("la_1", (tmp_path / "imagesTr/la_1.nii.gz",), tmp_path / "labelsTr/la_1.nii.gz")
    assert [(c.case_id, c.label) for c in ds.test_cases] == [("la_9", None)]
    assert ds.case("la_9").images == (tmp_path / "imagesTs/la_9.nii.gz",)
    with pytest.raises(ConfigError, match="did you mean 'la_1'"):
        ds.case("la_1x")


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("modality", "expected"),
    [
        ({"0": "CT"}, "CT"),
        ({"0": "MRI"}, "MRI"),
        ({"0": "T2", "1": "ADC"}, "MRI"),
        ({"0": "PET"}, "PET"),
        ({"0": "CT", "1": "PET"}, None),
    ],
)
def test_msd_modality(tmp_path, modality, expected):
    assert find_cases(msd(tmp_path, ["a"], modality)).modality == expected


def test_msd_missing_files_and_orphan_labels_are_all_reported(tmp_path):
    msd(tmp_path, ["ok", "noimg", "nolabel"])
    (tmp_path / "imagesTr/noimg.nii.gz").unlink()
    (tmp_path / "labelsTr/nolabel.nii.gz").unlink()
    touch(tmp_path, "labelsTr/orphan.nii.gz")
    message = error(tmp_path)
    assert "3 problem(s) in 3 case(s)" in message
    assert "noimg: image ./imagesTr/noimg.nii.gz listed in dataset.json does not exist" in message
    assert "nolabel: label ./labelsTr/nolabel.nii.gz" in message and "orphan: label labelsTr/orphan" in message


def test_msd_entry_with_one_file_per_channel(tmp_path):
    write_json(
        tmp_path / "dataset.json",
        {
            "modality": {"0": "T2", "1": "ADC"},
            "training": [
                {"image": ["imagesTr/p_t2.nii.gz", "imagesTr/p_adc.nii.gz"], "label": "labelsTr/p.nii.gz"},
                {"image": ["imagesTr/q_t2.nii.gz"] * 3, "label": "labelsTr/q.nii.gz"},
            ],
        },
    )
    touch(
        tmp_path,
        "imagesTr/p_t2.nii.gz",
        "imagesTr/p_adc.nii.gz",
        "imagesTr/q_t2.nii.gz",
        "labelsTr/p.nii.gz",
        "labelsTr/q.nii.gz",
    )
    assert "q_t2: 3 image files listed for 2 channels" in error(tmp_path)
    write_json(
        tmp_path / "dataset.json",
        {
            "modality": {"0": "T2", "1": "ADC"},
            "training": [{"image": ["imagesTr/p_t2.nii.gz", "imagesTr/p_adc.nii.gz"], "label": "labelsTr/p.nii.gz"}],
        },
    )
    assert "q: label labelsTr/q.nii.gz has no image" in error(tmp_path)  # no longer listed
    (tmp_path / "labelsTr/q.nii.gz").unlink()
    images = find_cases(tmp_path).cases[0].images
    assert images == (tmp_path / "imagesTr/p_t2.nii.gz", tmp_path / "imagesTr/p_adc.nii.gz")


def test_msd_duplicate_ids_and_empty_training(tmp_path):
    message = error(msd(tmp_path / "dup", ["a", "b", "a"]))
    assert "a: case id found 2 times" in message and "b:" not in message
    assert "no cases found" in error(msd(tmp_path / "empty", []))


def test_bad_dataset_json_is_named(tmp_path):
    (tmp_path / "dataset.json").write_text("{not json")
    assert "dataset.json" in error(tmp_path)
    write_json(tmp_path / "dataset.json", {"name": "x"})
    assert "neither 'channel_names' (nnunet) nor 'training' (msd)" in error(tmp_path)


# --------------------------------------------------------------------------- nnU-Net


def test_nnunet_groups_channels_in_order_with_regions(tmp_path):
    nnunet(tmp_path, ["pro_2", "pro_1"])
    touch(tmp_path, "imagesTs/pro_7_0001.nii.gz", "imagesTs/pro_7_0000.nii.gz", "imagesTr/._pro_1_0000.nii.gz")
    ds = find_cases(tmp_path)
    assert (ds.layout, ds.case_ids, ds.modality) == ("nnunet", ["pro_1", "pro_2"], "MRI")
    assert ds.channel_names == ["T2", "ADC"] and ds.num_channels == 2
    assert [p.name for p in ds.cases[0].images] == ["pro_1_0000.nii.gz", "pro_1_0001.nii.gz"]
    assert ds.cases[0].label == tmp_path / "labelsTr/pro_1.nii.gz"
    assert ds.label_names == {0: "background", 1: "peripheral", 2: "transition"} and ds.regions == {"whole": (1, 2)}
    assert [p.name for p in ds.test_cases[0].images] == ["pro_7_0000.nii.gz", "pro_7_0001.nii.gz"]


def test_nnunet_other_file_ending(tmp_path):
    ds = find_cases(nnunet(tmp_path, ["c1"], n=1, ending=".mha"))
    assert ds.file_ending == ".mha" and ds.cases[0].images == (tmp_path / "imagesTr/c1_0000.mha",)


def test_nnunet_problems_name_the_cases(tmp_path):
    nnunet(tmp_path, ["full", "half", "unlabelled"])
    (tmp_path / "imagesTr/half_0001.nii.gz").unlink()
    (tmp_path / "labelsTr/unlabelled.nii.gz").unlink()
    touch(tmp_path, "labelsTr/ghost.nii.gz", "imagesTr/badname.nii.gz")
    message = error(tmp_path)
    assert "4 problem(s) in 4 case(s)" in message
    assert "half: missing channel file(s) half_0001 in imagesTr/ (2 channels expected)" in message
    assert "unlabelled: no label" in message and "ghost: label labelsTr/ghost.nii.gz has no image" in message
    assert "badname: imagesTr/badname.nii.gz is not named <case>_<XXXX>" in message


# --------------------------------------------------------------------------- BraTS


def test_brats2021_channel_order_labels_and_unlabelled_folders(tmp_path):
    brats(tmp_path, ["B_2"])
    brats(tmp_path, ["B_1"], ext=".nii")
    brats(tmp_path, ["B_9"], seg=False)
    ds = find_cases(tmp_path)
    assert (ds.layout, ds.case_ids, ds.modality, ds.file_ending) == ("brats2021", ["B_1", "B_2"], "MRI", ".nii.gz")
    assert ds.channel_names == ["flair", "t1", "t1ce", "t2"]
    assert [p.name for p in ds.cases[0].images] == ["B_1_flair.nii", "B_1_t1.nii", "B_1_t1ce.nii", "B_1_t2.nii"]
    assert ds.cases[0].label.name == "B_1_seg.nii"
    assert ds.label_names == {0: "background", 1: "necrotic/non-enhancing core", 2: "edema", 4: "enhancing tumour"}
    assert [c.case_id for c in ds.test_cases] == ["B_9"]


def test_brats2018_hgg_lgg_subfolders(tmp_path):
    brats(tmp_path / "HGG", ["Brats18_H_1"])
    brats(tmp_path / "LGG", ["Brats18_L_1"])
    assert find_cases(tmp_path).case_ids == ["Brats18_H_1", "Brats18_L_1"]


def test_brats2023_maps_to_the_2021_channel_order(tmp_path):
    ds = find_cases(brats(tmp_path, ["BraTS-GLI-00001-000", "BraTS-GLI-00000-000"], new=True))
    assert ds.layout == "brats2023" and ds.case_ids == ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]
    assert ds.channel_names == ["t2f", "t1n", "t1c", "t2w"]
    assert [p.name for p in ds.cases[0].images] == [f"BraTS-GLI-00000-000-{k}.nii.gz" for k in ds.channel_names]
    assert ds.label_names == {0: "background", 1: "necrotic core", 2: "edema", 3: "enhancing tumour"}


def test_brats_missing_channel_and_duplicate_file(tmp_path):
    brats(tmp_path, ["ok", "short", "twice"])
    (tmp_path / "short/short_t1ce.nii.gz").unlink()
    touch(tmp_path, "twice/twice_t2.nii")
    message = error(tmp_path)
    assert "short: missing channel file(s) t1ce" in message
    assert "twice: 2 t2 files" in message and "ok:" not in message


def test_brats_mixed_conventions(tmp_path):
    brats(tmp_path, ["Old_1", "Old_2"])
    brats(tmp_path, ["BraTS-GLI-1"], new=True)
    message = error(tmp_path)
    assert "BraTS-GLI-1: uses brats2023 file names" in message and "mixed conventions" in message
    brats(tmp_path, ["BraTS-GLI-2", "BraTS-GLI-3"], new=True)
    message = error(tmp_path)
    assert "Old_1: uses brats2021 file names" in message and "BraTS-GLI-1:" not in message


def test_many_problems_list_ten_case_ids_and_the_count(tmp_path):
    brats(tmp_path, [f"C_{i:02d}" for i in range(15)])
    for i in range(15):
        (tmp_path / f"C_{i:02d}/C_{i:02d}_t1.nii.gz").unlink()
    message = error(tmp_path)
    assert message.count("missing channel file(s) t1") == 10
    assert "15 problem(s) in 15 case(s)" in message and "and 5 more" in message and "C_14" not in message


# --------------------------------------------------------------------------- plain folders


@pytest.mark.parametrize(
    ("image", "label"),
    [
        ("ct.nii.gz", "ct.nii.gz"),
        ("ct.nii", "ct_seg.nii.gz"),
        ("ct.nii.gz", "ct_label.nii"),
        ("ct.mha", "ct_labels.mha"),
        ("ct.nrrd", "ct_mask.nrrd"),
        ("ct.mhd", "ct_gt.mhd"),
        ("sub-1_ct.nii.gz", "sub-1_ct_seg-manual.nii.gz"),
        ("ct.nii.gz", "ct-seg.nii.gz"),
        ("ct.nrrd", "ct.seg.nrrd"),
        ("ct.nii.gz", "ct.Segmentation.nii.gz"),
    ],
)
def test_folder_pairs_label_by_stem(tmp_path, image, label):
    touch(tmp_path, f"images/{image}", f"labels/{label}", "images/notes.txt", "images/.DS_Store")
    ds = find_cases(tmp_path)
    assert ds.layout == "folder" and ds.num_channels == 1 and ds.label_names == {0: "background"}
    assert ds.cases == [Case(ds.cases[0].case_id, (tmp_path / "images" / image,), tmp_path / "labels" / label)]


def test_folder_unlabelled_images_and_images_ts_are_test_cases(tmp_path):
    touch(tmp_path, "imagesTr/a.nii.gz", "imagesTr/b.nii.gz", "labelsTr/a_seg.nii.gz", "imagesTs/z.nii")
    ds = find_cases(tmp_path)
    assert ds.case_ids == ["a"] and [c.case_id for c in ds.test_cases] == ["b", "z"]
    assert all(c.label is None for c in ds.test_cases)


def test_folder_groups_channel_suffixes(tmp_path):
    touch(tmp_path, *(f"images/{c}_{i:04d}.nii.gz" for c in "ab" for i in (1, 0)), "labels/a.nii.gz", "labels/b.nii.gz")
    ds = find_cases(tmp_path)
    assert ds.case_ids == ["a", "b"] and ds.num_channels == 2
    assert [p.name for p in ds.case("b").images] == ["b_0000.nii.gz", "b_0001.nii.gz"]


def test_folder_numbered_ids_are_not_taken_for_channels(tmp_path):
    touch(
        tmp_path,
        *(f"images/case_{i:04d}.nii.gz" for i in range(3)),
        *(f"labels/case_{i:04d}_seg.nii.gz" for i in range(3)),
    )
    ds = find_cases(tmp_path)
    assert ds.case_ids == ["case_0000", "case_0001", "case_0002"] and ds.num_channels == 1


def test_folder_problems(tmp_path):
    touch(
        tmp_path,
        "images/a.nii",
        "images/a.nii.gz",
        "images/b.nii.gz",
        "labels/b.nii.gz",
        "labels/b_mask.nii.gz",
        "labels/nobody_seg.nii.gz",
    )
    message = error(tmp_path)
    assert "a: 2 image files named a.*" in message and "b: 2 labels match it" in message
    assert "nobody_seg: label labels/nobody_seg.nii.gz matches no image in images/" in message


# --------------------------------------------------------------------------- detection


def test_undetectable_and_missing_roots(tmp_path):
    touch(tmp_path, "scan.nii.gz", "notes/readme.txt")
    message = error(tmp_path)
    assert "looked for dataset.json (msd, nnunet)" in message and "brats2021, brats2023" in message
    assert "found 1 folder(s) and 1 file(s): notes/, scan.nii.gz" in message
    assert "does not exist" in error(tmp_path / "nowhere")
    assert "is not a folder" in error(tmp_path / "scan.nii.gz")


def test_forced_layouts(tmp_path):
    brats(tmp_path / "b", ["B_1"])
    msd(tmp_path / "m", ["a"])
    assert "is not a msd dataset: no dataset.json" in error(tmp_path / "b", layout="msd")
    message = error(tmp_path / "b", layout="brats2023")
    assert "not a brats2023 dataset: no case folders holding <case>/<case>-t2f" in message
    assert "not a nnunet dataset: dataset.json has no 'channel_names'" in error(tmp_path / "m", layout="nnunet")
    assert find_cases(tmp_path / "m", layout="folder").case_ids == ["a"]
    with pytest.raises(ConfigError, match="did you mean 'nnunet'"):
        find_cases(tmp_path / "m", layout="nnUnet")


# --------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_hippocampus():
    ds = find_cases(real("msd-hippocampus"))
    assert (ds.layout, len(ds.cases), ds.num_channels) == ("msd", 208, 1)
    assert ds.label_names == {0: "background", 1: "Anterior", 2: "Posterior"}
    assert all(c.label.is_file() and c.images[0].name == c.label.name for c in ds.cases)


@pytest.mark.realdata
def test_real_brats2018():
    ds = find_cases(real("brats2018"))
    assert (ds.layout, len(ds.cases), ds.channel_names) == ("brats2021", 16, ["flair", "t1", "t1ce", "t2"])
    for case in ds.cases:
        assert [p.name for p in case.images] == [f"{case.case_id}_{k}.nii.gz" for k in ds.channel_names]
        assert case.label.name == f"{case.case_id}_seg.nii.gz"


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("name", "pairs"),
    [
        ("spleen-ct-crop", {"sub-spleen2_ct.nii.gz": "sub-spleen2_ct_seg-manual.nii.gz"}),
        (
            "brain-mri-tiny",
            {
                "anatomical.nii": "anatomical_label.nii.gz",
                "reoriented_anat_moved.nii": "reoriented_anat_moved_label.nii.gz",
            },
        ),
    ],
)
def test_real_plain_folders(name, pairs):
    ds = find_cases(real(name))
    assert ds.layout == "folder" and not ds.test_cases
    assert {c.images[0].name: c.label.name for c in ds.cases} == pairs


# --------------------------------------------------------------------------- splits


IDS = [f"case_{i:03d}" for i in range(23)]


def test_folds_are_deterministic_disjoint_and_cover_all_ids():
    folds = make_folds(IDS, k=5)
    assert folds == make_folds(list(reversed(IDS)), k=5) and folds != make_folds(IDS, k=5, seed=1)
    vals = [set(f["val"]) for f in folds]
    assert sorted(len(v) for v in vals) == [4, 4, 5, 5, 5]
    assert set().union(*vals) == set(IDS) and sum(map(len, vals)) == len(IDS)
    for fold in folds:
        assert sorted(fold["train"] + fold["val"]) == IDS and fold["train"] == sorted(fold["train"])


@settings(max_examples=40, deadline=None)
@given(st.sets(st.text(min_size=1, max_size=6), min_size=2, max_size=40), st.integers(2, 10), st.integers(0, 99))
def test_folds_property(ids, k, seed):
    k = min(k, len(ids))
    folds = make_folds(ids, k, seed=seed)
    assert sorted(c for f in folds for c in f["val"]) == sorted(ids)
    assert all(not set(f["train"]) & set(f["val"]) and f["val"] for f in folds)


@pytest.mark.parametrize("k", [1, 24, 2.5, True])
def test_bad_k(k):
    with pytest.raises(ConfigError, match="from 2 to the number of cases"):
        make_folds(IDS, k=k)


def test_duplicate_ids_are_refused():
    with pytest.raises(ConfigError, match="duplicate case ids: a"):
        make_folds(["a", "b", "a"], k=2)


def test_save_load_round_trip_and_split_for_fold(tmp_path):
    folds = make_folds(IDS, k=3)
    path = tmp_path / "out" / "splits_final.json"
    save_folds(folds, path)
    save_folds(folds, path)  # overwrites in place
    assert load_folds(path) == folds and [p.name for p in path.parent.iterdir()] == ["splits_final.json"]
    assert split_for_fold(folds, 2) == (folds[2]["train"], folds[2]["val"])
    for bad in (3, -1, "0"):
        with pytest.raises(ConfigError, match="allowed: 0 to 2"):
            split_for_fold(folds, bad)
    with pytest.raises(ConfigError, match="in both train and val"):
        save_folds([{"train": ["a"], "val": ["a"]}], tmp_path / "bad.json")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{nope", "cannot read folds file"),
        ('{"train": []}', "non-empty list"),
        ('[{"train": ["a"], "val": []}]', "fold 0 is not"),
        ('[{"train": ["a"], "val": ["b"]}, {"train": ["c"], "val": ["b"]}]', "'b' is in val more than once"),
    ],
)
def test_load_bad_folds_file(tmp_path, text, match):
    path = tmp_path / "splits.json"
    path.write_text(text)
    with pytest.raises(InputFileError, match=match) as info:
        load_folds(path)
    assert str(path) in str(info.value)
    with pytest.raises(InputFileError, match="cannot read folds file"):
        load_folds(tmp_path / "missing.json")


def test_holdout_split():
    split = holdout_split(IDS, 0.2)
    assert split == holdout_split(IDS[::-1], 0.2) and len(split["val"]) == 5
    assert sorted(split["train"] + split["val"]) == IDS and not set(split["train"]) & set(split["val"])
    assert len(holdout_split(["a", "b"], 0.01)["val"]) == 1
    for bad in (0, 1, 1.5):
        with pytest.raises(ConfigError, match="between 0 and 1"):
            holdout_split(IDS, bad)
