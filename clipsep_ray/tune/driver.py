"""The sweep driver: Ray Tune runs each trial as a full Ray Train run of ``train.trainer.train``,
Optuna (TPE, multivariate) chooses the parameters and keeps the study in RDB storage.

Layout of a sweep (``--storage`` folder or URI, ``--study`` name)::

    <storage>/<study>/study.db          the Optuna study (SQLite; or --study-storage URL)
    <storage>/<study>/runs/trial-NNNN/  each trial's Ray Train run (checkpoints, config, summary)
    <storage>/<study>/tune/             Ray Tune's experiment folder
    <storage>/<study>/report/           trials.csv, trials.md, best.yaml, *.png, index.html

Ray 2.60 facts this follows: Train V2 (the default) refuses a ``TorchTrainer`` inside a
``Tuner``, so the trial is a function trainable that calls ``train`` with Tune's
``TuneReportCallback`` forwarding every validation report; ``OptunaSearch`` takes a storage
object; ASHA's state is not saved, so its time is the training step (``time_attr="step"``),
which a resumed run continues, not the number of reports.
"""
from __future__ import annotations

import time
from typing import Any

from ray import tune
from ray.tune.result import TRAINING_ITERATION
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from clipsep_ray import storage as store
from clipsep_ray.config import Config
from clipsep_ray.tune import study as st
from clipsep_ray.tune.sweep import Sweep

#: Config key that carries a trial's run name from the searcher to the trainable.
RUN_KEY = "__run__"
#: Logical CPUs of a trial's own process (it only waits on its Ray Train run); Tune's default
#: of 1 would leave no room for the Train workers on a 2-CPU machine.
TRIAL_CPUS = 0.1
#: Trial user attributes copied from each report.
REPORTED_ATTRS = ("step", "start_step", "time_total_s")


