"""The Serve application over real HTTP on 127.0.0.1 (tiny random-weight model): one query,
several, a video, a long file, every error answer, batching across concurrent requests (by
the counters), re-query from cached features equal to a fresh request, object storage in and
out, a bounded temporary area left empty, and a killed model replica replaced."""
from __future__ import annotations

import io
import os
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.ray.conftest import _free_port

TOKEN = "s3cret-tøken-voilà"  # not ASCII (à's UTF-8 ends in \xa0, which str.strip takes); sent as UTF-8, like curl
LSB = 2.0 / 32768  # two steps of 16-bit PCM


def _tone(sr: int, seconds: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    mono = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)
    return mono.astype(np.float32) if channels == 1 else np.stack([mono, 0.5 * mono]).astype(np.float32)


def _wav(wave: np.ndarray, sr: int, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave.T if wave.ndim == 2 else wave, sr, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def jobs_bucket(s3_server):
    """The bucket whose in/ and out/ prefixes the "clipsep" and "long" apps' separate-uri may use."""
    return s3_server.make_bucket("jobs")


@pytest.fixture(scope="module")
def server(ray_local, tiny_checkpoint, tmp_path_factory, jobs_bucket):
    from ray import serve

    from clipsep_ray.serve.app import build_app

    port = _free_port()
    temp = tmp_path_factory.mktemp("serve-temp")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    common = {"checkpoint": tiny_checkpoint, "device": "cpu", "num_cpus": 0.25, "ingress_cpus": 0.1}
    serve.run(build_app({**common, "max_upload_mb": 8, "max_seconds": 120, "max_batch_size": 16,
                         "batch_wait_s": 0.2, "temp_dir": str(temp),
                         "allow_uris": [f"s3://{jobs_bucket}/in/", f"s3a://{jobs_bucket}/out"]}),
              name="clipsep", route_prefix="/")
    os.environ["CLIPSEP_TOKEN"] = TOKEN  # read by build_app for the second application only
    try:
        serve.run(build_app({**common, "max_batch_size": 1, "max_ongoing_requests": 1, "max_queued_requests": 1}),
                  name="tight", route_prefix="/tight")
    finally:
        del os.environ["CLIPSEP_TOKEN"]
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=120) as client:
        yield client, temp
    serve.shutdown()


def _separate(client, data: bytes, queries, name="in.wav", path="/v1/separate", headers=None, **fields):
    form = {"query": list(queries), **{k: str(v) for k, v in fields.items()}}
    return client.post(path, files={"file": (name, data)}, data=form, headers=headers)


def _zip(resp) -> dict[str, tuple[np.ndarray, int]]:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/zip"
    out = {}
    with zipfile.ZipFile(io.BytesIO(resp.content)) as zf:
        for name in zf.namelist():
            wave, sr = sf.read(io.BytesIO(zf.read(name)), dtype="float32")
            out[name] = (wave, sr)
    return out


def _error(resp, status: int, code: str | None = None) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()["error"]
    if code:
        assert body["code"] == code, body
    return body["message"]


def test_health_info_docs_and_page(server, tiny_checkpoint):
    from clipsep_ray.models.checkpoint import read_checkpoint

    client, _ = server
    assert client.get("/healthz").json() == {"status": "ok"}
    info = client.get("/v1/info").json()
    assert info["checkpoint_sha256"] == read_checkpoint(tiny_checkpoint)["sha256"]  # which file the replica runs
    assert info["sample_rate"] == 8000 and info["model"]["text_queries"] is True
    assert info["limits"]["max_upload_mb"] == 8 and info["limits"]["max_seconds"] == 120
    assert {"batches", "items", "max_batch_items"} <= set(info["batching"])
    assert info["version"] and info["auth"] is False
    assert "/v1/separate" in client.get("/openapi.json").json()["paths"]
    _error(client.get("/v1/separate"), 405, "method_not_allowed")  # FastAPI's own answers, in the API's shape
    for path in ("/healthz", "/"):  # monitors probe with HEAD
        head = client.head(path)
        assert head.status_code == 200 and head.content == b""
    _error(client.post("/v1/nothing-here"), 404, "not_found")
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "<script" in page.text
    assert "canvas" in page.text or "canvas" in client.get("/static/app.js").text
    for text in (page.text, client.get("/static/app.js").text, client.get("/static/style.css").text):
        assert "cdn" not in text.lower() and "https://" not in text and "http://" not in text  # works offline


