"""The archive job's listing: sizes where the listing gives them, and the largest inputs first."""
from __future__ import annotations

from clipsep_ray.batch.inputs import ArchiveInput, largest_first, list_inputs


def test_a_folder_lists_sizes_and_the_largest_inputs_go_first(tmp_path):
    sizes = {"small.wav": 10, "sub/huge.flac": 5000, "mid.mp4": 700, "tie_a.ogg": 300, "tie_b.ogg": 300}
    for rel, n in sizes.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x" * n)
    (tmp_path / "notes.txt").write_bytes(b"not an input")
    (tmp_path / "b.txt").write_bytes(b"not an input")
    (tmp_path / "README").write_bytes(b"not an input")
    for rel in ("talk.wma", "tape.mpg", "cam.mts", "voice.amr", "old.caf"):  # containers FFmpeg decodes
        (tmp_path / "more" / rel).parent.mkdir(exist_ok=True)
        (tmp_path / "more" / rel).write_bytes(b"x")
        sizes["more/" + rel] = 1

    inputs, ignored = list_inputs(str(tmp_path))
    assert ignored == {".txt": 2, "(none)": 1}
    assert {i.relative_path: i.size for i in inputs} == sizes
    order = [i.relative_path for i in largest_first(inputs)]
    assert order[:5] == ["sub/huge.flac", "mid.mp4", "tie_a.ogg", "tie_b.ogg", "small.wav"]  # ties keep listing order


def test_a_list_of_uris_has_no_sizes_and_those_go_last_in_listing_order(tmp_path):
    (tmp_path / "z.wav").write_bytes(b"x" * 100)
    (tmp_path / "list.csv").write_text(f"uri\n{tmp_path / 'z.wav'}\n{tmp_path / 'a.wav'}\n")
    listed, _ = list_inputs(str(tmp_path / "list.csv"))
    assert [i.size for i in listed] == [None, None]
    (tmp_path / "bare.csv").write_text(f"{tmp_path / 'z.wav'}\n{tmp_path / 'a.wav'}\n")  # `ls > list.csv`: no header
    assert [i.uri for i in list_inputs(str(tmp_path / "bare.csv"))[0]] == [i.uri for i in listed]
    known = ArchiveInput("file:///big.wav", "big.wav", "big", size=1)
    order = largest_first([*listed, known])
    assert [i.relative_path for i in order] == ["big.wav", *[i.relative_path for i in listed]]


def test_output_folders_stay_inside_readable_and_off_the_jobs_own_names():
    from clipsep_ray.batch.inputs import assign_output_dirs

    rels = ["_tmp.wav", "_TMP/x.wav", "_job.json.mp3", "_manifest.parquet.wav", "_manifest.csv.flac", "a/../b.wav",
            ".hidden.wav", "back\\slash.wav", "Song.wav", "song.flac", "日本 語.wav", "é" * 200 + ".wav",
            "_tmp~.ogg"]
    out = {i.relative_path: i.out_dir for i in assign_output_dirs([(f"/in/{r}", r, None) for r in rels])}
    # The job's own names at the top (the temporary folder, the job record, the manifests) are never an input's
    assert out["_tmp.wav"].startswith("_tmp~") and out["_TMP/x.wav"] == "_TMP~/x"
    assert out["_job.json.mp3"] == "_job.json~" and out["_manifest.parquet.wav"] == "_manifest.parquet~"
    assert out["_manifest.csv.flac"] == "_manifest.csv~"
    assert out["a/../b.wav"] == "a/_/b" and out[".hidden.wav"] == "hidden" and out["back\\slash.wav"] == "back_slash"
    assert out["日本 語.wav"] == "日本 語"  # unicode and spaces kept readable
    assert out["Song.wav"] != out["song.flac"]  # case-insensitive stores collide too
    assert out["Song.wav"].lower().startswith("song~")
    assert out["_tmp.wav"] != out["_tmp~.ogg"]  # an escaped name and a real one both survive
    for d in out.values():
        parts = d.split("/")
        assert all(p and not p.startswith(".") and p != ".." and len(p.encode()) <= 130 for p in parts), d
        assert parts[0].lower() not in {"_tmp", "_job.json", "_manifest.parquet", "_manifest.csv"}


def test_listings_that_cannot_give_one_row_per_input_are_refused(tmp_path):
    import pytest

    from clipsep_ray.batch.inputs import InputError

    (tmp_path / "a.wav").write_bytes(b"x")
    with pytest.raises(InputError, match="OUTPUT_URI is INPUT_URI"):
        list_inputs(str(tmp_path), str(tmp_path) + "/")
    listing = tmp_path / "list.csv"
    listing.write_text("uri\ns3://b/x.wav\ns3a://b/x.wav\n")
    with pytest.raises(InputError, match="same path 'b/x.wav'"):
        list_inputs(str(listing))


def test_an_unreachable_endpoint_is_a_usage_error_naming_the_input(monkeypatch):
    """botocore's EndpointConnectionError went past the CLI as a traceback (exit 1)."""
    import pytest

    from clipsep_ray.batch.inputs import InputError

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's retries: 13 s of the test's time otherwise
    with pytest.raises(InputError, match=r"input s3://bkt/in cannot be listed: EndpointConnectionError"):
        list_inputs("s3://bkt/in", endpoint="http://127.0.0.1:1")


def test_linked_folders_are_walked_once_and_a_dangling_link_is_an_input(tmp_path):
    """A symbolic link to a folder was listed as one extensionless file: its recordings were left
    out as "ignored"."""
    import os

    (tmp_path / "disk2").mkdir()
    (tmp_path / "disk2" / "b.wav").write_bytes(b"x" * 20)
    root = tmp_path / "archive"
    (root / "real").mkdir(parents=True)
    (root / "real" / "a.wav").write_bytes(b"x" * 10)
    os.symlink(tmp_path / "disk2", root / "linked")
    os.symlink(root, root / "real" / "loop")  # a link back up: walked once, not for ever
    os.symlink(tmp_path / "gone.wav", root / "dangling.wav")
    os.symlink(root / "real", root / "alias")  # reached by its own name first, whatever the listing order
    out = tmp_path / "out"
    (out / "x").mkdir(parents=True)
    (out / "x" / "dog.flac").write_bytes(b"x")
    os.symlink(out, root / "results")  # the outputs, linked inside the inputs: never inputs themselves
    inputs, ignored = list_inputs(str(root), str(out))
    assert {i.relative_path: i.size for i in inputs} == {"real/a.wav": 10, "linked/b.wav": 20, "dangling.wav": None}
    assert ignored == {}