class StudySearch(OptunaSearch):
    """OptunaSearch that gives each trial its run name and records its progress in the study.

    Run name: ``trial-NNNN`` of the Optuna trial number, or the interrupted trial's name for a
    retry (``study.recover``). Intermediate values are reported at the training step.
    """

    def __init__(self, *args, base_config: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.base_config = base_config

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        if config is None:
            return None
        trial = self._ot_trials[trial_id]
        run = trial.user_attrs.get("run") or st.run_name(trial.number)
        trial.set_user_attr("run", run)
        if self.base_config is not None:  # the session's: a later session's file may change it
            trial.set_user_attr("base_config", self.base_config)
        return {**config, RUN_KEY: run}

    def _record(self, trial_id: str, result: dict | None) -> None:
        if not result or trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        trial = self._ot_trials[trial_id]
        value = result.get(self.metric)
        step = int(result.get("step", result.get(TRAINING_ITERATION, 0)))
        if st.finite(value):
            trial.report(float(value), step)  # Optuna ignores a step reported twice
        for key in REPORTED_ATTRS:
            if st.finite(result.get(key)):
                trial.set_user_attr(key, result[key])

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._record(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._record(trial_id, result)  # the last report reaches the searcher only here
        super().on_trial_complete(trial_id, result, error)


def _train(cfg_dict: dict, callback) -> dict:
    from clipsep_ray.train.trainer import train

    return train(Config.from_dict(cfg_dict), callbacks=[callback])


#: The Ray Train run of the trial this process runs ({"ref": its task's ObjectRef}).
_RUN: dict = {}


def run_outside_group(cfg_dict: dict, callback) -> dict:
    """``_train`` in a task outside the trial's placement group (inside it, Ray Data's budget is
    the group's CPUs, TRIAL_CPUS, and the validation set's read waited for ever on
    "backpressured: ResourceBudget"), recorded for :class:`StopsItsRun`."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    task = ray.remote(_train).options(num_cpus=0, max_retries=0,
                                      scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None))
    _RUN["ref"] = task.remote(cfg_dict, callback)
    try:
        return ray.get(_RUN["ref"])
    except ray.exceptions.TaskCancelledError:
        return None  # Tune stopped the trial (StopsItsRun): an end, not a failure
    finally:
        _RUN.pop("ref", None)


class StopsItsRun:
    """A mixin of the trial's trainable: when Tune ends a trial that still runs (ASHA stopped it),
    its Ray Train run is cancelled first, which Ray Train takes as Ctrl-C: it aborts the run and
    removes the run's placement group. Killed with the trial instead, the run's Train controller
    died without removing it, and a placement group lives as long as the job that made it: each
    stopped trial kept its workers' CPUs (or GPUs) reserved until the sweep's driver ended, and
    later trials could not start their workers (3 such groups in one full-suite run)."""

    def cleanup(self):
        import ray

        ref = _RUN.pop("ref", None)
        try:
            if ref is not None:
                ray.cancel(ref)
                ray.wait([ref], timeout=STOP_WAIT_S)
        finally:
            super().cleanup()


#: How long a stopped trial waits for its Train run to abort.
STOP_WAIT_S = 30.0


def run_trial(config: dict, *, base: dict, runs: str) -> None:
    """The function trainable: one full Ray Train run with the trial's parameters, in a task
    (:func:`run_outside_group`) that is cancelled when Tune stops the trial (:class:`StopsItsRun`)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    params = {k: v for k, v in config.items() if k != RUN_KEY}
    cfg = Config.from_dict(base).override(params)
    cfg.run.name, cfg.run.storage_path = config[RUN_KEY], runs
    run_outside_group(cfg.validate().to_dict(), TuneReportCallback())


run_trial.__mixins__ = (StopsItsRun,)  # Tune's wrap_function puts these before FunctionTrainable


def run_sweep(sweep: Sweep, *, storage_uri: str = "sweeps", study: str | None = None,
              study_storage: str | None = None, address: str | None = None) -> dict[str, Any]:
    """Run (or continue) the sweep until its study holds ``search.trials`` trials, then report."""
    from clipsep_ray.runtime import init_ray
    from clipsep_ray.train.trainer import ray_storage
    from clipsep_ray.tune.report import write_report

    name = store.safe_component(study or sweep.name)
    root = st.sweep_root(storage_uri, name)
    storage = st.open_storage(st.study_url(root, study_storage))
    base = sweep.base_config()
    ostudy = st.open_study(storage, name, sweep.to_dict(), base.to_dict(),
                           "maximize" if sweep.mode == "max" else "minimize")
    retried = st.recover(ostudy)
    if retried:
        print(f"[tune] trials {retried} were left RUNNING by a dead driver: recorded as FAIL, "
              f"their runs resume as new trials", flush=True)
    remaining = sweep.trials - st.budget_used(ostudy)
    ran = 0
    if remaining > 0:
        t0 = time.perf_counter()
        init_ray(address)
        import optuna

        searcher = StudySearch(space={k: p.distribution() for k, p in sweep.space.items()}, metric=sweep.metric,
                               mode=sweep.mode, study_name=name, storage=storage,
                               sampler=optuna.samplers.TPESampler(multivariate=True, seed=sweep.seed),
                               base_config=base.to_dict())
        scheduler = None
        if sweep.scheduler == "asha":
            from ray.tune.schedulers import ASHAScheduler

            scheduler = ASHAScheduler(time_attr="step", max_t=sweep.longest_run(base), grace_period=sweep.grace_steps,
                                      reduction_factor=sweep.reduction_factor)
        endpoint = store.endpoint_url(base.data.s3_endpoint or None)
        tune_path, fs = ray_storage(root, endpoint)
        trainable = tune.with_resources(tune.with_parameters(run_trial, base=base.to_dict(), runs=f"{root}/runs"),
                                        {"CPU": TRIAL_CPUS})
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=sweep.max_concurrent),
                                        scheduler=scheduler, num_samples=remaining, metric=sweep.metric,
                                        mode=sweep.mode),
            run_config=tune.RunConfig(name="tune", storage_path=tune_path, storage_filesystem=fs, verbose=1,
                                      failure_config=tune.FailureConfig(max_failures=0)))
        print(f"[tune] study '{name}': {sweep.trials - remaining} of {sweep.trials} trials done, "
              f"running {remaining}", flush=True)
        grid = tuner.fit()
        ran = len(grid)
        st.close_running(ostudy, "the trial ended without a usable objective value")
        st.add_session(ostudy, time.perf_counter() - t0, ran)
    else:
        print(f"[tune] study '{name}' already holds its {sweep.trials} trials: reporting only", flush=True)
    report = write_report(root, name, storage)
    return {"study": name, "root": root, "trials_run": ran, "retried": retried, "already_finished": remaining <= 0,
            **report}

