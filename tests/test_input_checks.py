"""Inputs unlike the model's training scans: a warning per mismatch, an error with --strict.

Against a fingerprint of hippocampus-like crops (1 mm MRI, about 40 mm): a whole-brain MRI, a
breast MRI, an abdominal CT and the same CT as a DICOM series each get their own warnings; the
bundled hippocampus model's held-out sample gets none.
"""

from __future__ import annotations

import json
import logging

import nibabel as nib
import numpy as np
import pytest

from volseg.bundled import bundled_sample
from volseg.checkpoint import build_checkpoint, checkpoint_fingerprint, load_checkpoint, save_checkpoint
from volseg.cli import main
from volseg.config import config_from_dict
from volseg.data.training_fingerprint import FINGERPRINT_VERSION, TrainingFingerprint, measure_scan, summarise_scans
from volseg.errors import InputMismatchError, ShapeError
from volseg.inference.input_checks import check_input, input_mismatches
from volseg.inference.predictor import Predictor
from volseg.inference.segment import OutputOptions, segment
from volseg.io import Volume, read_volume
from volseg.nn import create_model

CROPS = [(34, 48, 33), (38, 52, 36), (42, 56, 40)]  # hippocampus-like crops at 1 mm
HIPPOCAMPUS_FOV = "training cases were 34-42 x 48-56 x 33-40 mm"
ONE_MM = "training cases 1.00-1.00 mm"


def ellipsoid(shape, fraction=0.8):
    """True inside the ellipsoid filling ``fraction`` of each axis of ``shape``."""
    axes = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((a - (n - 1) / 2) / (fraction * n / 2)) ** 2 for a, n in zip(axes, shape)) <= 1


def mri(shape, seed=0):
    """MRI-like int16: tissue 300-700 (arbitrary units) inside an ellipsoid, noise 1-20 around it."""
    rng = np.random.default_rng(seed)
    image = rng.integers(1, 20, size=shape, dtype=np.int16)
    inside = ellipsoid(shape)
    image[inside] = rng.integers(300, 700, size=int(inside.sum()), dtype=np.int16)
    return image


def ct(shape):
    """Abdominal-CT-like HU: air -1024 around a body of soft tissue (40) and fat (-100), a spine up to 3071."""
    image = np.full(shape, -1024, dtype=np.int16)
    image[ellipsoid(shape, 0.9)] = -100
    image[ellipsoid(shape, 0.75)] = 40
    x, y = shape[0] // 2, int(shape[1] * 0.7)
    image[x - 10 : x + 10, y - 10 : y + 10, :] = 700
    image[x, y, :] = 3071
    return image


def volume(array, spacing):
    return Volume(array, np.diag([*spacing, 1.0]))


@pytest.fixture(scope="module")
def hippocampus_like():
    """A fingerprint of three 1 mm MRI crops of about 40 mm."""
    scans = [measure_scan([volume(mri(shape, seed), (1.0, 1.0, 1.0))]) for seed, shape in enumerate(CROPS)]
    return summarise_scans(scans, ["MRI"])


def test_the_fingerprint_is_small_versioned_and_round_trips(hippocampus_like):
    values = hippocampus_like.to_dict()
    assert values["version"] == FINGERPRINT_VERSION and values["cases"] == 3
    assert values["field_of_view"] == [[34.0, 42.0], [48.0, 56.0], [33.0, 40.0]]
    assert values["channels"][0]["modality"] == "MRI" and values["channels"][0]["air_fraction"] == [0.0, 0.0]
    assert len(json.dumps(values)) < 1000
    assert TrainingFingerprint.from_dict(values) == hippocampus_like
    with pytest.raises(ValueError, match="version 2"):
        TrainingFingerprint.from_dict({**values, "version": FINGERPRINT_VERSION + 1})
    for broken in ({**values, "spacing": 1.0}, {**values, "field_of_view": [[1.0]] * 3}, {"version": 1}):
        with pytest.raises(ValueError, match="malformed training fingerprint"):
            TrainingFingerprint.from_dict(broken)


def test_cases_like_the_training_crops_get_no_warning(hippocampus_like):
    for shape in [(36, 50, 35), (30, 45, 30)]:  # inside, and a little under the smallest crop
        assert input_mismatches(measure_scan([volume(mri(shape, 7), (1.0, 1.0, 1.0))]), hippocampus_like) == []
    assert input_mismatches(measure_scan([volume(mri((36, 50, 35)), (1.2, 1.2, 1.2))]), hippocampus_like) == []


def test_a_whole_brain_mri_gets_a_field_of_view_warning(hippocampus_like):
    scan = measure_scan([volume(mri((180, 220, 180)), (1.0, 1.0, 1.0))])
    assert input_mismatches(scan, hippocampus_like) == [f"field of view 180x220x180 mm; {HIPPOCAMPUS_FOV}"]