def test_one_query_without_residual_is_the_audio_file(server):
    client, _ = server
    wave = _tone(16000, 2.3)
    resp = _separate(client, _wav(wave, 16000), ["dog barking"], residual="false")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "audio/wav" and resp.headers["x-separation-id"]
    stem, sr = sf.read(io.BytesIO(resp.content), dtype="float32")
    assert sr == 16000 and stem.shape == wave.shape and np.abs(stem).max() > 0


def test_several_queries_stereo_flac_out(server):
    client, _ = server
    wave = _tone(44100, 1.7, channels=2)
    files = _zip(_separate(client, _wav(wave, 44100, "FLAC"), ["dog barking", "Rain!"], name="b.flac",
                           format="flac"))
    assert set(files) == {"dog_barking.flac", "rain.flac", "residual.flac"}
    for w, sr in files.values():
        assert sr == 44100 and w.shape == (wave.shape[1],)
    total = sum(w for w, _ in files.values())
    assert np.abs(total - wave.mean(axis=0)).max() < 3 * LSB  # stems + residual = the (mono) input
    assert not np.allclose(files["dog_barking.flac"][0], files["rain.flac"][0])


def test_video_and_long_file(server, tmp_path):
    from clipsep_ray.synth.videos import write_mp4

    client, _ = server
    write_mp4(tmp_path / "clip.mp4", [np.zeros((32, 32, 3), np.uint8)] * 2, 1, _tone(16000, 2.0), 16000)
    files = _zip(_separate(client, (tmp_path / "clip.mp4").read_bytes(), ["engine"], name="clip.mp4"))
    assert set(files) == {"engine.wav", "residual.wav"} and files["engine.wav"][1] == 16000
    long = _tone(8000, 100.0, seed=3)  # 100 s: many window groups through the batch
    files = _zip(_separate(client, _wav(long, 8000), ["dog"]))
    assert files["dog.wav"][0].shape == long.shape and files["residual.wav"][1] == 8000


def test_concurrent_requests_are_batched(server):
    client, _ = server
    before = client.get("/v1/info").json()["batching"]
    data = _wav(_tone(8000, 2.0, seed=5), 8000)
    with ThreadPoolExecutor(8) as pool:
        resps = list(pool.map(lambda i: _separate(client, data, [f"sound {i}"]), range(8)))
    assert all(r.status_code == 200 for r in resps)
    after = client.get("/v1/info").json()["batching"]
    batches, items = after["batches"] - before["batches"], after["items"] - before["items"]
    assert items == 8  # one group of windows per 2 s request
    assert batches < items and after["max_batch_items"] >= 2  # several requests shared a U-Net call


