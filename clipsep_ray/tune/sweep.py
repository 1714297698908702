"""The sweep file: what a hyperparameter sweep trains, searches and optimises, checked before
any trial starts.

```yaml
base: tiny                     # preset name or experiment YAML (relative to the sweep file)
overrides: {train.max_steps: 600, data.train_uri: ..., data.val_uri: ...}
objective: {metric: val_sdri_text, mode: max}     # any metric the training loop reports
space:                          # dotted config fields
  model.num_masks: {choices: [8, 16, 32, 64]}
  train.lr: {low: 1.0e-4, high: 3.0e-3, log: true}
search: {trials: 8, max_concurrent: 1, seed: 0}   # TPE (multivariate)
scheduler: {type: asha, grace_steps: 200}          # or {type: none}
```

Every error is a :class:`~clipsep_ray.config.ConfigError` that names the file and the field
(the command line turns it into exit status 2). Only the objective check imports torch (the
model classes say which query kinds validation reports); nothing imports Ray.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from clipsep_ray.config import Config, ConfigError, load_config, preset_names, yaml_float

TOP_KEYS = {"base", "overrides", "objective", "space", "search", "scheduler"}
REQUIRED = ("base", "objective", "space", "search")
MODES = ("max", "min")
SCHEDULERS = ("asha", "none")


@dataclass
class Param:
    """One searched field: categorical ``choices`` or a ``low``..``high`` range (int or float)."""

    name: str
    choices: list | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    kind: str = "float"  # float | int | categorical

    def distribution(self):
        """The Optuna distribution of this parameter."""
        import optuna.distributions as od

        if self.choices is not None:
            return od.CategoricalDistribution(self.choices)
        if self.kind == "int":
            return od.IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return od.FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def to_dict(self) -> dict:
        if self.choices is not None:
            return {"choices": list(self.choices)}
        out = {"low": self.low, "high": self.high, "log": self.log}
        if self.step is not None:
            out["step"] = self.step
        return out


@dataclass
class Sweep:
    """A validated sweep file."""

    name: str  # default study name: the file's stem
    base: str
    overrides: dict[str, Any]
    metric: str
    mode: str
    space: dict[str, Param]
    trials: int
    max_concurrent: int = 1
    seed: int = 0
    scheduler: str = "none"
    grace_steps: int = 0
    reduction_factor: int = 2
    source: str = ""
    extra: list[str] = field(default_factory=list)  # command-line key=value overrides for every trial

    def base_config(self) -> Config:
        """The base config with the file's overrides, then the command line's."""
        return load_config(self.base, [f"{k}={_text(v)}" for k, v in self.overrides.items()] + list(self.extra))

    def trial_config(self, params: dict[str, Any]) -> Config:
        return self.base_config().override(dict(params)).validate()

    def longest_run(self, base: Config) -> int:
        """The most training steps a trial may run (ASHA's ``max_t``): the base's ``train.max_steps``, or
        the space's largest when it searches them (ASHA cut every longer trial at the base's length)."""
        p = self.space.get("train.max_steps")
        return base.train.max_steps if p is None else int(max(p.choices) if p.choices is not None else p.high)

    def to_dict(self) -> dict:
        """Plain data (stored with the study, so a report needs only the study)."""
        return {"name": self.name, "base": self.base, "overrides": dict(self.overrides), "extra": list(self.extra),
                "objective": {"metric": self.metric, "mode": self.mode},
                "space": {k: p.to_dict() for k, p in self.space.items()},
                "search": {"trials": self.trials, "max_concurrent": self.max_concurrent, "seed": self.seed},
                "scheduler": {"type": self.scheduler, "grace_steps": self.grace_steps,
                              "reduction_factor": self.reduction_factor}}


def _text(value: Any) -> str:
    """A value as override text (YAML, so lists and numbers survive)."""
    return value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _mapping(value: Any, where: str, keys: set[str], src: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{src}: '{where}' must be a mapping, got {type(value).__name__}")
    unknown = sorted(set(map(str, value)) - keys)
    if unknown:
        raise ConfigError(f"{src}: unknown key '{where}.{unknown[0]}' (known: {', '.join(sorted(keys))})")
    return value


def _int(value: Any, where: str, src: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{src}: '{where}' must be an integer, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ConfigError(f"{src}: '{where}' must be >= {minimum}, got {value}")
    return value


def _number(value: Any, where: str, src: str) -> float:
    value = yaml_float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{src}: '{where}' must be a number, got {type(value).__name__} ({value!r})")
    return value


def _field_type(cfg: Config, dotted: str, where: str, src: str) -> type:
    section, _, key = dotted.partition(".")
    node = getattr(cfg, section, None)
    if node is None or "." in key or key not in getattr(node, "__dataclass_fields__", {}):
        raise ConfigError(f"{src}: '{where}': unknown config field '{dotted}'")
    return type(getattr(node, key))


def _check_value(cfg: Config, dotted: str, value: Any, where: str, src: str) -> None:
    """The base config accepts ``dotted=value`` (type and cross-field checks)."""
    try:
        cfg.override({dotted: value}).validate()
    except ConfigError as exc:
        raise ConfigError(f"{src}: '{where}': {exc}") from None


def _param(cfg: Config, name: str, spec: Any, src: str) -> Param:
    where = f"space.{name}"
    tp = _field_type(cfg, name, where, src)
    if not isinstance(spec, dict):
        raise ConfigError(f"{src}: '{where}' must be {{choices: [...]}} or {{low: .., high: .., log: ..}}")
    if "choices" in spec:
        _mapping(spec, where, {"choices"}, src)
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{src}: '{where}.choices' must be a non-empty list")
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"{src}: '{where}.choices' has repeated values")
        for i, c in enumerate(choices):
            if isinstance(c, (list, dict)):
                raise ConfigError(f"{src}: '{where}.choices[{i}]' must be a number, string or boolean")
            _check_value(cfg, name, c, f"{where}.choices[{i}]", src)
        return Param(name, choices=choices, kind="categorical")
    spec = _mapping(spec, where, {"low", "high", "log", "step"}, src)
    for key in ("low", "high"):
        if key not in spec:
            raise ConfigError(f"{src}: '{where}' needs 'low' and 'high' (or 'choices'); '{key}' is missing")
    if tp not in (int, float):
        raise ConfigError(f"{src}: '{where}': a range needs a numeric field; '{name}' is {tp.__name__} (use choices)")
    low, high = _number(spec["low"], f"{where}.low", src), _number(spec["high"], f"{where}.high", src)
    if tp is int and not (isinstance(low, int) and isinstance(high, int)):
        raise ConfigError(f"{src}: '{where}': '{name}' is an integer field; low and high must be integers")
    if not low < high:
        raise ConfigError(f"{src}: '{where}': empty or inverted range (low {low} must be below high {high})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{src}: '{where}.log' must be true or false")
    if log and low <= 0:
        raise ConfigError(f"{src}: '{where}': a log range needs low > 0, got {low}")
    step = spec.get("step")
    if step is not None:
        step = _number(step, f"{where}.step", src)
        if step <= 0 or log:
            raise ConfigError(f"{src}: '{where}.step' must be > 0 and cannot be combined with log")
        if tp is int and not isinstance(step, int):  # Optuna truncated 0.5 to a step of 0, then refused it
            raise ConfigError(f"{src}: '{where}.step': '{name}' is an integer field; the step must be an integer")
    for key, value in (("low", low), ("high", high)):
        _check_value(cfg, name, float(value) if tp is float else value, f"{where}.{key}", src)
    return Param(name, low=float(low) if tp is float else low, high=float(high) if tp is float else high,
                 log=log, step=step, kind="int" if tp is int else "float")


def parse_sweep(data: Any, *, source: str = "<sweep>", name: str = "sweep", extra: list[str] | None = None,
                base_dir: str = ".") -> Sweep:
    """Validate a sweep file's data; a ConfigError names the first bad field."""
    from clipsep_ray.train.loop import reported_metrics

    src = source
    data = _mapping(data if data is not None else {}, "sweep", TOP_KEYS, src)
    for key in REQUIRED:
        if key not in data:
            raise ConfigError(f"{src}: missing key '{key}'")
    base = data["base"]
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{src}: 'base' must be a preset name ({', '.join(preset_names())}) or an experiment YAML")
    if base not in preset_names() and not os.path.isabs(base) and "://" not in base:
        near = os.path.join(base_dir, base)
        base = near if os.path.exists(near) else base
    overrides = data.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{src}: 'overrides' must be a mapping of dotted config fields")
    try:
        load_config(base)
    except ConfigError as exc:
        raise ConfigError(f"{src}: 'base': {exc}") from None
    sweep = Sweep(name=name, base=base, overrides={}, metric="", mode="max", space={}, trials=1, source=src,
                  extra=list(extra or []))
    for key, value in overrides.items():
        _field_type(load_config(base), str(key), f"overrides.{key}", src)
        if str(key).startswith("data.") and str(key).endswith("_uri") and isinstance(value, str) and value:
            from clipsep_ray.storage import normalize_uri

            value = normalize_uri(value)  # trials run in other processes: no relative paths
        sweep.overrides[str(key)] = value
        try:
            sweep.base_config()
        except ConfigError as exc:
            raise ConfigError(f"{src}: 'overrides.{key}': {exc}") from None
    try:
        cfg = sweep.base_config()
    except ConfigError as exc:
        raise ConfigError(f"{src}: command-line override: {exc}") from None
    obj = _mapping(data["objective"], "objective", {"metric", "mode"}, src)
    if not isinstance(obj.get("metric"), str) or not obj["metric"]:
        raise ConfigError(f"{src}: 'objective.metric' must name a metric the training loop reports")
    sweep.mode = obj.get("mode", "max")
    if sweep.mode not in MODES:
        raise ConfigError(f"{src}: 'objective.mode' must be max or min, got {sweep.mode!r}")
    space = data["space"]
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{src}: 'space' must map at least one dotted config field to its range or choices")
    sweep.space = {str(k): _param(cfg, str(k), v, src) for k, v in space.items()}
    for k in sweep.space:
        if k.startswith("run."):
            raise ConfigError(f"{src}: 'space.{k}': run.* is set by the sweep (each trial's run name and storage)")
    # The metric must be one that the loop reports for some trial of this space (noise heads
    # in the space make the NIT diagnostics possible).
    known = set().union(*(reported_metrics(cfg.override({k: v})) for k, p in sweep.space.items()
                          for v in (p.choices if p.choices is not None else [p.low, p.high])))
    if obj["metric"] not in known:
        raise ConfigError(f"{src}: 'objective.metric': the training loop never reports '{obj['metric']}' for this "
                          f"config (it reports: {', '.join(sorted(known))})")
    sweep.metric = obj["metric"]
    search = _mapping(data["search"], "search", {"trials", "max_concurrent", "seed"}, src)
    if "trials" not in search:
        raise ConfigError(f"{src}: missing key 'search.trials'")
    sweep.trials = _int(search["trials"], "search.trials", src, 1)
    sweep.max_concurrent = _int(search.get("max_concurrent", 1), "search.max_concurrent", src, 1)
    sweep.seed = _int(search.get("seed", 0), "search.seed", src, 0)
    sched = _mapping(data.get("scheduler") or {"type": "none"}, "scheduler", {"type", "grace_steps", "reduction_factor"}, src)
    sweep.scheduler = sched.get("type", "none")
    if sweep.scheduler not in SCHEDULERS:
        raise ConfigError(f"{src}: 'scheduler.type' must be asha or none, got {sweep.scheduler!r}")
    if sweep.scheduler == "asha":
        if "grace_steps" not in sched:
            raise ConfigError(f"{src}: missing key 'scheduler.grace_steps' (ASHA's grace period in training steps)")
        sweep.grace_steps = _int(sched["grace_steps"], "scheduler.grace_steps", src, 1)
        if sweep.grace_steps > cfg.train.max_steps:
            raise ConfigError(f"{src}: 'scheduler.grace_steps' ({sweep.grace_steps}) exceeds train.max_steps "
                              f"({cfg.train.max_steps})")
        sweep.reduction_factor = _int(sched.get("reduction_factor", 2), "scheduler.reduction_factor", src, 2)
    elif set(sched) - {"type"}:
        raise ConfigError(f"{src}: 'scheduler.{sorted(set(sched) - {'type'})[0]}' needs scheduler.type asha")
    return sweep


def load_sweep(path: str, extra: list[str] | None = None) -> Sweep:
    """Read and validate a sweep file (local path)."""
    if not os.path.isfile(path):
        raise ConfigError(f"sweep file not found: {path}")
    with open(path) as fh:
        try:
            data = yaml.safe_load(fh)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    stem = os.path.splitext(os.path.basename(path))[0]
    return parse_sweep(data, source=path, name=stem, extra=extra, base_dir=os.path.dirname(os.path.abspath(path)))
