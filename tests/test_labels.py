"""Tests of informer_audit.labels: CSV formats, class maps, filters and their error messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from informer_audit.errors import LabelFormatError
from informer_audit.labels import (
    CHEXPERT_FINDINGS,
    LABEL_FORMATS,
    NIH_FINDINGS,
    UNCERTAIN_POLICIES,
    LabelSet,
    parse_class_map,
    read_labels,
)

SHARED_NIH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nih-cxr14-621"
PAPER_CLASSES = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion")


def write_csv(folder: Path, text: str, name: str = "labels.csv") -> Path:
    path = folder / name
    path.write_text(text.lstrip("\n"), encoding="utf-8")
    return path


def ident(*names: str) -> dict[str, str]:
    return {n: n for n in names}


# A hand-made CheXpert table: A and B are the selected classes, C is never selected.
CHEXPERT_CSV = """
Path,Sex,Age,Frontal/Lateral,AP/PA,A,B,C
p/1.jpg,Male,50,Frontal,AP,1.0,0.0,-1.0
p/2.jpg,Female,60,Frontal,PA,-1.0,0.0,1.0
p/3.jpg,Male,70,Lateral,,0.0,-1.0,
p/4.jpg,Male,80,Frontal,AP,,,-1.0
p/5.jpg,Female,40,Frontal,PA,-1,1,0
"""


# --- constants -------------------------------------------------------------------------------


def test_constants_as_published() -> None:
    assert UNCERTAIN_POLICIES == ("exclude-image", "exclude-class", "zero", "one")
    assert LABEL_FORMATS == ("auto", "plain", "chexpert", "nih")
    assert len(NIH_FINDINGS) == 14 and "Pleural_Thickening" in NIH_FINDINGS
    assert "Effusion" in NIH_FINDINGS and "No Finding" not in NIH_FINDINGS
    assert len(CHEXPERT_FINDINGS) == 14
    assert CHEXPERT_FINDINGS[0] == "No Finding" and CHEXPERT_FINDINGS[-1] == "Support Devices"
    assert "Pleural Effusion" in CHEXPERT_FINDINGS


# --- class map -------------------------------------------------------------------------------


def test_class_map_default_is_identity_in_model_order() -> None:
    model = ["B", "A", "C"]
    assert list(parse_class_map(None, model).items()) == [("B", "B"), ("A", "A"), ("C", "C")]
    assert parse_class_map("  ", model) == {"B": "B", "A": "A", "C": "C"}


def test_class_map_positional_and_renamed_in_spec_order() -> None:
    model = ["Atelectasis", "Effusion", "Edema"]
    got = parse_class_map(" Effusion = Pleural Effusion , Atelectasis", model)
    assert list(got.items()) == [("Effusion", "Pleural Effusion"), ("Atelectasis", "Atelectasis")]


def test_class_map_unknown_class_lists_model_classes() -> None:
    with pytest.raises(LabelFormatError, match="'Efusion'.*'Atelectasis', 'Effusion'"):
        parse_class_map("Efusion", ["Atelectasis", "Effusion"])


def test_class_map_is_exact_but_hints_near_miss() -> None:
    with pytest.raises(LabelFormatError, match="did you mean 'Pleural Effusion'"):
        parse_class_map("pleural_effusion", ["Pleural Effusion"])


@pytest.mark.parametrize("spec", ["A,A", "A,A=X", "A=X,B=X"])
def test_class_map_duplicates_refused(spec: str) -> None:
    with pytest.raises(LabelFormatError, match="twice|both"):
        parse_class_map(spec, ["A", "B"])


def test_class_map_errors_name_the_classes_parameter() -> None:
    with pytest.raises(LabelFormatError) as info:
        parse_class_map("A,Z", ["A", "B"])
    assert str(info.value).startswith("class map 'A,Z': 'Z' is not a class of the model")
    assert info.value.params == ("classes",)


@pytest.mark.parametrize("spec", ["A,", "A,,B", "=X", "A="])
def test_class_map_empty_entry_refused(spec: str) -> None:
    with pytest.raises(LabelFormatError, match="empty name"):
        parse_class_map(spec, ["A", "B"])


# --- plain -----------------------------------------------------------------------------------


def test_plain_parses_values_and_ignores_extra_columns(tmp_path: Path) -> None:
    csv = write_csv(
        tmp_path,
        """