def test_requery_equals_a_fresh_request_and_unknown_id_is_404(server):
    client, _ = server
    data = _wav(_tone(22050, 3.1, seed=7), 22050)
    first = _separate(client, data, ["dog barking"])
    sid = first.headers["x-separation-id"]
    again = client.post(f"/v1/separations/{sid}", json={"queries": ["rain", "dog barking"]})
    assert again.headers["x-separation-id"] == sid
    # Server-Timing names each stage: the upload's decode, the wait for the replica and the replica's parts
    stages = {p.split(";")[0].strip() for p in first.headers["server-timing"].split(",")}
    assert stages == {"decode", "model", "queries", "separate", "encode"}
    stages = {p.split(";")[0].strip() for p in again.headers["server-timing"].split(",")}
    assert stages == {"model", "queries", "separate", "encode"}
    re_files, fresh_files = _zip(again), _zip(_separate(client, data, ["rain", "dog barking"]))
    assert set(re_files) == set(fresh_files) == {"rain.wav", "dog_barking.wav", "residual.wav"}
    for name in re_files:
        assert np.abs(re_files[name][0] - fresh_files[name][0]).max() <= LSB
    one = client.post(f"/v1/separations/{sid}", json={"queries": ["rain"], "residual": False, "format": "flac"})
    assert one.headers["content-type"] == "audio/flac"
    assert np.abs(sf.read(io.BytesIO(one.content), dtype="float32")[0] - re_files["rain.wav"][0]).max() <= LSB
    _error(client.post(f"/v1/separations/{sid.split('.')[0]}.0123", json={"queries": ["rain"]}), 404,
           "unknown_separation")
    _error(client.post("/v1/separations/nope", json={"queries": ["rain"]}), 404)
    _error(client.post(f"/v1/separations/{sid}", json={"queries": []}), 422, "no_query")


def test_requery_with_two_replicas_reaches_the_replica_that_holds_the_upload(server, tiny_checkpoint):
    """Each upload's features live in one replica; re-queries of uploads held by either replica
    all succeed and equal that replica's fresh answer (the multiplexed id routes them; a miss is
    retried), whichever of two ingress replicas takes them. Compared per replica: the test
    checkpoint's text tower is randomly initialised in each replica, so two replicas embed a text
    differently."""
    from ray import serve

    from clipsep_ray.serve.app import build_app

    client, _ = server
    serve.run(build_app({"checkpoint": tiny_checkpoint, "device": "cpu", "num_cpus": 0.2, "ingress_cpus": 0.1,
                         "replicas": 2, "ingress_replicas": 2}), name="multi", route_prefix="/multi")
    try:
        running = {name: d.replica_states.get("RUNNING", 0)
                   for name, d in serve.status().applications["multi"].deployments.items()}
        assert running == {"ClipSepIngress": 2, "ClipSepModel": 2}
        data = _wav(_tone(8000, 1.5, seed=11), 8000)
        held: dict[str, tuple[str, dict]] = {}  # replica tag -> (an id it holds, its fresh answer)
        for _ in range(24):
            resp = _separate(client, data, ["rain", "dog"], path="/multi/v1/separate")
            sid = resp.headers["x-separation-id"]
            held.setdefault(sid.split(".")[0], (sid, _zip(resp)))
            if len(held) == 2:
                break
        assert len(held) == 2, f"24 uploads all went to one replica: {sorted(held)}"
        time.sleep(1.0)  # routers learn which replica holds an id from Serve's controller, asynchronously
        for sid, fresh in held.values():
            for _ in range(4):  # every re-query, not a lucky one
                again = _zip(client.post(f"/multi/v1/separations/{sid}", json={"queries": ["dog", "rain"]}))
                assert set(again) == set(fresh) == {"rain.wav", "dog.wav", "residual.wav"}
                for name in fresh:
                    assert np.abs(again[name][0] - fresh[name][0]).max() <= LSB
    finally:
        serve.delete("multi")


def test_upload_limits(server):
    client, _ = server
    big = b"\0" * (9 * 2**20)
    _error(_separate(client, big, ["dog"]), 413, "upload_too_large")

    def chunks():  # no Content-Length: the limit must hold while reading
        boundary = b"--xx\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n"
        yield boundary
        for _ in range(40):
            yield b"\0" * 2**18

    resp = client.post("/v1/separate", content=chunks(),
                       headers={"content-type": "multipart/form-data; boundary=xx"})
    _error(resp, 413, "upload_too_large")
    _error(_separate(client, _wav(_tone(8000, 125.0), 8000), ["dog"]), 413, "audio_too_long")
    # JSON bodies are bounded too: by a Content-Length that says more, and while reading without one
    _error(client.post("/v1/separations/x", content=b"{" + b" " * 2**20 + b"}",
                       headers={"content-type": "application/json"}), 413, "body_too_large")
    _error(client.post("/v1/separate-uri", content=(b" " * 2**14 for _ in range(64)),
                       headers={"content-type": "application/json"}), 413, "body_too_large")


