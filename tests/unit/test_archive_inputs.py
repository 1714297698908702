"""The archive job's listing: sizes where the listing gives them, and the largest inputs first."""
from __future__ import annotations

from clipsep_ray.batch.inputs import ArchiveInput, largest_first, list_inputs


def test_a_folder_lists_sizes_and_the_largest_inputs_go_first(tmp_path):
    sizes = {"small.wav": 10, "sub/huge.flac": 5000, "mid.mp4": 700, "tie_a.ogg": 300, "tie_b.ogg": 300}
    for rel, n in sizes.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x" * n)
    (tmp_path / "notes.txt").write_bytes(b"not an input")

    inputs, ignored = list_inputs(str(tmp_path))
    assert ignored == 1
    assert {i.relative_path: i.size for i in inputs} == sizes
    order = [i.relative_path for i in largest_first(inputs)]
    assert order == ["sub/huge.flac", "mid.mp4", "tie_a.ogg", "tie_b.ogg", "small.wav"]  # ties keep listing order


def test_a_list_of_uris_has_no_sizes_and_those_go_last_in_listing_order(tmp_path):
    (tmp_path / "z.wav").write_bytes(b"x" * 100)
    (tmp_path / "list.csv").write_text(f"uri\n{tmp_path / 'z.wav'}\n{tmp_path / 'a.wav'}\n")
    listed, _ = list_inputs(str(tmp_path / "list.csv"))
    assert [i.size for i in listed] == [None, None]
    known = ArchiveInput("file:///big.wav", "big.wav", "big", size=1)
    order = largest_first([*listed, known])
    assert [i.relative_path for i in order] == ["big.wav", *[i.relative_path for i in listed]]
