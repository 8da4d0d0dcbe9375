"""TIDE's breakdown of hand-made predictions, against AP computed by hand."""

import json

import pytest

from pipeline.tools.detection_errors import breakdown, main, table

pytest.importorskip("tidecv", reason="tidecv not installed (`make setup` installs it with the dev tools)")


def write(path, data):
    path.write_text(json.dumps(data))
    return path


def test_a_wrong_class_on_a_found_box_costs_what_hand_computed_ap_says(tmp_path, capsys):
    # Image 1 holds a Bag, image 2 a Coat. The model finds both, but also calls image 1's Bag box a Coat,
    # more confidently than its real Coat: class Coat's AP50 is 0.5 (a false positive first), Bag's 1.0.
    gt = write(tmp_path / "gt.json", {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 200},
                   {"id": 2, "file_name": "b.jpg", "width": 200, "height": 200}],
        "categories": [{"id": 1, "name": "Bag"}, {"id": 2, "name": "Coat"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100], "area": 1e4, "iscrowd": 0},
                        {"id": 2, "image_id": 2, "category_id": 2, "bbox": [50, 50, 100, 100], "area": 1e4,
                         "iscrowd": 0}]})
    wrong_class = write(tmp_path / "wrong_class.json", [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100], "score": 0.9},
        {"image_id": 1, "category_id": 2, "bbox": [2, 2, 100, 100], "score": 0.95},
        {"image_id": 2, "category_id": 2, "bbox": [50, 50, 100, 100], "score": 0.8}])
    # The same, but the Coat box lies on empty background and the Bag box is loose (IoU 0.25).
    background = write(tmp_path / "background.json", [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 50], "score": 0.9},
        {"image_id": 2, "category_id": 1, "bbox": [0, 0, 40, 40], "score": 0.85},
        {"image_id": 2, "category_id": 2, "bbox": [50, 50, 100, 100], "score": 0.8}])
    r = breakdown(gt, [wrong_class, background])
    a, b = r[str(wrong_class)], r[str(background)]
    assert a["AP50"] == pytest.approx(75.0, abs=0.1)  # (1.0 + 0.5) / 2
    assert a["Cls"] == pytest.approx(25.0, abs=0.1)  # removing the Coat call lifts Coat to 1.0
    assert a["Loc"] == a["Bkg"] == a["Dupe"] == a["Miss"] == 0
    # Bag: one loose box (IoU 0.25) and one on background -> AP 0; Coat 1.0. Fixing the loose box
    # gives Bag 1.0 (it outranks the background box), so Loc costs 50; the background box, once the
    # Bag is found, costs nothing more alone.
    assert b["AP50"] == pytest.approx(50.0, abs=0.1) and b["Loc"] == pytest.approx(50.0, abs=0.1)
    assert b["Cls"] == 0 and b["Bkg"] == 0
    # Both objects are covered in the first file, but the Bag's best-scoring cover says Coat; in the
    # second, only the Coat is covered (the Bag box has IoU 0.25), and with its own class.
    assert (a["found"], a["class right"]) == (100.0, 50.0) and (b["found"], b["class right"]) == (50.0, 100.0)

    assert main([str(wrong_class), "--annotations", str(gt), "--json", str(tmp_path / "e.json")]) == 0
    assert table(r).splitlines()[2].startswith(f"| {wrong_class} | 75.0 | 100.0 | 50.0 | 25.0 | 0.0 |")
    assert (json.loads((tmp_path / "e.json").read_text())["results"][str(wrong_class)]["Cls"]
            == pytest.approx(25.0, abs=0.1))
    assert main([str(tmp_path / "nope.json"), "--annotations", str(gt)]) == 2
    assert "predictions file not found: " in capsys.readouterr().err
    # A detection of a class the dataset lacks: one line naming the file and the entry, no JSON written.
    foreign = write(tmp_path / "foreign.json", [{"image_id": 1, "category_id": 9, "bbox": [0, 0, 9, 9], "score": 0.5}])
    assert main([str(foreign), "--annotations", str(gt), "--json", str(tmp_path / "f.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {foreign}: [0].category_id: 9 is not a category of {gt}") and err.count("\n") == 1
    assert not (tmp_path / "f.json").exists()