def test_a_rate_the_resampler_cannot_take_is_400_not_a_crash(server):
    client, _ = server
    resp = _separate(client, _wav(_tone(8000, 0.5), 48001), ["dog"])  # 48,001 Hz: no common factor with 8 kHz
    assert "48001 Hz cannot be resampled" in _error(resp, 400, "unsupported_sample_rate")
    assert client.get("/healthz").status_code == 200  # the replica is fine


@pytest.mark.parametrize("queries,fields,code", [
    ([], {}, "no_query"),
    ([f"q{i}" for i in range(9)], {}, "too_many_queries"),
    (["dog", "  "], {}, "empty_query"),
    (["x" * 201], {}, "query_too_long"),
    (["dog", "dog"], {}, "repeated_query"),
    (["residual"], {}, "reserved_query"),
    (["dog"], {"format": "mp3"}, "bad_format"),
    (["dog"], {"residual": "maybe"}, "bad_residual"),
])
def test_bad_parameters_are_422(server, queries, fields, code):
    client, _ = server
    _error(_separate(client, _wav(_tone(8000, 0.5), 8000), queries, **fields), 422, code)


def test_no_file_and_undecodable_audio(server):
    client, _ = server
    _error(client.post("/v1/separate", data={"query": "dog"}, files={"other": ("x", b"1")}), 422, "no_file")
    msg = _error(_separate(client, os.urandom(3000), ["dog"], name="broken.wav"), 400, "undecodable_audio")
    assert "does not decode" in msg and len(msg) > 30


