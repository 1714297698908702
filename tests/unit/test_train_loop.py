"""The plain-PyTorch parts of training: schedule, every variant's loss, state round trip, validation."""
import copy
import math

import pytest
import torch

from clipsep_ray.audio.stft import SpectralFrontEnd
from clipsep_ray.config import load_config
from clipsep_ray.models.registry import build_model
from clipsep_ray.models.clipsep import CLIPSep
from clipsep_ray.train.loop import ValSet, batch_loss, lr_factor, make_optimizer, restore_state, train_state, validate


SMALL = ["model.unet_width=4", "audio.clip_samples=8191"]  # 128 frames: fast on 2 cores


def test_schedule_warmup_decay_constant():
    c = load_config("paper").train
    assert lr_factor(0, c) == 0.0
    assert lr_factor(2500, c) == pytest.approx(0.5)
    assert lr_factor(5000, c) == pytest.approx(1.0)
    mid = (5000 + 100000) // 2
    assert lr_factor(mid, c) * c.lr == pytest.approx((1e-3 + 1e-4) / 2, rel=1e-3)
    assert lr_factor(100000, c) * c.lr == pytest.approx(1e-4)
    assert lr_factor(150000, c) * c.lr == pytest.approx(1e-4)


def test_hybrid_alternates_query_kinds():
    query_key = CLIPSep.training_column
    assert [query_key("hybrid", s) for s in range(4)] == ["image_query", "text_query", "image_query", "text_query"]
    assert query_key("image", 1) == "image_query" and query_key("text", 0) == "text_query"


