"""DICOM-SEG outputs: each frame sits on its source slice and holds exactly the labels there, for
oblique, reversed and tilted series and for a NIfTI made from a series; refusals come before any
prediction. The model writes its input's values as labels, so each source slice's own pixels
are the expected segmentation (an independent check of the frame-to-slice mapping)."""

from __future__ import annotations

import shutil
import sys

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from clinical_support import HIPPOCAMPUS_LABELS, value_predictor
from dicom_support import rotation

from volseg.checkpoint import build_checkpoint, save_checkpoint
from volseg.cli import main
from volseg.config import config_from_dict
from volseg.data.label_space import LabelSpace
from volseg.errors import ConfigError
from volseg.inference.label_outputs import segments_of
from volseg.inference.output_formats import check_formats
from volseg.inference.segment import OutputOptions, segment
from volseg.io import read_volume
from volseg.io.dicom_seg import read_source_series, write_dicom_seg
from volseg.nn import create_model

UID = "1.2.826.0.1.3680043.2.1125.77"
DICOM_SEG = OutputOptions(formats=("dicom-seg",), model_name="test-model")


REVERSED = rotation(2, 15.0) @ np.diag([1.0, 1.0, -1.0])  # slices stored against the normal
DIRECTIONS = {"oblique": None, "reversed": REVERSED, "tilted": rotation(2, 15.0) @ rotation(0, 25.0)}


def labelled_series(folder, write_dicom_series, direction=None):
    """A 6-slice series whose pixels are label values 0/1/2 (slice 0 empty)."""
    rng = np.random.default_rng(3)
    pixels = rng.choice([0, 0, 1, 2], size=(6, 11, 9)).astype(np.int16)  # z, rows, columns
    pixels[0] = 0
    write_dicom_series(folder, pixels, f"{UID}.{len(str(folder))}", direction=direction)
    return folder


def check_frames_sit_on_their_source_slices(seg_path, series, values):
    """Every frame equals its source slice's pixels == its segment's value; every non-empty
    (slice, segment) pair has its frame; the frame's position is the slice's."""
    seg = hd.seg.segread(seg_path)
    sources = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(p) for p in sorted(series.iterdir()))}
    seen = set()
    for frame, item in zip(seg.pixel_array, seg.PerFrameFunctionalGroupsSequence):
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        source = sources[uid]
        assert np.array_equal(frame.astype(bool), source.pixel_array == values[number])
        position = item.PlanePositionSequence[0].ImagePositionPatient
        assert np.allclose([float(v) for v in position], [float(v) for v in source.ImagePositionPatient])
        seen.add((uid, number))
    expected = {(uid, n) for uid, ds in sources.items() for n, v in values.items() if (ds.pixel_array == v).any()}
    assert seen == expected and len(expected) > 5
    return seg


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_dicom_seg_of_a_dicom_series_has_every_segment_on_its_source_slices(tmp_path, write_dicom_series, name):
    series = labelled_series(tmp_path / "series", write_dicom_series, DIRECTIONS[name])
    (outcome,) = segment(value_predictor(), series, tmp_path / "out", DICOM_SEG)
    labels = read_volume(outcome.labels_path)
    assert np.array_equal(labels.array, read_volume(series).array)  # the NIfTI: the same labels
    seg = check_frames_sit_on_their_source_slices(tmp_path / "out" / "series.dcm", series, {1: 1, 2: 2})
    first, second = seg.SegmentSequence
    assert (first.SegmentLabel, second.SegmentLabel) == ("Anterior", "Posterior")
    assert first.SegmentedPropertyTypeCodeSequence[0].CodeValue == "5366008"  # SNOMED CT Hippocampus
    assert first.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning == "Anatomical Structure"
    algorithm = first.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmParameters) == ("volseg", "model=test-model")
    assert seg.SegmentationType == "BINARY"
    assert seg.SeriesInstanceUID != pydicom.dcmread(next(series.iterdir())).SeriesInstanceUID


def test_one_file_of_a_series_as_input_gets_the_dicom_seg_of_its_series(tmp_path, write_dicom_series):
    series = labelled_series(tmp_path / "series", write_dicom_series, REVERSED)
    (outcome,) = segment(value_predictor(), series / "slice003.dcm", tmp_path / "out", DICOM_SEG)
    assert outcome.labels_path.name == "slice003.nii.gz"
    check_frames_sit_on_their_source_slices(tmp_path / "out" / "slice003.dcm", series, {1: 1, 2: 2})


def test_a_localizer_in_the_source_series_is_left_out_of_the_dicom_seg(tmp_path, write_dicom_series):
    clean = labelled_series(tmp_path / "clean", write_dicom_series)
    series = tmp_path / "series"
    shutil.copytree(clean, series)
    scout = tmp_path / "scout"  # one image of the same series, turned sideways: a localizer
    write_dicom_series(scout, np.ones((1, 11, 11), np.int16), pydicom.dcmread(clean / "slice000.dcm").SeriesInstanceUID,
                       direction=np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]))  # fmt: skip
    (scout / "slice000.dcm").rename(series / "scout.dcm")
    (outcome,) = segment(value_predictor(), series, tmp_path / "out", DICOM_SEG)
    assert np.array_equal(read_volume(outcome.labels_path).array, read_volume(clean).array)
    check_frames_sit_on_their_source_slices(tmp_path / "out" / "series.dcm", clean, {1: 1, 2: 2})