def test_awkward_uploads_get_a_clear_4xx(server):
    """Each of these was a 500 or unbounded memory: a non-finite sample, a rate past 384 kHz, a high
    rate's long file (the length limit counts samples), a multipart boundary over 256 bytes."""
    client, _ = server
    wave = _tone(8000, 1.0)
    wave[4000] = np.nan
    buf = io.BytesIO()
    sf.write(buf, wave, 8000, format="WAV", subtype="FLOAT")
    msg = _error(_separate(client, buf.getvalue(), ["dog"]), 400, "undecodable_audio")
    assert "NaN or infinite samples (the first at 0.500 s)" in msg
    buf = io.BytesIO()
    sf.write(buf, np.zeros(4000, np.float32), 400_000, format="WAV")
    assert "400,000 Hz is not taken here" in _error(_separate(client, buf.getvalue(), ["dog"]), 400,
                                                    "unsupported_sample_rate")
    buf = io.BytesIO()  # 61 s at 96 kHz against max_seconds 120: 60 s at that rate (a few KB of FLAC)
    sf.write(buf, np.zeros(61 * 96_000, np.int16), 96_000, format="FLAC")
    assert "longer than 60 s (at 96,000 Hz" in _error(_separate(client, buf.getvalue(), ["dog"], name="x.flac"),
                                                      413, "audio_too_long")
    boundary = "b" * 300
    body = f"--{boundary}\r\nContent-Disposition: form-data; name=\"query\"\r\n\r\ndog\r\n--{boundary}--\r\n"
    resp = client.post("/v1/separate", content=body.encode(),
                       headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert "Boundary length" in _error(resp, 422, "bad_request")  # and its request folder is gone (next test)


def test_a_unicode_query_names_its_single_file_answer(server):
    client, _ = server
    resp = _separate(client, _wav(_tone(8000, 0.5), 8000), ["犬", "café"][:1], residual="false")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-disposition"] == \
        "attachment; filename=\"_.wav\"; filename*=UTF-8''%E7%8A%AC.wav"


def test_temp_area_is_empty_after_requests(server):
    _, temp = server
    areas = [os.path.join(temp, d) for d in os.listdir(temp)]
    assert len(areas) == 2 and all(os.listdir(a) == [] for a in areas)  # the ingress's uploads, the model's outputs


def test_token_and_full_queue(server):
    client, _ = server
    data = _wav(_tone(8000, 20.0, seed=9), 8000)
    _error(_separate(client, data, ["dog"], path="/tight/v1/separate"), 401, "unauthorized")
    _error(_separate(client, data, ["dog"], path="/tight/v1/separate", headers={"Authorization": "Bearer no"}),
           401)
    _error(client.get("/tight/v1/info"), 401)
    for path, body in (("/tight/v1/separations/x", b'{"queries": ["dog"]}'), ("/tight/v1/separate-uri", b"not json")):
        _error(client.post(path, content=body, headers={"content-type": "application/json"}), 401)  # before the body
    job = {"input": "s3://b/in.wav", "output": "s3://b/out", "queries": ["dog"]}
    _error(client.post("/tight/v1/separate-uri", json=job, headers={"Authorization": f"Bearer {TOKEN}".encode("utf-8")}),
           403, "uri_jobs_disabled")  # started without --allow-uri
    assert client.get("/tight/healthz").status_code == 200  # probes need no token
    auth = {"Authorization": f"Bearer {TOKEN}".encode("utf-8")}
    with ThreadPoolExecutor(8) as pool:
        resps = list(pool.map(lambda i: _separate(client, data, ["dog"], path="/tight/v1/separate",
                                                  headers=auth), range(8)))
    codes = sorted(r.status_code for r in resps)
    assert 200 in codes and 503 in codes and set(codes) <= {200, 503}, codes
    busy = next(r for r in resps if r.status_code == 503)
    assert busy.headers["retry-after"] and busy.json()["error"]["code"] == "busy"


def test_separate_uri(server, s3_server, jobs_bucket, s3_bucket, tmp_path):
    """Also: only under the prefixes the server was started with (before, any bucket and key the
    service's credentials reach could be copied out or overwritten), and no '?' in a name (an
    output's '?versionId=' put every stem in one key)."""
    client, _ = server
    s3_server.client().put_object(Bucket=s3_bucket, Key="in/song.wav", Body=_wav(_tone(16000, 1.0), 16000))
    for job, code in (({"input": f"s3://{s3_bucket}/in/song.wav", "output": f"s3://{jobs_bucket}/out/a"},
                       "uri_not_allowed"),
                      ({"input": f"s3://{jobs_bucket}/in/song.wav", "output": f"s3://{s3_bucket}/loot"},
                       "uri_not_allowed"),
                      ({"input": f"s3://{jobs_bucket}/in/song.wav", "output": f"s3://{jobs_bucket}/outer/a"},
                       "uri_not_allowed"),
                      ({"input": f"s3://{jobs_bucket}/in/song.wav", "output": f"s3://{jobs_bucket}/out/o8?versionId=a"},
                       "bad_uri"),
                      ({"input": f"s3://{jobs_bucket}/in/../secret/song.wav", "output": f"s3://{jobs_bucket}/out/b"},
                       "bad_uri")):
        _error(client.post("/v1/separate-uri", json={**job, "queries": ["dog"]}),
               422 if code == "bad_uri" else 403, code)
    assert not s3_server.client().list_objects_v2(Bucket=s3_bucket, Prefix="loot").get("KeyCount")
    assert client.get("/v1/info").json()["allow_uris"] == [f"s3://{jobs_bucket}/in/", f"s3a://{jobs_bucket}/out"]
    wave = _tone(16000, 3.0, seed=11)
    s3_server.client().put_object(Bucket=jobs_bucket, Key="in/song.wav", Body=_wav(wave, 16000))
    resp = client.post("/v1/separate-uri", json={"input": f"s3://{jobs_bucket}/in/song.wav",
                                                  "output": f"s3://{jobs_bucket}/out/song", "queries": ["dog"]})
    assert resp.status_code == 200, resp.text
    outputs = resp.json()["outputs"]
    assert set(outputs) == {"dog", "residual"}
    body = s3_server.client().get_object(Bucket=jobs_bucket, Key="out/song/dog.wav")["Body"].read()
    stem, sr = sf.read(io.BytesIO(body), dtype="float32")
    assert sr == 16000 and stem.shape == wave.shape
    _error(client.post("/v1/separate-uri", json={"input": f"s3://{jobs_bucket}/in/none.wav",
                                                  "output": f"s3://{jobs_bucket}/out/x", "queries": ["dog"]}), 400)
    s3_server.client().put_object(Bucket=jobs_bucket, Key="in/long.wav", Body=_wav(_tone(8000, 125.0), 8000))
    _error(client.post("/v1/separate-uri", json={"input": f"s3://{jobs_bucket}/in/long.wav",  # max_seconds 120
                                                  "output": f"s3://{jobs_bucket}/out/long", "queries": ["dog"]}),
           413, "audio_too_long")
    assert client.get("/v1/info").json()["temp"]["used_bytes"] == 0  # the outputs' local copies are gone
    for uri in ("/etc/passwd", "local:///etc/passwd", "FILE:///etc/passwd", "simplecache::s3://b/k",
                "http://169.254.169.254/latest", "memory://x"):  # never this host's files nor other hosts
        _error(client.post("/v1/separate-uri", json={"input": uri, "output": f"s3://{jobs_bucket}/out/y",
                                                      "queries": ["dog"]}), 422, "bad_uri")
    _error(client.post("/v1/separate-uri", json={"input": f"s3://{jobs_bucket}/in/song.wav", "output": "local:///tmp/x",
                                                  "queries": ["dog"]}), 422, "bad_uri")
    _error(client.post("/v1/separate-uri", json={"input": 3}), 422, "bad_request")
    from clipsep_ray.audio.io import load_audio
    from clipsep_ray.synth.videos import write_mp4

    # A container whose length is only declared (PyAV): its area is its declared length plus slack
    write_mp4(tmp_path / "clip.mp4", [np.zeros((32, 32, 3), np.uint8)] * 2, 1, _tone(16000, 2.0), 16000)
    s3_server.client().put_object(Bucket=jobs_bucket, Key="in/clip.mp4", Body=(tmp_path / "clip.mp4").read_bytes())
    resp = client.post("/v1/separate-uri", json={"input": f"s3://{jobs_bucket}/in/clip.mp4",
                                                  "output": f"s3://{jobs_bucket}/out/clip", "queries": ["dog"]})
    assert resp.status_code == 200, resp.text
    stem, sr = load_audio(resp.json()["outputs"]["dog"])
    assert sr == 16000 and len(stem) == len(load_audio(str(tmp_path / "clip.mp4"))[0])


def test_work_stops_when_its_client_goes_away(server, s3_server, jobs_bucket, tiny_checkpoint, tmp_path):
    """A client that leaves a long separate-uri: the replica stops at its next block and frees its
    temporary area, and nothing is written to the output prefix (had it run on, its outputs would
    be uploaded before the area is freed). One that leaves /v1/separate: the U-Net stops at its next
    group of windows (it ran on for 318 of 782). An upload too long for the re-query cache
    (cache_mb 1 here) is answered without being held whole, and its re-query is a 404."""
    from ray import serve

    from clipsep_ray.serve.app import build_app

    client, _ = server
    s3_server.client().put_object(Bucket=jobs_bucket, Key="in/hour.wav", Body=_wav(_tone(8000, 3600.0, seed=12), 8000))
    serve.run(build_app({"checkpoint": tiny_checkpoint, "device": "cpu", "num_cpus": 0.25, "ingress_cpus": 0.1,
                         "max_seconds": 7200, "temp_dir": str(tmp_path), "temp_mb": 200,
                         "allow_uris": f"s3://{jobs_bucket}/in,s3://{jobs_bucket}/out", "cache_mb": 1}),
              name="long", route_prefix="/long")
    try:
        job = {"input": f"s3://{jobs_bucket}/in/hour.wav", "output": f"s3://{jobs_bucket}/out/hour", "queries": ["dog"]}
        t0 = time.time()
        with pytest.raises(httpx.ReadTimeout):
            client.post("/long/v1/separate-uri", json=job, timeout=3.0)
        used = [client.get("/long/v1/info").json()["temp"]["used_bytes"]]
        while used[-1] and time.time() - t0 < 120:
            time.sleep(0.2)
            used.append(client.get("/long/v1/info").json()["temp"]["used_bytes"])
        freed = time.time() - t0
        assert used[0] > 0, "the work had ended before the client left: the test proves nothing"
        assert used[-1] == 0, "the temporary area was never freed"
        listed = s3_server.client().list_objects_v2(Bucket=jobs_bucket, Prefix="out/hour").get("KeyCount", 0)
        assert listed == 0, "the separation ran on after its client left"
        print(f"[separate-uri] client left at 3 s, area freed at {freed:.1f} s")
        # the replica still answers: the stop ended one request, not the replica
        assert client.post("/long/v1/separate-uri", json={**job, "input": f"s3://{jobs_bucket}/in/none.wav"}
                           ).status_code == 400
        # 9 outputs of an hour at 8 kHz (494 MiB) can never fit the 200 MB area: a 413, not a 503 to retry for ever
        msg = _error(client.post("/long/v1/separate-uri", json={**job, "queries": [f"q{i}" for i in range(8)]}),
                     413, "too_large_for_temp_area")
        assert "needs 494 MB of temporary space; the server's area holds 200 MB" in msg

        def windows() -> int:
            return client.get("/long/v1/info").json()["batching"]["windows"]

        data, before = _wav(_tone(8000, 1200.0, seed=13), 8000), windows()
        with pytest.raises(httpx.ReadTimeout):
            client.post("/long/v1/separate", files={"file": ("in.wav", data)}, data={"query": ["dog"]}, timeout=2.0)
        seen = [windows()]
        while len(seen) < 2 or seen[-1] != seen[-2]:
            time.sleep(1.0)
            seen.append(windows())
        resp = _separate(client, data, ["dog"], path="/long/v1/separate")
        assert resp.status_code == 200, resp.text
        whole, left = windows() - seen[-1], seen[-1] - before
        print(f"[separate] client left at 2 s: {left} of {whole} windows were run")
        assert 0 < left < 0.8 * whole, "the work ran on after its client left"
        _error(client.post(f"/long/v1/separations/{resp.headers['x-separation-id']}", json={"queries": ["cat"]}),
               404, "unknown_separation")
    finally:
        serve.delete("long")


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TRACKS_READY = """() => {
  const tracks = [...document.querySelectorAll('#tracks .track')];
  return tracks.length >= 3 && tracks.every(t => {
    const a = t.querySelector('audio'), c = t.querySelector('canvas');
    return a.readyState >= 1 && a.duration > 0 && c && c.dataset.drawn === 'true';
  });
}"""
LIT_PIXELS = """() => [...document.querySelectorAll('#tracks canvas')].map(c => {
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] > 0) n++;
  return n;
})"""


def test_web_page_in_headless_chromium(server, tmp_path):
    """Upload a file, type a query: the input, the stem and the residual are playable, each with
    a drawn spectrogram; other queries on the same upload work without uploading again."""
    from playwright.sync_api import sync_playwright

    client, _ = server
    song = tmp_path / "song.wav"
    song.write_bytes(_wav(_tone(16000, 2.0, seed=13), 16000))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(str(client.base_url) + "/")
            page.set_input_files("#file", str(song))
            page.fill("#queries", "dog barking")
            page.click("#go")
            page.wait_for_function(TRACKS_READY, timeout=90_000)
            names = page.eval_on_selector_all("#tracks h3", "els => els.map(e => e.textContent)")
            assert names == ["input: song.wav", "dog_barking.wav", "residual.wav"]
            durations = page.eval_on_selector_all("#tracks audio", "els => els.map(a => a.duration)")
            assert all(abs(d - 2.0) < 0.01 for d in durations), durations
            assert all(n > 100 for n in page.evaluate(LIT_PIXELS))
            assert page.get_attribute("#tracks a[download]", "href").startswith("blob:")
            sid = page.text_content("#sid")
            page.fill("#queries", "rain")
            page.click("#again")
            page.wait_for_function("() => [...document.querySelectorAll('#tracks h3')].some(e => "
                                   "e.textContent === 'rain.wav')", timeout=60_000)
            page.wait_for_function(TRACKS_READY, timeout=60_000)
            assert page.text_content("#sid") == sid and not errors, errors
        finally:
            browser.close()


def test_killed_model_replica_is_replaced(server):
    import ray

    client, _ = server
    info = client.get("/v1/info").json()
    before = info["replica"]
    ray.kill(ray.get_actor(info["actor"], namespace="serve"), no_restart=True)
    data = _wav(_tone(8000, 1.0), 8000)
    deadline, resp = time.time() + 90, None
    while time.time() < deadline:
        resp = _separate(client, data, ["dog"], residual="false")
        if resp.status_code == 200:
            break
        assert resp.status_code in (500, 503), resp.text
        time.sleep(1)
    assert resp is not None and resp.status_code == 200, resp.text
    assert client.get("/healthz").status_code == 200
    assert client.get("/v1/info").json()["replica"] != before


def test_healthz_answers_from_a_fresh_probe_and_fails_once_the_model_does(tiny_checkpoint):
    """The model class itself (no Serve): /healthz reuses a probe that passed within HEALTH_FRESH_S
    (a flood of it runs no U-Net), and a probe that fails (Serve's periodic check_health) makes
    the next /healthz probe again and fail too."""
    import asyncio

    import torch

    from clipsep_ray.serve.model import ClipSepModel

    model = ClipSepModel(tiny_checkpoint, device="cpu")  # its constructor probes once
    calls = []
    separate = model.sep.separate
    model.sep.separate = lambda *a, **k: calls.append(1) or separate(*a, **k)
    assert all(asyncio.run(model.healthy()) for _ in range(5)) and calls == []
    with torch.no_grad():
        next(model.sep.model.parameters()).fill_(float("nan"))
    with pytest.raises(RuntimeError, match="non-finite"):
        model.check_health()
    with pytest.raises(RuntimeError, match="non-finite"):
        asyncio.run(model.healthy())
    assert len(calls) == 2


def test_a_model_with_fixed_outputs_is_refused_at_start(tmp_path):
    """The model class itself (no Serve): a PIT checkpoint's stems are source_1..., never the
    queries, so every request failed (a KeyError, 500, after the U-Net) while /healthz said 200."""
    from clipsep_ray.config import load_config
    from clipsep_ray.models.checkpoint import save_checkpoint
    from clipsep_ray.models.registry import build_model
    from clipsep_ray.serve.model import ClipSepModel

    cfg = load_config("tiny", ["model.arch=pit", "model.unet_width=4", "query.clip_pretrained="])
    ckpt = save_checkpoint(str(tmp_path / "pit.pt"), build_model(cfg.model), cfg)
    with pytest.raises(ValueError, match=r"pit.pt separates fixed sources \(source_1, source_2\), not queries"):
        ClipSepModel(ckpt, device="cpu")