def _batch(cfg, b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(cfg.audio.clip_samples) / cfg.audio.sample_rate
    freqs = torch.tensor([220.0, 440.0, 880.0, 1500.0])[:b]
    audio = 0.5 * torch.sin(2 * math.pi * freqs[:, None] * t[None])
    audio[1::2] = 0.3 * torch.randn(b // 2, cfg.audio.clip_samples, generator=g)  # noise-like rows
    q = torch.randn(b, cfg.model.embed_dim, generator=g) * 3
    return {"audio": audio, "image_query": q, "text_query": q + 0.1, "label_id": torch.arange(b),
            "clip_index": torch.arange(b)}


@pytest.mark.parametrize("overrides", [
    [], ["model.noise_heads=2"], ["train.mode=text"], ["train.mode=hybrid"],
    ["model.arch=labelsep", "model.num_labels=4"], ["model.arch=pit"],
])
def test_every_variant_learns_a_fixed_batch(overrides):
    cfg = load_config("tiny", overrides + SMALL + ["train.warmup_steps=0", "train.lr=0.003"])
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    fe = SpectralFrontEnd.from_config(cfg.audio)
    opt, sched = make_optimizer(model, cfg.train)
    batch = _batch(cfg)
    losses = []
    for step in range(16):
        g = torch.Generator().manual_seed(step % 2)  # two fixed mixing draws
        loss, metrics = batch_loss(model, fe, batch, cfg, step, g)
        assert math.isfinite(metrics["loss"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(metrics["loss"])
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4, losses
    if cfg.model.noise_heads:
        assert "noise_reg" in metrics and 0.0 <= metrics["arrangement_0"] <= 1.0


def test_missing_columns_are_named():
    cfg = load_config("tiny", ["train.mode=text"])
    model, fe = build_model(cfg.model), SpectralFrontEnd.from_config(cfg.audio)
    batch = _batch(cfg)
    del batch["text_query"]
    with pytest.raises(KeyError, match="text_query"):
        batch_loss(model, fe, batch, cfg, 0, torch.Generator())


def test_train_state_round_trip_continues_identically():
    cfg = load_config("tiny", SMALL)
    fe = SpectralFrontEnd.from_config(cfg.audio)
    batch = _batch(cfg)

    def run(model, opt, sched, g, steps):
        for step in range(steps):
            loss, _ = batch_loss(model, fe, batch, cfg, step, g)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        return loss.item()

    torch.manual_seed(0)
    m1 = build_model(cfg.model).train()
    o1, s1 = make_optimizer(m1, cfg.train)
    g1 = torch.Generator().manual_seed(5)
    run(m1, o1, s1, g1, 3)
    state = copy.deepcopy(train_state(o1, s1, 3, g1))  # as written to disk: no live references
    weights = {k: v.clone() for k, v in m1.state_dict().items()}
    ref = run(m1, o1, s1, g1, 2)

    m2 = build_model(cfg.model).train()
    m2.load_state_dict(weights)
    o2, s2 = make_optimizer(m2, cfg.train)
    g2 = torch.Generator()
    assert restore_state(state, o2, s2, g2) == 3
    assert run(m2, o2, s2, g2, 2) == pytest.approx(ref, rel=1e-5)
    assert s2.last_epoch == s1.last_epoch


def _scorable_model_and_val():
    """(cfg, an untrained tiny CLIPSep whose queries give distinct masks, a 4-pair ValSet)."""
    cfg = load_config("tiny", SMALL + ["inference.precision=fp32"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    # Untrained with the published init every query gets the same mask, and the two estimates
    # are the same scaled mixture, which BSSEval cannot score: give the queries distinct masks.
    torch.nn.init.normal_(model.query_proj.weight, 0, 0.5)
    b = _batch(cfg)
    val = ValSet(b["audio"], b["image_query"], b["text_query"], torch.tensor([1, 2, 3, 0]), b["label_id"])
    return cfg, model, val


def test_validation_reports_sdr_per_query_kind():
    cfg, model, val = _scorable_model_and_val()
    out = validate(model, val, cfg, torch.device("cpu"))
    for k in ("val_sdr_image", "val_sdr_text", "val_sdri_image", "val_sdr"):
        assert math.isfinite(out[k]), (k, out)
    assert out["val_sdr"] == out["val_sdr_text"]
    assert model.training  # restored
    # LabelSep is validated with its label embeddings, PIT with no query.
    lab = build_model(load_config("tiny", SMALL + ["model.arch=labelsep", "model.num_labels=4"]).model)
    out = validate(lab, val, cfg, torch.device("cpu"))
    assert "val_sdr_label" in out and "val_sdr_image" not in out and out["val_sdr"] == out["val_sdr_label"]
    pit = build_model(load_config("tiny", SMALL + ["model.arch=pit"]).model)
    assert "val_sdr_none" in validate(pit, val, cfg, torch.device("cpu"))


def test_nit_warmup_trains_plain_clipsep_then_nit():
    from clipsep_ray.train.loop import nit_diagnostics, reported_metrics

    cfg = load_config("tiny", SMALL + ["model.noise_heads=2", "train.nit_warmup_steps=5", "train.noise_reg_gamma=0.0",
                                       "inference.precision=fp32"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    frontend = SpectralFrontEnd.from_config(cfg.audio)
    b = _batch(cfg)
    g = torch.Generator().manual_seed(0)
    _, warm = batch_loss(model, frontend, b, cfg, 4, copy.deepcopy(g))
    _, nit = batch_loss(model, frontend, b, cfg, 5, copy.deepcopy(g))
    assert warm["noise_reg"] == 0.0 and nit["noise_reg"] > 0.0  # heads unused during warm-up, used after
    assert warm["loss"] != nit["loss"]
    val = ValSet(b["audio"], b["image_query"], b["text_query"], torch.tensor([1, 2, 3, 0]), b["label_id"])
    diag = nit_diagnostics(model, val, cfg, torch.device("cpu"))
    assert set(diag) == {"val_nit_noise_share", "val_nit_noise_mean", "val_nit_bce_query", "val_nit_bce_query_noise"}
    assert 0.0 <= diag["val_nit_noise_share"] <= 1.0 and 0.0 < diag["val_nit_noise_mean"] < 2.0
    assert diag["val_nit_bce_query_noise"] != diag["val_nit_bce_query"]
    assert set(diag) <= reported_metrics(cfg) and not set(diag) & reported_metrics(load_config("tiny", SMALL))
    assert nit_diagnostics(build_model(load_config("tiny", SMALL).model), val, cfg, torch.device("cpu")) == {}
    with pytest.raises(Exception, match="nit_warmup_steps"):
        load_config("tiny", ["train.nit_warmup_steps=-1"])


def test_weight_average_follows_its_ramped_decay_and_leaves_the_model_alone():
    from clipsep_ray.train.loop import WeightAverage

    cfg = load_config("tiny", SMALL)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    avg = WeightAverage(model, 0.99)
    name, param = next((n, p) for n, p in model.named_parameters() if p.dim() > 1)
    expected = param.detach().clone()
    for n in range(1, 4):
        with torch.no_grad():
            param.add_(1.0)  # a "step" that moves this parameter by one
        d = min(0.99, (1 + n) / (10 + n))  # the ramp: 2/11, 3/12, 4/13
        expected = d * expected + (1 - d) * param.detach()
        avg.update(model)
    got = avg.model.state_dict()[name]
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, param.detach())  # the average lags the weights
    assert avg.updates == 3 and not any(p.requires_grad for p in avg.model.parameters())
    ints = [k for k, v in model.state_dict().items() if not v.dtype.is_floating_point]
    for k in ints:  # e.g. BatchNorm's num_batches_tracked: copied, not averaged
        assert torch.equal(avg.model.state_dict()[k], model.state_dict()[k])
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(model, 1.0)


def test_checkpoint_with_average_saves_the_average_and_resumes_both(tmp_path):
    from clipsep_ray.train.loop import WeightAverage
    from clipsep_ray.train.worker import Worker, load_training_checkpoint, save_training_checkpoint
    from clipsep_ray.models.checkpoint import load_checkpoint

    cfg = load_config("tiny", SMALL + ["train.ema_decay=0.9"])
    fe = SpectralFrontEnd.from_config(cfg.audio)

    def worker(seed):
        torch.manual_seed(seed)
        model = build_model(cfg.model)
        opt, sched = make_optimizer(model, cfg.train)
        return Worker(cfg, 0, 1, torch.device("cpu"), model, opt, sched, torch.Generator().manual_seed(1), fe, None,
                      ema=WeightAverage(model, cfg.train.ema_decay))

    w = worker(0)
    batch = _batch(cfg)
    for step in range(3):
        loss, _ = batch_loss(w.model, fe, batch, cfg, step, w.generator)
        w.opt.zero_grad()
        loss.backward()
        w.opt.step()
        w.sched.step()
        w.ema.update(w.model)
        w.step += 1
    save_training_checkpoint(w, str(tmp_path))
    saved, _, payload = load_checkpoint(str(tmp_path))  # what separate / evaluate / serve load
    assert payload["extra"]["ema_updates"] == 3
    for k, v in saved.state_dict().items():
        assert torch.equal(v, w.ema.model.state_dict()[k])
    assert any(not torch.equal(v, w.model.state_dict()[k]) for k, v in saved.state_dict().items())

    fresh = worker(1)
    assert load_training_checkpoint(fresh, str(tmp_path)) == 3
    assert fresh.ema.updates == 3
    for k, v in w.model.state_dict().items():
        assert torch.equal(fresh.model.state_dict()[k], v)  # training resumes from the raw weights
        assert torch.equal(fresh.ema.model.state_dict()[k], w.ema.model.state_dict()[k])


def test_ema_decay_is_validated():
    from clipsep_ray.config import ConfigError

    for bad in ("1.0", "-0.1"):
        with pytest.raises(ConfigError, match="train.ema_decay"):
            load_config("tiny", [f"train.ema_decay={bad}"])


def _validate_as_rank(rank, world, init_file, model_state, val, cfg, results):
    """One gloo rank: rank 1 starts from other weights (its own batch-norm statistics, no average),
    takes rank 0's through ``judge`` and scores its share of the pairs."""
    import torch.distributed as dist

    from clipsep_ray.train.worker import Worker, judge

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = build_model(cfg.model)
        model.load_state_dict(model_state)
        if rank:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(0.5)
        w = Worker(cfg, rank, world, torch.device("cpu"), model, None, None, torch.Generator(),
                   SpectralFrontEnd.from_config(cfg.audio), None)
        results[rank] = validate(judge(w), val, cfg, torch.device("cpu"), rank=rank, world=world)
    finally:
        dist.destroy_process_group()


def test_validation_split_over_ranks_equals_one_process(tmp_path):
    """Two gloo ranks each score half the pairs with rank 0's weights; rank 0's scores equal one
    process's, and the other rank returns nothing."""
    import torch.multiprocessing as mp

    cfg, model, val = _scorable_model_and_val()
    alone = validate(model, val, cfg, torch.device("cpu"))
    ctx = mp.get_context("fork")
    results = ctx.Manager().dict()
    procs = [ctx.Process(target=_validate_as_rank, args=(r, 2, tmp_path / "rendezvous", model.state_dict(), val,
                                                          cfg, results)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert results[1] == {}
    assert results[0] == pytest.approx(alone, rel=1e-6)


def test_a_resumed_run_must_keep_what_its_checkpoints_learned_with(tmp_path):
    """check_resume, before Ray starts: where and how long may change; the model, the loss and the
    optimiser's settings may not (a new lr was replaced by the optimiser state's, silently)."""
    from clipsep_ray.config import ConfigError
    from clipsep_ray.models.checkpoint import save_checkpoint
    from clipsep_ray.train.trainer import check_resume

    base = ["train.max_steps=10", f"run.storage_path={tmp_path}", "run.name=r"]
    cfg = load_config("tiny", base)
    assert check_resume(cfg, None) == 0  # a new run
    (tmp_path / "r" / "step_00000004").mkdir(parents=True)  # a folder Ray left without its model.pt
    assert check_resume(cfg, None) == 0
    save_checkpoint(str(tmp_path / "r" / "step_00000002" / "model.pt"), build_model(cfg.model), cfg, {"step": 2})
    allowed = load_config("tiny", base + ["train.max_steps=20", "train.num_workers=2", "data.val_clips=8",
                                          "inference.overlap=0.5", "train.ema_decay=0.99", "model.labels=[a, b]"])
    assert check_resume(allowed, None) == 2
    # a checkpoint written before a field existed (here model.labels) resumes: the field has its default
    import torch

    path = tmp_path / "r" / "step_00000002" / "model.pt"
    payload = torch.load(path, weights_only=True)
    del payload["config"]["model"]["labels"]
    torch.save(payload, path)
    assert check_resume(cfg, None) == 2
    for override, named in (("model.num_masks=8", "model.num_masks: 16 -> 8"), ("train.lr=0.002", "train.lr"),
                            ("train.weight_decay=0.1", "train.weight_decay"), ("mixing.gain_max=2.0", "mixing")):
        with pytest.raises(ConfigError, match=f"run 'r' .* resumes from step_00000002.*{named}"):
            check_resume(load_config("tiny", base + [override]), None)


def test_a_nan_score_never_makes_the_best_checkpoint():
    from clipsep_ray.train.trainer import _score

    scored = [("a", {"val_sdr": float("nan")}), ("b", {"val_sdr": 4.1}), ("c", {"val_sdr": 6.3}), ("d", {})]
    assert max(scored, key=lambda cm: _score(cm[1]))[0] == "c"


def test_a_non_finite_step_stops_training_and_is_not_applied():
    """A NaN loss made every weight NaN, and the run went on to its end with a useless model."""
    from clipsep_ray.train.loop import DivergedError, train_step

    cfg = load_config("tiny", SMALL)
    model = build_model(cfg.model)
    fe = SpectralFrontEnd.from_config(cfg.audio)
    opt, sched = make_optimizer(model, cfg.train)
    batch = _batch(cfg)
    train_step(model, fe, batch, cfg, 0, torch.Generator().manual_seed(0), opt, sched)  # a finite step
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    batch["audio"][0, 100] = float("nan")  # e.g. a corrupt clip that decoded to NaN
    with pytest.raises(DivergedError, match="diverged at step 2: loss nan"):
        train_step(model, fe, batch, cfg, 1, torch.Generator().manual_seed(0), opt, sched)
    # the weights are untouched (the run restarts from its last checkpoint, whose batch-norm statistics
    # the failed forward pass cannot have reached)
    assert all(torch.equal(before[k], v) for k, v in model.named_parameters())