def test_a_breast_mri_gets_field_of_view_and_spacing_warnings(hippocampus_like):
    scan = measure_scan([volume(mri((380, 380, 50)), (0.9, 0.9, 3.0))])
    assert input_mismatches(scan, hippocampus_like) == [
        f"field of view 342x342x150 mm; {HIPPOCAMPUS_FOV}",
        f"voxel spacing 0.90x0.90x3.00 mm; {ONE_MM}",
    ]


def test_an_abdominal_ct_gets_modality_field_of_view_and_spacing_warnings(hippocampus_like):
    scan = measure_scan([volume(ct((320, 320, 40)), (0.9, 0.9, 5.0))])
    messages = input_mismatches(scan, hippocampus_like)
    assert len(messages) == 3
    assert messages[0].startswith("input looks like CT (intensities -1024..3071, ")
    assert messages[0].endswith("of voxels at or below -500 HU); the model was trained on MRI")
    assert messages[1:] == [
        f"field of view 288x288x200 mm; {HIPPOCAMPUS_FOV}",
        f"voxel spacing 0.90x0.90x5.00 mm; {ONE_MM}",
    ]


def test_a_ct_dicom_series_gets_the_same_warnings(tmp_path, hippocampus_like, write_dicom_series):
    write_dicom_series(tmp_path / "series", ct((256, 256, 30)).transpose(2, 1, 0), "1.2.826.0.1.3680043.2.1125.7")
    messages = input_mismatches(measure_scan([read_volume(tmp_path / "series")]), hippocampus_like)
    assert len(messages) == 3 and messages[0].startswith("input looks like CT (intensities -1024..3071, ")
    assert messages[1].startswith("field of view ") and messages[1].endswith(f" mm; {HIPPOCAMPUS_FOV}")
    assert messages[2] == f"voxel spacing 0.70x0.80x2.50 mm; {ONE_MM}"


def test_a_ct_model_warns_about_an_input_without_air():
    ct_cases = [measure_scan([volume(ct((60, 60, 20)), (1.0, 1.0, 3.0))])]
    fingerprint = summarise_scans(ct_cases, ["CT"])
    assert fingerprint.channels[0].modality == "CT"
    scan = measure_scan([volume(mri((60, 60, 20)), (1.0, 1.0, 3.0))])
    assert input_mismatches(scan, fingerprint) == [
        "input does not look like CT (intensities 1..699, no voxel at or below -500 HU); "
        "the model was trained on CT (every training case holds air: minimum -1024..-1024)"
    ]


def test_a_few_dark_voxels_do_not_make_an_mri_look_like_ct(hippocampus_like):
    image = mri((36, 50, 35))
    image[:3, :3, :3] = -610  # an outlier, as in one of the tiny test MRIs
    assert input_mismatches(measure_scan([volume(image, (1.0, 1.0, 1.0))]), hippocampus_like) == []


def test_check_input_logs_each_mismatch_or_refuses_with_strict(hippocampus_like, caplog):
    scan = [volume(ct((64, 64, 20)), (3.0, 3.0, 5.0))]
    with caplog.at_level(logging.WARNING, logger="volseg"):
        messages = check_input(scan, hippocampus_like, case_id="abdomen")
    assert len(messages) == 3 and [r.getMessage() for r in caplog.records] == [
        f"abdomen: {m} (unlike the model's training scans; --strict refuses such inputs)" for m in messages
    ]
    with pytest.raises(InputMismatchError, match=r"abdomen does not fit the model: input looks like CT .* \| field"):
        check_input(scan, hippocampus_like, case_id="abdomen", strict=True)


def test_the_bundled_hippocampus_model_has_a_fingerprint_and_its_sample_gets_no_warning(caplog):
    folder = bundled_sample("hippocampus")
    image = read_volume(folder / json.loads((folder / "sample.json").read_text())["images"][0])
    predictor = Predictor.from_checkpoint("hippocampus", device="cpu")
    assert predictor.fingerprint is not None and predictor.fingerprint.cases == 166
    assert predictor.fingerprint.channels[0].modality == "MRI"
    with caplog.at_level(logging.WARNING, logger="volseg"):
        assert predictor.predict_volumes([image], case_id="sample", strict=True).warnings == []
    assert not caplog.records


def write_inputs(folder, write_dicom_series):
    """The four kinds of input, as files (``-i`` paths), with a snippet of the error each must get."""
    folder.mkdir()
    nib.save(nib.Nifti1Image(mri((180, 220, 180)), np.eye(4)), str(folder / "brain.nii"))
    nib.save(nib.Nifti1Image(mri((380, 380, 50)), np.diag([0.9, 0.9, 3.0, 1.0])), str(folder / "breast.nii"))
    nib.save(nib.Nifti1Image(ct((320, 320, 40)), np.diag([0.9, 0.9, 5.0, 1.0])), str(folder / "abdomen.nii"))
    write_dicom_series(folder / "dicom", ct((256, 256, 30)).transpose(2, 1, 0), "1.2.826.0.1.3680043.2.1125.8")
    return {
        "brain.nii": "field of view 180x220x180 mm",
        "breast.nii": "voxel spacing 0.90x0.90x3.00 mm",
        "abdomen.nii": "input looks like CT (intensities -1024..3071",
        "dicom": "voxel spacing 0.70x0.80x2.50 mm",
    }


