"""Clinical outputs besides DICOM-SEG: --format parsing, label codes, ITK-SNAP and Slicer label
tables, Slicer .seg.nrrd files, and what a rerun with more formats does."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from clinical_support import HIPPOCAMPUS_LABELS, value_predictor

from volseg.config import config_from_dict
from volseg.data.label_space import LabelSpace
from volseg.errors import ConfigError, OutputExistsError
from volseg.inference.label_outputs import segments_of
from volseg.inference.output_formats import parse_formats
from volseg.inference.segment import OutputOptions, segment
from volseg.io import read_volume
from volseg.io.label_tables import itksnap_text, slicer_colour_table_text, write_label_tables
from volseg.io.seg_nrrd import write_seg_nrrd
from volseg.io.segments import KNOWN_CODES, TISSUE, Code, describe_segments

HIPPOCAMPUS = LabelSpace(HIPPOCAMPUS_LABELS)
BRATS = LabelSpace(
    {0: "background", 1: "necrotic/non-enhancing core", 2: "edema", 4: "enhancing tumour"},
    {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]},
)
OBLIQUE = np.array([[0.0, 0.9, 0.3, -5.0], [-1.1, 0.0, 0.2, 12.0], [0.0, -0.1, 2.4, 30.0], [0, 0, 0, 1.0]])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nifti", (".nii.gz", ())),
        ("same", ("same", ())),
        ("dicom-seg", (".nii.gz", ("dicom-seg",))),
        ("seg-nrrd, NIFTI ,dicom-seg", (".nii.gz", ("dicom-seg", "seg-nrrd"))),
        ("same,seg-nrrd", ("same", ("seg-nrrd",))),
    ],
)
def test_format_lists_choose_the_label_file_and_the_formats_beside_it(text, expected):
    assert parse_formats(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nifti,png", "'png' is no format; allowed: nifti, same, dicom-seg, seg-nrrd"),
        ("nifti,", "'an empty value' is no format"),
        ("nifti,same", "nifti and same both choose the label file"),
    ],
)
def test_a_bad_format_list_is_refused_naming_the_value(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_formats(text)


def test_a_bad_format_is_refused_without_torch_or_the_model(tmp_path):
    blocked = "import sys\nfor n in ('torch', 'monai', 'SimpleITK'): sys.modules[n] = None\n"
    blocked += "from volseg.cli import main\nsys.exit(main(sys.argv[1:]))"
    argv = ["predict", "-m", "no-such-model", "-i", ".", "-o", "out", "--format", "nifti,dicom"]
    result = subprocess.run([sys.executable, "-c", blocked, *argv], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "'dicom' is no format; allowed: nifti, same, dicom-seg" in result.stderr


def test_the_built_in_codes_are_pydicoms_snomed_codes():
    from pydicom.sr.codedict import codes

    for code in {TISSUE, *(c for pair in KNOWN_CODES.values() for c in pair)}:
        known = getattr(codes.SCT, code.meaning.replace(" ", ""))
        assert (code.scheme, code.value, code.meaning) == (known.scheme_designator, known.value, known.meaning)


def test_segments_of_the_bundled_models_carry_their_names_colours_and_codes():
    anterior, posterior = segments_of(HIPPOCAMPUS, None)
    assert (anterior.value, anterior.name, anterior.rgb255()) == (1, "Anterior", (230, 159, 0))
    assert anterior.type == posterior.type == Code("SCT", "5366008", "Hippocampus")
    assert anterior.category.meaning == "Anatomical Structure"
    # a region model writes label values, one segment each, in the case's convention
    older, newer = segments_of(BRATS, "brats2021"), segments_of(BRATS, "brats2023")
    assert [s.value for s in older] == [1, 2, 4] and [s.value for s in newer] == [1, 2, 3]
    assert [s.type.meaning for s in newer] == ["Necrosis", "Edema", "Neoplasm"]
    assert {s.category.meaning for s in newer} == {"Morphologically Abnormal Structure"}
    assert newer[2].name == "enhancing tumour" and newer[2].rgb255() == (0, 158, 115)  # label 3's colour
    other = describe_segments({1: "liver lesion"}, {1: (0.0, 0.0, 1.0)})[0]
    assert (other.category, other.type) == (TISSUE, TISSUE)


def test_label_codes_in_the_config_are_checked_at_load_and_win():
    codes = {"tumour": {"category": "SCT:49755003:Morphologically Abnormal Structure", "type": "SCT:4147007:Mass"}}
    config = config_from_dict({"data": {"labels": {0: "background", 1: "tumour"}, "label_codes": codes}})
    (segment,) = describe_segments({1: "tumour"}, {}, config.data.label_codes)
    assert segment.type == Code("SCT", "4147007", "Mass")
    bad = [
        ({"tumor": codes["tumour"]}, "label_codes\\['tumor'\\] names no label; allowed: background, tumour"),
        ({"tumour": {"category": "SCT:1:x"}}, "give exactly category and type"),
        ({"tumour": {**codes["tumour"], "type": "Mass"}}, "type='Mass' is not valid; write SCHEME:VALUE:MEANING"),
    ]
    for label_codes, message in bad:
        with pytest.raises(ConfigError, match=message):
            config_from_dict({"data": {"labels": {0: "background", 1: "tumour"}, "label_codes": label_codes}})


def test_label_tables_for_itksnap_and_slicer_have_exact_contents(tmp_path):
    segments = segments_of(BRATS, None)
    assert itksnap_text(segments) == (
        "# ITK-SNAP label description file written by volseg\n"
        "# IDX    R    G    B      A  VIS MSH  LABEL\n"
        '    0    0    0    0      0    0   0  "Clear Label"\n'
        '    1  230  159    0      1    1   1  "necrotic/non-enhancing core"\n'
        '    2   86  180  233      1    1   1  "edema"\n'
        '    4  240  228   66      1    1   1  "enhancing tumour"\n'
    )
    assert slicer_colour_table_text(segments, "case.ctbl") == (
        "# Color table file case.ctbl\n# 4 values\n0 background 0 0 0 0\n"
        "1 necrotic/non-enhancing_core 230 159 0 255\n2 edema 86 180 233 255\n4 enhancing_tumour 240 228 66 255\n"
    )
    paths = write_label_tables(tmp_path / "case_labels.txt", tmp_path / "case.ctbl", segments)
    assert [p.read_text() for p in paths] == [itksnap_text(segments), slicer_colour_table_text(segments, "case.ctbl")]
    with pytest.raises(OutputExistsError, match="case_labels.txt' exists"):
        write_label_tables(paths[0], paths[1], segments)


def nrrd_fields(path) -> dict[str, str]:
    """The ``key:=value`` lines of a NRRD header (read as text, independently of the writer)."""
    header = path.read_bytes().split(b"\n\n", 1)[0].decode()
    return dict(line.split(":=", 1) for line in header.splitlines() if ":=" in line)


def test_seg_nrrd_holds_the_labels_on_the_grid_with_slicer_segment_fields(tmp_path):
    labels = np.zeros((9, 7, 5), np.uint8)
    labels[2:5, 1:3, 4] = 1
    segments = segments_of(HIPPOCAMPUS, None) + describe_segments({3: "empty one"}, {3: (0.0, 0.5, 1.0)})
    path = write_seg_nrrd(tmp_path / "case_segmentation.seg.nrrd", labels, OBLIQUE, segments)
    back = read_volume(path)
    assert np.array_equal(back.array, labels) and np.allclose(back.affine, OBLIQUE, atol=1e-6)
    fields = nrrd_fields(path)
    assert "space: left-posterior-superior" in path.read_bytes().split(b"\n\n", 1)[0].decode()
    assert fields["Segmentation_ContainedRepresentationNames"] == "Binary labelmap|"
    assert [fields[f"Segment{i}_Name"] for i in range(3)] == ["Anterior", "Posterior", "empty one"]
    assert [fields[f"Segment{i}_LabelValue"] for i in range(3)] == ["1", "2", "3"]
    assert fields["Segment0_Color"] == "0.901961 0.623529 0" and fields["Segment2_Color"] == "0 0.5 1"
    assert fields["Segment0_Extent"] == "2 4 1 2 4 4" and fields["Segment1_Extent"] == "0 -1 0 -1 0 -1"
    assert {fields[f"Segment{i}_Layer"] for i in range(3)} == {"0"}
    assert "~SCT^91723000^Anatomical Structure~SCT^5366008^Hippocampus~" in fields["Segment0_Tags"]
    with pytest.raises(OutputExistsError):
        write_seg_nrrd(path, labels, OBLIQUE, segments)


def test_predict_writes_every_format_on_the_input_grid_and_reruns_what_is_missing(tmp_path):
    image = np.zeros((12, 10, 8), np.float32)
    image[2:6, 3:7, 1:4], image[7:9, 2:4, 5:7] = 1, 2
    cases = tmp_path / "cases"
    cases.mkdir()
    nib.save(nib.Nifti1Image(image, OBLIQUE), cases / "case.nii.gz")
    nib.save(nib.Nifti1Image(image[::-1].copy(), OBLIQUE), cases / "other.nii.gz")
    predictor, out, options = value_predictor(), tmp_path / "out", OutputOptions(formats=("seg-nrrd",))
    assert not any(outcome.skipped for outcome in segment(predictor, cases, out, options))
    names = sorted(p.name for p in out.iterdir() if p.name.startswith("case"))
    assert names == ["case.ctbl", "case.nii.gz", "case_labels.txt", "case_segmentation.seg.nrrd"]
    labels, slicer = read_volume(out / "case.nii.gz"), read_volume(out / "case_segmentation.seg.nrrd")
    assert np.array_equal(labels.array, image) and np.array_equal(slicer.array, labels.array)
    assert np.allclose(slicer.affine, OBLIQUE, atol=1e-5)
    assert all(outcome.skipped for outcome in segment(predictor, cases, out, options))  # both files exist
    (out / "case_segmentation.seg.nrrd").unlink()  # as if seg-nrrd had been asked for only now
    again = {outcome.case_id: outcome.skipped for outcome in segment(predictor, cases, out, options)}
    assert again == {"case": False, "other": True} and (out / "case_segmentation.seg.nrrd").exists()
    assert all(outcome.skipped for outcome in segment(predictor, cases, out))  # nifti only: finished


def test_a_label_file_that_cannot_be_written_leaves_no_file_of_the_case(tmp_path, monkeypatch):
    import volseg.inference.segment as segment_module

    nib.save(nib.Nifti1Image(np.ones((6, 5, 4), np.float32), np.eye(4)), tmp_path / "case.nii.gz")

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(segment_module, "write_volume", disk_full)
    options = OutputOptions(formats=("seg-nrrd",))
    with pytest.raises(OSError, match="No space left"):
        segment(value_predictor(), tmp_path / "case.nii.gz", tmp_path / "out" / "case.nii.gz", options)
    assert not any((tmp_path / "out").iterdir())  # no label tables, no .seg.nrrd