patient_id,path,A,B,age
7,x/1.png,1,0,40
8,x/2.png,0.0,1.0,50
9,x/3.png,TRUE,false,60
""",
    )
    labels = read_labels(csv, tmp_path / "imgs", {"mB": "B", "mA": "A"})
    assert isinstance(labels, LabelSet)
    assert labels.format == "plain"
    assert len(labels) == 3
    assert labels.source == csv
    assert labels.class_names == ["mB", "mA"]
    assert labels.label_columns == ["B", "A"]
    assert labels.keys == ["x/1.png", "x/2.png", "x/3.png"]
    assert labels.paths == [tmp_path / "imgs" / "x" / f"{i}.png" for i in (1, 2, 3)]
    assert labels.y.dtype == np.float64
    np.testing.assert_array_equal(labels.y, [[0, 1], [1, 0], [0, 1]])
    assert labels.excluded == {}
    # Paths are not checked for existence in the plain format.
    assert not any(p.exists() for p in labels.paths)
    # A frozen label set's matrix is read-only.
    with pytest.raises(ValueError, match="read-only"):
        labels.y[0, 0] = 5.0


def test_plain_blank_cell_names_row_and_column(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "path,A,B\na.png,1,0\nb.png,0,\n")
    with pytest.raises(LabelFormatError) as info:
        read_labels(csv, tmp_path, ident("A", "B"))
    message = str(info.value)
    assert str(csv) in message
    assert "data row 2" in message and "'b.png'" in message and "column 'B'" in message
    assert "blank" in message and "split=" in message and "fmt='chexpert'" in message
    assert info.value.params == ("split", "fmt") and "--" not in message


def test_plain_value_two_refused(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "path,A\na.png,2\n")
    with pytest.raises(LabelFormatError, match=r"data row 1.*column 'A'.*'2'.*expected one of"):
        read_labels(csv, tmp_path, ident("A"))


def test_plain_minus_one_refused(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "path,A\na.png,-1\n")
    with pytest.raises(LabelFormatError, match="'-1'"):
        read_labels(csv, tmp_path, ident("A"))


def test_plain_missing_path_column_lists_columns(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "name,A\na.png,1\n")
    with pytest.raises(LabelFormatError, match=r"image-path column.*'name', 'A'"):
        read_labels(csv, tmp_path, ident("A"))


def test_plain_path_column_alternatives_and_override(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "Image_Path,A\na.png,1\n")
    assert read_labels(csv, tmp_path, ident("A")).keys == ["a.png"]
    csv = write_csv(tmp_path, "name,A\na.png,1\n", "other.csv")
    assert read_labels(csv, tmp_path, ident("A"), path_column="name").keys == ["a.png"]
    with pytest.raises(LabelFormatError, match="'nope'"):
        read_labels(csv, tmp_path, ident("A"), path_column="nope")


def test_missing_class_column_lists_available_columns(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "path,A,B,age\na.png,1,0,3\n")
    with pytest.raises(LabelFormatError) as info:
        read_labels(csv, tmp_path, {"Cls": "Edema"})
    message = str(info.value)
    assert "'Cls'" in message and "'Edema'" in message
    assert "'A', 'B', 'age'" in message and "'path'" not in message


def test_normalised_column_matching(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "path,Pleural Effusion,Edema\na.png,1,0\n")
    labels = read_labels(csv, tmp_path, {"Effusion": "Pleural_Effusion", "Edema": "EDEMA"})
    assert labels.label_columns == ["Pleural Effusion", "Edema"]
    np.testing.assert_array_equal(labels.y, [[1, 0]])


def test_exact_column_wins_over_normalised_ones(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "path,a_b,A B\nx.png,1,0\n")
    assert read_labels(csv, tmp_path, ident("A B")).label_columns == ["A B"]
    with pytest.raises(LabelFormatError, match="2 label columns match 'ab'"):
        read_labels(csv, tmp_path, ident("ab"))


def test_duplicate_paths_listed_with_rows(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "path,A\na.png,1\nb.png,0\n./a.png,0\n")
    with pytest.raises(LabelFormatError, match=r"a\.png' in data rows 1, 3"):
        read_labels(csv, tmp_path, ident("A"))


def test_absolute_paths_kept(tmp_path: Path) -> None:
    absolute = tmp_path / "elsewhere" / "a.png"
    csv = write_csv(tmp_path, f"path,A\n{absolute},1\nrel.png,0\n")
    labels = read_labels(csv, tmp_path / "imgs", ident("A"))
    assert labels.paths == [absolute, tmp_path / "imgs" / "rel.png"]
    assert labels.keys == [str(absolute), "rel.png"]


def test_split_filter_and_count(tmp_path: Path) -> None:
    csv = write_csv(
        tmp_path, "path,A,Split\na.png,1,train\nb.png,0,val\nc.png,,test\nd.png,1,val\n"
    )
    labels = read_labels(csv, tmp_path, ident("A"), split="val")
    assert labels.keys == ["b.png", "d.png"]
    np.testing.assert_array_equal(labels.y, [[0], [1]])
    assert labels.excluded == {"split": 2}
    with pytest.raises(LabelFormatError, match=r"'valid'.*'test', 'train', 'val'"):
        read_labels(csv, tmp_path, ident("A"), split="valid")


def test_split_without_split_column(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "path,A\na.png,1\n")
    with pytest.raises(LabelFormatError, match="no 'split' column"):
        read_labels(csv, tmp_path, ident("A"), split="val")


def test_plain_frontal_only_uses_view_column(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "path,A,view\na.png,1,PA\nb.png,0,LL\nc.png,1,ap\n")
    labels = read_labels(csv, tmp_path, ident("A"), frontal_only=True)
    assert labels.keys == ["a.png", "c.png"]
    assert labels.excluded == {"lateral": 1}
    csv = write_csv(tmp_path, "path,A\na.png,1\n", "noview.csv")
    with pytest.raises(LabelFormatError, match="view column"):
        read_labels(csv, tmp_path, ident("A"), frontal_only=True)


# --- file problems ---------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LabelFormatError, match="nope.csv.*not found"):
        read_labels(tmp_path / "nope.csv", tmp_path, ident("A"))


def test_empty_file(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "")
    with pytest.raises(LabelFormatError, match="labels.csv.*empty"):
        read_labels(csv, tmp_path, ident("A"))


def test_header_without_rows(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "path,A\n")
    with pytest.raises(LabelFormatError, match="labels.csv.*no data rows"):
        read_labels(csv, tmp_path, ident("A"))


def test_unparsable_csv(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, 'path,A\na.png,1\nb.png,0,extra,fields\n"unclosed,1\n')
    with pytest.raises(LabelFormatError, match="labels.csv.*cannot be parsed"):
        read_labels(csv, tmp_path, ident("A"))


def test_repeated_header_name_refused_when_used(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "path,A,A,B\na.png,1,0,1\n")
    with pytest.raises(LabelFormatError, match="'A' appears 2 times"):
        read_labels(csv, tmp_path, ident("A"))
    np.testing.assert_array_equal(read_labels(csv, tmp_path, ident("B")).y, [[1]])


def test_invalid_format_and_policy(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "path,A\na.png,1\n")
    with pytest.raises(LabelFormatError, match="'csv'.*'auto', 'plain', 'chexpert', 'nih'"):
        read_labels(csv, tmp_path, ident("A"), fmt="csv")
    with pytest.raises(LabelFormatError, match="'drop'.*'exclude-image', 'exclude-class'"):
        read_labels(csv, tmp_path, ident("A"), uncertain="drop")
    with pytest.raises(LabelFormatError, match="no classes"):
        read_labels(csv, tmp_path, {})


# --- chexpert --------------------------------------------------------------------------------


def test_chexpert_exclude_image(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, CHEXPERT_CSV)
    labels = read_labels(csv, tmp_path, ident("A", "B"))
    assert labels.format == "chexpert"
    # Rows 2, 3 and 5 have a -1 in A or B; row 1's -1 is in the unselected C.
    assert labels.keys == ["p/1.jpg", "p/4.jpg"]
    np.testing.assert_array_equal(labels.y, [[1, 0], [0, 0]])
    assert labels.excluded == {"uncertain": 3}


def test_chexpert_exclude_class(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, CHEXPERT_CSV)
    labels = read_labels(csv, tmp_path, ident("A", "B"), uncertain="exclude-class")
    assert len(labels) == 5
    nan = np.nan
    expected = [[1, 0], [nan, 0], [0, nan], [0, 0], [nan, 1]]
    np.testing.assert_array_equal(labels.y, expected)  # NaNs compare equal here
    assert labels.excluded == {}


@pytest.mark.parametrize(("policy", "value"), [("zero", 0.0), ("one", 1.0)])
def test_chexpert_zero_and_one(tmp_path: Path, policy: str, value: float) -> None:
    csv = write_csv(tmp_path, CHEXPERT_CSV)
    labels = read_labels(csv, tmp_path, ident("A", "B"), uncertain=policy)
    u = value
    np.testing.assert_array_equal(labels.y, [[1, 0], [u, 0], [0, u], [0, 0], [u, 1]])
    assert not np.isnan(labels.y).any()


def test_chexpert_blank_is_negative(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, CHEXPERT_CSV)
    labels = read_labels(csv, tmp_path, ident("C"), uncertain="zero")
    # C: -1, 1, blank, -1, 0 -> blank (row 3) reads as 0.
    np.testing.assert_array_equal(labels.y[:, 0], [0, 1, 0, 0, 0])


def test_chexpert_frontal_only_before_uncertain(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, CHEXPERT_CSV)
    labels = read_labels(csv, tmp_path, ident("A", "B"), frontal_only=True)
    assert labels.keys == ["p/1.jpg", "p/4.jpg"]
    # The lateral row 3 is counted as lateral, not as uncertain.
    assert labels.excluded == {"lateral": 1, "uncertain": 2}


def test_chexpert_require_finding_after_policy(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, CHEXPERT_CSV)
    labels = read_labels(csv, tmp_path, ident("A", "B"), uncertain="one", require_finding=True)
    # Row 4 (all blank) has no selected finding; rows 2, 3 gain one from the policy.
    assert labels.keys == ["p/1.jpg", "p/2.jpg", "p/3.jpg", "p/5.jpg"]
    assert labels.excluded == {"no selected finding": 1}
    labels = read_labels(
        csv, tmp_path, ident("A", "B"), uncertain="exclude-class", require_finding=True
    )
    # A NaN (excluded class) is not a finding: row 2 (NaN, 0) goes too.
    assert labels.keys == ["p/1.jpg", "p/5.jpg"]
    assert labels.excluded == {"no selected finding": 3}


def test_chexpert_bad_value(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "Path,Frontal/Lateral,A\np/1.jpg,Frontal,2.0\n")
    with pytest.raises(LabelFormatError, match=r"data row 1.*column 'A'.*'2\.0'.*'-1\.0'"):
        read_labels(csv, tmp_path, ident("A"))


def test_chexpert_metadata_not_offered_as_labels(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, CHEXPERT_CSV)
    with pytest.raises(LabelFormatError) as info:
        read_labels(csv, tmp_path, ident("Edema"))
    assert "'A', 'B', 'C'" in str(info.value) and "'Sex'" not in str(info.value)


def test_no_image_left_says_which_filters(tmp_path: Path) -> None:
    csv = write_csv(tmp_path, "Path,Frontal/Lateral,A\np/1.jpg,Lateral,0\np/2.jpg,Frontal,-1\n")
    with pytest.raises(LabelFormatError, match="no images left.*lateral: 1, uncertain: 1"):
        read_labels(csv, tmp_path, ident("A"), frontal_only=True)


# --- nih -------------------------------------------------------------------------------------

NIH_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)


def nih_csv(folder: Path, rows: list[tuple[str, str, str]]) -> Path:
    lines = [NIH_HEADER] + [
        f"{name},{findings},0,1,50,M,{view},2500,2048,0.14,0.14," for name, findings, view in rows
    ]
    return write_csv(folder, "\n".join(lines) + "\n", "Data_Entry_2017.csv")


def test_nih_finding_labels(tmp_path: Path) -> None:
    csv = nih_csv(
        tmp_path,
        [
            ("a.png", "No Finding", "PA"),
            ("b.png", "Effusion|Infiltration", "AP"),
            ("c.png", "Pleural_Thickening", "PA"),
            ("d.png", "Infiltration", "PA"),
        ],
    )
    classes = {"Eff": "Effusion", "PT": "Pleural Thickening", "NF": "No_Finding"}
    labels = read_labels(csv, tmp_path, classes)
    assert labels.format == "nih"
    assert labels.label_columns == ["Effusion", "Pleural_Thickening", "No Finding"]
    np.testing.assert_array_equal(labels.y, [[0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, 0]])
    labels = read_labels(csv, tmp_path, {"Eff": "Effusion"}, require_finding=True)
    assert labels.keys == ["b.png"]
    assert labels.excluded == {"no selected finding": 3}


def test_nih_unknown_finding_refused(tmp_path: Path) -> None:
    csv = nih_csv(tmp_path, [("a.png", "No Finding", "PA")])
    with pytest.raises(LabelFormatError) as info:
        read_labels(csv, tmp_path, {"Eff": "Pleural Effusion"})
    message = str(info.value)
    assert "'Pleural Effusion'" in message
    assert "'Effusion'" in message and "'No Finding'" in message


def test_nih_token_match_is_exact(tmp_path: Path) -> None:
    csv = nih_csv(tmp_path, [("a.png", "Mass", "PA"), ("b.png", " Mass |Nodule", "PA")])
    labels = read_labels(csv, tmp_path, ident("Mass", "Nodule", "Edema"))
    np.testing.assert_array_equal(labels.y, [[1, 0, 0], [1, 1, 0]])


def test_nih_recursive_lookup(tmp_path: Path) -> None:
    nested = tmp_path / "images_001" / "images"
    nested.mkdir(parents=True)
    (nested / "a.png").write_bytes(b"")
    (tmp_path / "b.png").write_bytes(b"")
    csv = nih_csv(
        tmp_path,
        [("a.png", "Edema", "PA"), ("b.png", "Edema", "PA"), ("gone.png", "Edema", "PA")],
    )
    labels = read_labels(csv, tmp_path, ident("Edema"))
    assert labels.keys == ["a.png", "b.png", "gone.png"]
    assert labels.paths == [nested / "a.png", tmp_path / "b.png", tmp_path / "gone.png"]


def test_nih_ambiguous_lookup(tmp_path: Path) -> None:
    for sub in ("one", "two"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "a.png").write_bytes(b"")
    csv = nih_csv(tmp_path, [("a.png", "Edema", "PA")])
    with pytest.raises(LabelFormatError, match="'a.png' occurs 2 times"):
        read_labels(csv, tmp_path, ident("Edema"))


def test_nih_frontal_only(tmp_path: Path) -> None:
    csv = nih_csv(tmp_path, [("a.png", "Edema", "PA"), ("b.png", "Edema", "LL")])
    labels = read_labels(csv, tmp_path, ident("Edema"), frontal_only=True)
    assert labels.keys == ["a.png"]
    assert labels.excluded == {"lateral": 1}


def test_nih_blank_findings_refused(tmp_path: Path) -> None:
    csv = nih_csv(tmp_path, [("a.png", "", "PA")])
    with pytest.raises(LabelFormatError, match="data row 1.*'Finding Labels': blank"):
        read_labels(csv, tmp_path, ident("Edema"))


# --- format detection ------------------------------------------------------------------------


def test_auto_detects_three_formats(tmp_path: Path) -> None:
    plain = write_csv(tmp_path, "path,Edema\na.png,1\n", "plain.csv")
    chexpert = write_csv(tmp_path, "Path,Frontal/Lateral,Edema\na.jpg,Frontal,1.0\n", "c.csv")
    nih = nih_csv(tmp_path, [("a.png", "Edema", "PA")])
    for csv, expected in ((plain, "plain"), (chexpert, "chexpert"), (nih, "nih")):
        labels = read_labels(csv, tmp_path, ident("Edema"))
        assert labels.format == expected
        np.testing.assert_array_equal(labels.y, [[1]])


def test_explicit_format_must_fit(tmp_path: Path) -> None:
    plain = write_csv(tmp_path, "path,Edema\na.png,1\n", "plain.csv")
    with pytest.raises(LabelFormatError, match=r"'Finding Labels'.*look like the 'plain'"):
        read_labels(plain, tmp_path, ident("Edema"), fmt="nih")
    nih = nih_csv(tmp_path, [("a.png", "Edema", "PA")])
    with pytest.raises(LabelFormatError, match=r"'Path'.*look like the 'nih'"):
        read_labels(nih, tmp_path, ident("Edema"), fmt="chexpert")
    # A CheXpert file read as plain: blank means nothing there, so it is refused.
    chexpert = write_csv(tmp_path, "Path,Frontal/Lateral,Edema\na.jpg,Frontal,\n", "c.csv")
    with pytest.raises(LabelFormatError, match="blank"):
        read_labels(chexpert, tmp_path, ident("Edema"), fmt="plain")
    assert read_labels(chexpert, tmp_path, ident("Edema")).y.tolist() == [[0.0]]


# --- the shared real-data fixture ------------------------------------------------------------


@pytest.mark.shared
@pytest.mark.skipif(
    not (SHARED_NIH / "labels.csv").is_file(),
    reason=f"shared NIH sample not present at {SHARED_NIH / 'labels.csv'}",
)
def test_shared_nih_sample_val_split() -> None:
    classes = parse_class_map(",".join(PAPER_CLASSES), NIH_FINDINGS)
    labels = read_labels(SHARED_NIH / "labels.csv", SHARED_NIH, classes, split="val")
    assert labels.format == "plain"
    assert len(labels) == 140
    assert labels.class_names == list(PAPER_CLASSES)
    assert labels.y.sum(axis=0).tolist() == [20, 11, 13, 4, 21]
    assert labels.excluded == {"split": 481}
    assert all(p.is_file() for p in labels.paths)
    # The test rows are deliberately unlabelled (blank), so the whole file is refused.
    with pytest.raises(LabelFormatError, match="blank"):
        read_labels(SHARED_NIH / "labels.csv", SHARED_NIH, classes)