def test_strict_refuses_each_kind_with_exit_2_and_writes_nothing(tmp_path, capsys, write_dicom_series):
    for name, snippet in write_inputs(tmp_path / "in", write_dicom_series).items():
        out = tmp_path / f"out_{name}"
        argv = ["predict", "-m", "hippocampus", "-i", str(tmp_path / "in" / name), "-o", str(out), "--strict"]
        assert main([*argv, "--quiet"]) == 2, name
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and error.startswith("volseg: error: ") and snippet in error, error
        assert "does not fit the model" in error and "refused by --strict" in error
        assert not out.exists() or not any(out.iterdir())


def tiny_model(tmp_path, fingerprint):
    """A tiny 3-class checkpoint (working at 4 mm) with ``fingerprint`` stored, or none."""
    config = config_from_dict(
        {
            "data": {"labels": {0: "background", 1: "anterior", 2: "posterior"}, "channels": ["MRI"]},
            "preprocessing": {"spacing": [4.0, 4.0, 4.0]},
            "sampling": {"patch_size": [16, 16, 16]},
        }
    )
    network = create_model("unet", 3, 1, 3, features=[4, 8])
    values = None if fingerprint is None else fingerprint.to_dict()
    return save_checkpoint(build_checkpoint(network, config, fingerprint=values), tmp_path / "tiny.pt")


def test_warnings_reach_the_case_outcome_the_stats_and_the_log(tmp_path, hippocampus_like, capsys):
    path = tiny_model(tmp_path, hippocampus_like)
    nib.save(nib.Nifti1Image(mri((90, 110, 90)), np.diag([2.0, 2.0, 2.0, 1.0])), str(tmp_path / "brain.nii.gz"))
    expected = [f"field of view 180x220x180 mm; {HIPPOCAMPUS_FOV}"]
    predictor = Predictor.from_checkpoint(path, device="cpu")
    outcome = segment(predictor, tmp_path / "brain.nii.gz", tmp_path / "api", OutputOptions(stats=True))[0]
    assert outcome.warnings == expected and outcome.labels_path.exists()
    out = tmp_path / "cli" / "brain.nii.gz"
    assert main(["predict", "-m", str(path), "-i", str(tmp_path / "brain.nii.gz"), "-o", str(out), "--stats"]) == 0
    assert f"brain: {expected[0]} (unlike the model's training scans" in capsys.readouterr().err
    rows = json.loads((tmp_path / "cli" / "brain_stats.json").read_text())
    assert rows and all(row["input_warnings"] == expected for row in rows)


def test_an_input_with_another_channel_count_gets_the_channel_error_alone(tmp_path, hippocampus_like, caplog):
    predictor = Predictor.from_checkpoint(tiny_model(tmp_path, hippocampus_like), device="cpu")
    scan = volume(ct((64, 64, 20)), (3.0, 3.0, 5.0))
    with caplog.at_level(logging.WARNING, logger="volseg"), pytest.raises(ShapeError, match="takes 1 channels"):
        predictor.predict_volumes([scan, scan], strict=True)
    assert not caplog.records


def test_a_checkpoint_without_a_fingerprint_predicts_with_a_note(tmp_path, caplog):
    path = tiny_model(tmp_path, None)
    assert "fingerprint" not in load_checkpoint(path) and checkpoint_fingerprint(load_checkpoint(path)) is None
    nib.save(nib.Nifti1Image(ct((64, 64, 20)), np.diag([3.0, 3.0, 5.0, 1.0])), str(tmp_path / "ct.nii.gz"))
    with caplog.at_level(logging.INFO, logger="volseg"):
        predictor = Predictor.from_checkpoint(path, device="cpu")
        assert predictor.fingerprint is None
        outcome = segment(predictor, tmp_path / "ct.nii.gz", tmp_path / "out", OutputOptions(strict=True))[0]
    assert outcome.warnings == [] and outcome.labels_path.exists()
    notes = [r for r in caplog.records if "fingerprint" in r.getMessage()]
    assert len(notes) == 1 and notes[0].levelno == logging.INFO
    assert "records no training fingerprint: inputs are not compared" in notes[0].getMessage()


def test_an_unreadable_fingerprint_is_skipped_with_a_note(tmp_path, hippocampus_like, caplog):
    checkpoint = load_checkpoint(tiny_model(tmp_path, hippocampus_like))
    assert checkpoint_fingerprint(checkpoint) == hippocampus_like
    checkpoint["fingerprint"] = {**checkpoint["fingerprint"], "version": FINGERPRINT_VERSION + 1}
    with caplog.at_level(logging.INFO, logger="volseg"):
        assert checkpoint_fingerprint(checkpoint) is None
    assert "not used: fingerprint version 2" in caplog.text