def test_display_colours_are_the_label_colours_in_cielab(tmp_path, write_dicom_series):
    series = labelled_series(tmp_path / "series", write_dicom_series)
    segment(value_predictor(), series, tmp_path / "out", DICOM_SEG)
    seg = hd.seg.segread(tmp_path / "out" / "series.dcm")
    for item, expected in zip(seg.SegmentSequence, [(230, 159, 0), (86, 180, 233)]):
        assert item.RecommendedDisplayCIELabValue == list(hd.color.CIELabColor.from_rgb(*expected).value)


def test_a_nifti_made_from_the_series_gets_its_dicom_seg_with_reference_dicom(tmp_path, write_dicom_series):
    series = labelled_series(tmp_path / "series", write_dicom_series, REVERSED)
    volume = read_volume(series)
    canonical = nib.as_closest_canonical(nib.Nifti1Image(volume.array, volume.affine))  # axes flipped, as dcm2niix
    assert not np.allclose(canonical.affine, volume.affine)
    nib.save(canonical, tmp_path / "case.nii.gz")
    options = OutputOptions(formats=("dicom-seg",), reference_dicom=series)
    (outcome,) = segment(value_predictor(), tmp_path / "case.nii.gz", tmp_path / "out", options)
    assert np.array_equal(read_volume(outcome.labels_path).array, np.asarray(canonical.dataobj))
    check_frames_sit_on_their_source_slices(tmp_path / "out" / "case.dcm", series, {1: 1, 2: 2})


def never_predicts(*args, **kwargs):
    raise AssertionError("the case was predicted before the refusal")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("shift", "instance \\d+ lies at voxel"),
        ("crop", "lies at voxel|cover"),
        ("spacing", "pixel axes or spacing"),
        ("none", "needs the DICOM series the input was made from, and case is not a DICOM series"),
    ],
)
def test_an_input_off_the_reference_grid_is_refused_before_prediction(tmp_path, write_dicom_series, change, message):
    series = labelled_series(tmp_path / "series", write_dicom_series)
    volume = read_volume(series)
    array, affine = volume.array, volume.affine.copy()
    if change == "shift":
        affine[:3, 3] += 0.4 * affine[:3, 2]
    elif change == "crop":
        array = array[:, :, 1:]
    elif change == "spacing":
        affine[:3, 0] *= 1.5
    nib.save(nib.Nifti1Image(array, affine), tmp_path / "case.nii.gz")
    predictor = value_predictor()
    predictor.predict_volumes = never_predicts
    options = OutputOptions(formats=("dicom-seg",), reference_dicom=None if change == "none" else series)
    with pytest.raises(ConfigError, match=message):
        segment(predictor, tmp_path / "case.nii.gz", tmp_path / "out", options)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_cli_says_what_dicom_seg_needs_in_one_line(tmp_path, write_dicom_series, capsys, monkeypatch):
    config = config_from_dict({"data": {"labels": HIPPOCAMPUS_LABELS}, "sampling": {"patch_size": [16, 16, 16]}})
    model = save_checkpoint(build_checkpoint(create_model("unet", 3, 1, 3, features=[4, 8]), config), tmp_path / "m.pt")
    nib.save(nib.Nifti1Image(np.zeros((9, 8, 7), np.float32), np.eye(4)), tmp_path / "case.nii.gz")
    argv = ["predict", "-m", str(model), "-i", str(tmp_path / "case.nii.gz"), "-o", str(tmp_path / "out")]
    assert main([*argv, "--format", "nifti,dicom-seg", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give the series folder as -i, or --reference-dicom SERIES_DIR" in err
    assert main([*argv, "--reference-dicom", str(tmp_path)]) == 2
    assert "--reference-dicom is for --format dicom-seg" in capsys.readouterr().err
    series = labelled_series(tmp_path / "series", write_dicom_series)
    assert main(["predict", "-m", str(model), "-i", str(series), "-o", str(tmp_path / "o"), "--format=dicom-seg"]) == 0
    assert hd.seg.segread(tmp_path / "o" / "series.dcm").SegmentSequence[1].SegmentLabel == "Posterior"
    monkeypatch.setitem(sys.modules, "highdicom", None)  # as if the extra were not installed
    assert main(["predict", "-m", "no-such-model", "-i", str(series), "-o", "x", "--format", "dicom-seg"]) == 2
    assert "install it with: pip install 'volseg[dicom]'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="volseg\\[dicom\\]"):
        check_formats(("dicom-seg",))


def test_a_region_model_gets_one_segment_per_label_value(tmp_path, write_dicom_series):
    series = labelled_series(tmp_path / "series", write_dicom_series, DIRECTIONS["tilted"])
    volume = read_volume(series)
    labels = np.asarray([0, 1, 4], np.uint8)[volume.array]  # pixels 1, 2 -> labels 1, 4; no edema (2)
    brats = LabelSpace({0: "bg", 1: "necrotic core", 2: "edema", 4: "enhancing tumour"}, {"WT": [1, 2, 4], "ET": [4]})
    source = read_source_series(series, volume.affine, volume.spatial_shape)
    segments = segments_of(brats, None)
    path = write_dicom_seg(tmp_path / "brats.dcm", labels, source, segments, model_name="m", version="1")
    seg = check_frames_sit_on_their_source_slices(path, series, {1: 1, 3: 2})  # segment 2 (edema): no frame
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["necrotic core", "edema", "enhancing tumour"]
    types = [s.SegmentedPropertyTypeCodeSequence[0].CodeMeaning for s in seg.SegmentSequence]
    assert types == ["Necrosis", "Edema", "Neoplasm"]
