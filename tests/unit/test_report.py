"""The demo report's choices: examples near the median, not by position; timings as durations."""
from __future__ import annotations

from clipsep_ray.report import html_page, near_median


def test_near_median_picks_typical_records_one_per_label():
    records = [{"clip_id": i, "label": lab, "sdri": v} for i, (lab, v) in
               enumerate([("a", -5.0), ("b", 1.0), ("a", 4.0), ("c", 4.5), ("b", 5.0), ("d", 20.0), ("a", 5.2)])]
    picked = near_median(records, 3)
    # median 4.5: c (0.0), a at 4.0 (0.5), b at 5.0 (0.5); a at 5.2 is a second "a" and waits
    assert [r["clip_id"] for r in picked] == [3, 2, 4]
    # every label once before any twice, then the rest by distance: the farthest comes last
    assert [r["clip_id"] for r in near_median(records, 10)] == [3, 2, 4, 5, 6, 1, 0]
    assert near_median([{"label": "a", "sdri": float("nan")}], 1) == []


def test_page_shows_timings_as_a_table_and_each_example_score():
    ex = [{"name": "example1_dog", "query": "dog", "sdri": 7.25, "median_sdri": 7.0,
           "rows": [{"caption": "mixture", "audio": "a.wav", "picture": "a.png"}]}]
    page = html_page("t", "| a | b |\n|---|---|\n| 1 | 2 |", ex, ["note"], timings={"data": 12.34, "train": 600.0})
    assert "<tr><td>data</td><td>12.3</td></tr>" in page and "<tr><td>train</td><td>600.0</td></tr>" in page
    assert "SDRi 7.25 dB" in page and "median over the test mixtures: 7.00 dB" in page
    assert "{" not in page.split("<h2>Stage timings</h2>")[1].split("</table>")[0]
