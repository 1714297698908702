"""The Optuna study of a sweep: where it lives, what it records, and its recovery after a dead driver.

The study is the sweep's memory. It lives in RDB storage: ``<storage>/<study>/study.db``
(SQLite, embedded) by default, or any SQLAlchemy URL (``postgresql://...``) on a cluster.
It holds, besides Optuna's trials, the sweep file and the resolved base config (study user
attributes), so a report needs nothing but the study; each trial's user attributes hold its
run name, the last training step and its Tune time.

One driver per study at a time: a trial that is RUNNING when a driver starts was left by a
dead one. It is recorded as FAIL (``interrupted``) and its parameters are enqueued once more
with the same run name, so the retry resumes the interrupted run from its last checkpoint.
"""
from __future__ import annotations

import math
import os
from typing import Any

from clipsep_ray.config import ConfigError

STUDY_FILE = "study.db"


def sweep_root(storage_uri: str, study: str) -> str:
    """``<storage>/<study>``: the study's folder (runs, Tune's experiment, the SQLite file, the report)."""
    from clipsep_ray import storage as store

    return store.join_uri(store.normalize_uri(storage_uri), store.safe_component(study))


def study_url(root: str, study_storage: str | None) -> str:
    """The SQLAlchemy URL of the study: ``study_storage``, else SQLite at ``<root>/study.db``."""
    if study_storage:
        return study_storage
    if "://" in root and not root.startswith("file://"):
        raise ConfigError(f"--storage {root} is not a local folder: SQLite cannot live in object storage; "
                          f"give --study-storage (e.g. postgresql://user@host/db)")
    root = root[len("file://"):] if root.startswith("file://") else root
    os.makedirs(root, exist_ok=True)
    return f"sqlite:///{os.path.join(os.path.abspath(root), STUDY_FILE)}"


def open_storage(url: str):
    """An ``optuna.storages.RDBStorage`` (what ``OptunaSearch(storage=)`` takes: an object, not a URL)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # SQLite: wait for the lock instead of failing when the report reads while the driver writes.
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as exc:  # a bad URL or an unreachable server: bad input, named
        raise ConfigError(f"study storage {_redact(url)}: {type(exc).__name__}: {exc}") from None


def _redact(url: str) -> str:
    """The URL without its password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}"
    return url


def run_name(number: int) -> str:
    """Deterministic run name of the trial with Optuna number ``number``."""
    return f"trial-{number:04d}"


def load_study(storage, name: str):
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise ConfigError(f"no study named '{name}' in the study storage") from None


def open_study(storage, name: str, sweep_data: dict, base_config: dict, direction: str):
    """Create the study, or load it and check that it belongs to the same sweep (space and objective)."""
    import optuna

    study = optuna.create_study(study_name=name, storage=storage, direction=direction, load_if_exists=True)
    old = study.user_attrs.get("sweep")
    if old is None:
        study.set_user_attr("sweep", sweep_data)
        study.set_user_attr("base_config", base_config)
    else:
        for key in ("space", "objective"):
            if old.get(key) != sweep_data.get(key):
                raise ConfigError(f"study '{name}' was made by a sweep with another '{key}' "
                                  f"({old.get(key)}); use another --study or the same sweep file")
        if old != sweep_data:  # more trials, other overrides: the new file rules from now on
            study.set_user_attr("sweep", sweep_data)
            study.set_user_attr("base_config", base_config)
    return study


def recover(study) -> list[int]:
    """Record trials left RUNNING by a dead driver as FAIL and enqueue their parameters again with
    the same run name (the retry resumes the run's checkpoint). Returns their numbers."""
    from optuna.trial import TrialState

    storage = study._storage
    left = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in left:
        storage.set_trial_user_attr(t._trial_id, "interrupted", True)
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"run": t.user_attrs.get("run") or run_name(t.number),
                                                  "retry_of": t.number})
    return [t.number for t in left]


def budget_used(study) -> int:
    """Trials that count against ``search.trials``: finished ones (COMPLETE, PRUNED, FAIL), except
    interrupted ones, whose retry counts instead."""
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(1 for t in study.get_trials(deepcopy=False, states=done) if not t.user_attrs.get("interrupted"))


def close_running(study, reason: str) -> list[int]:
    """After a sweep session: any trial still RUNNING (Optuna refused the tell, e.g. a NaN
    objective) is recorded as FAIL with ``reason``."""
    from optuna.trial import TrialState

    storage = study._storage
    left = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in left:
        storage.set_trial_user_attr(t._trial_id, "fail_reason", reason)
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    return [t.number for t in left]


def add_session(study, seconds: float, trials_run: int) -> None:
    """Accumulate the driver's wall time over sessions (a killed session's time is lost)."""
    sessions = list(study.user_attrs.get("sessions", []))
    sessions.append({"wall_s": round(seconds, 2), "trials_run": trials_run})
    study.set_user_attr("sessions", sessions)


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
