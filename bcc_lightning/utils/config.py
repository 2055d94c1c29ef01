"""Config helpers shared by the tasks: where the configs live, plain containers, the run directory."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("bcc_lightning")

_PACKAGE = Path(__file__).resolve().parent.parent


def config_dir() -> Path:
    """The Hydra configs: bcc_lightning/conf inside an installed wheel, conf/ at the top of a source checkout."""
    for candidate in (_PACKAGE / "conf", _PACKAGE.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    return _PACKAGE / "conf"


def store_dir(name: str = "") -> str:
    """A store shared by the jobs of a sweep (<sweep dir>/name) or a single run's own (<run dir>/name); outside Hydra,
    the current directory. The MLflow logger's default: one experiment per sweep, one run per job."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        base = Path(hydra_cfg.sweep.dir) if hydra_cfg.mode == RunMode.MULTIRUN else run_dir()
    except ValueError:
        base = Path.cwd()
    folder = (base / name).resolve()
    folder.mkdir(parents=True, exist_ok=True)  # an SQLite store needs its folder to exist
    return str(folder)


OmegaConf.register_new_resolver("bcc_store_dir", store_dir, replace=True)


def to_dict(cfg: Any) -> Any:
    """Plain Python containers (checkpoints must not hold OmegaConf objects: weights-only loading refuses them)."""
    if isinstance(cfg, DictConfig) or OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def run_dir() -> Path:
    """The Hydra run (or multirun job) directory; the current directory outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
    except ValueError:  # not running under Hydra (tests, notebooks)
        return Path.cwd()
    return Path(hydra_cfg.runtime.output_dir or hydra_cfg.run.dir)


# ----------------------------------------------------------------------------------------------- value checks
# Every value a user types is checked before any work starts: one paragraph naming every bad key, instead of a
# Python exception minutes into a run. Keys absent from a task's config are skipped, so one table serves all tasks.

PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "64", "bf16", "16")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def parse_auto_bool(value: Any) -> bool | None:
    """A true/false/auto setting: True, False, or None for auto; ValueError for anything else (the caller says what
    the setting means)."""
    text = str(value).strip().lower()
    if value is True or text == "true":
        return True
    if value is False or text == "false":
        return False
    if value is None or text == "auto":
        return None
    raise ValueError(value)


def _whole(value: Any, low: int, allow: tuple[Any, ...] = ()) -> str | None:
    if value in allow:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return f"a whole number >= {low}"
    try:
        number = int(value)
    except ValueError:
        return f"a whole number >= {low}"
    return None if number >= low else f"a whole number >= {low}"


def _number(value: Any, low: float, high: float, low_open: bool = False, high_open: bool = False) -> str | None:
    want = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if isinstance(value, bool):
        return want
    try:
        number = float(value)
    except (TypeError, ValueError):
        return want
    if number < low or number > high or (low_open and number == low) or (high_open and number == high):
        return want
    return None


def _choice(value: Any, options: tuple[str, ...]) -> str | None:
    return None if str(value) in options else f"one of {', '.join(options)}"


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def _items(value: Any, rule: Any, want: str) -> str | None:
    """A non-empty list whose every item passes `rule` (a probe grid: an empty one would choose nothing)."""
    if not (isinstance(value, (list, tuple)) or OmegaConf.is_list(value)) or not len(value):
        return want
    return want if any(rule(item) for item in value) else None


RULES: dict[str, Any] = {
    "seed": lambda v: _whole(v, 0),
    "data.batch_size": lambda v: _whole(v, 1),
    "data.num_workers": lambda v: _whole(v, 0, ("auto",)),
    "data.fold": lambda v: _whole(v, 0, (None,)),
    "data.balanced_sampler": _boolean,
    "data.cache_budget_gb": lambda v: _number(v, 0, 1e6),
    "data.augment.hflip": lambda v: _number(v, 0, 1),
    "data.augment.vflip": lambda v: _number(v, 0, 1),
    "data.augment.grayscale": lambda v: _number(v, 0, 1),
    "data.augment.rotation_degrees": lambda v: _number(v, 0, 180),
    "data.augment.rot90": _boolean,
    "data.augment.stain": lambda v: _number(v, 0, 1),
    "data.augment.hsv": lambda v: _number(v, 0, 1),
    "data.stain_norm": lambda v: None if v is None else _choice(v, ("macenko", "reinhard")),
    "trainer.max_epochs": lambda v: _whole(v, 1, (None,)),
    "trainer.accelerator": lambda v: _choice(v, ACCELERATORS),
    "trainer.precision": lambda v: _choice(v, PRECISIONS),
    "trainer.devices": lambda v: None if isinstance(v, (list, tuple)) or OmegaConf.is_list(v) else _whole(v, 1,
                                                                                                          ("auto",)),
    "trainer.num_nodes": lambda v: _whole(v, 1),
    "trainer.accumulate_grad_batches": lambda v: _whole(v, 1),
    "trainer.log_every_n_steps": lambda v: _whole(v, 1),
    "trainer.num_sanity_val_steps": lambda v: _whole(v, -1),
    "trainer.deterministic": lambda v: None if v in (True, False, "warn") else "true, false or warn",
    "optimizer.lr": lambda v: _number(v, 0, 10, low_open=True),
    "optimizer.weight_decay": lambda v: _number(v, 0, 10),
    "optimizer.backbone_lr_scale": lambda v: _number(v, 0, 100),
    "model.dropout": lambda v: _number(v, 0, 1, high_open=True),
    "model.hidden": lambda v: _whole(v, 0),
    "model.img_size": lambda v: _whole(v, 8, (None,)),
    "model.pretrained": _boolean,
    "model.channels_last": _boolean,
    "model.freeze_backbone": _boolean,
    "model.unfreeze_at_epoch": lambda v: _whole(v, 0, (None,)),
    "model.pos_weight": lambda v: None if v in (None, "none", "auto") else _number(v, 0, 1e6, low_open=True),
    "compile": _boolean,
    "resume": _boolean,
    # auto: predict/export/serve apply the operating point's own views (eval itself takes true or false)
    "tta": lambda v: None if isinstance(v, bool) or v == "auto" else "auto, true or false",
    "inference.fast": lambda v: None if isinstance(v, bool) or v == "auto" else "auto, true or false",
    "stain_stress": _boolean,
    "split": lambda v: _choice(v, ("train", "val", "test")),
    "probe.few_shot_repeats": lambda v: _whole(v, 1),
    "probe.Cs": lambda v: _items(v, lambda c: _number(c, 0, 1e12, low_open=True), "a list of positive numbers"),
    "probe.knn_k": lambda v: _items(v, lambda k: _whole(k, 1), "a list of whole numbers >= 1"),
    "probe.max_iter": lambda v: _whole(v, 1),
    "probe.select": lambda v: _choice(v, ("auroc", "loss")),
    "report.grid_size": lambda v: _whole(v, 0),
    "report.cam_per_group": lambda v: _whole(v, 0),
    "num_workers": lambda v: _whole(v, 1, ("auto",)),
    "folds": lambda v: _whole(v, 0),
    "warmup": lambda v: _whole(v, 1),
    "steps": lambda v: _whole(v, 1),
    "repeats": lambda v: _whole(v, 1),
    "n_images": lambda v: _whole(v, 2),
    "epochs": lambda v: _whole(v, 1),
    "epoch_val_images": lambda v: _whole(v, 2),
    "opset": lambda v: _whole(v, 7),
    "check": _boolean,
    "overwrite": _boolean,
}

_MISSING = object()


def _lookup(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return _MISSING
        node = node[part]
    return node


def check_config(cfg: DictConfig) -> None:
    """Raise one UserError naming every value of `cfg` that breaks its rule in RULES."""
    from bcc_lightning.utils.errors import UserError

    problems = []
    for key, rule in RULES.items():
        value = _lookup(cfg, key)
        if value is _MISSING:
            continue
        wanted = rule(value)
        if wanted:
            problems.append(f"{key} must be {wanted} (got {value!r})")
    if problems:
        raise UserError("Invalid setting" + ("s" if len(problems) > 1 else "") + ": " + "; ".join(problems)
                        + ". Fix the value on the command line (key=value) or in the config file.")


# ------------------------------------------------------------------------------------------- unknown keys
_PREFIX = {"ADD": "+", "FORCE_ADD": "++", "DEL": "~"}


def _single_value_overrides(overrides: list[str]) -> list[str] | None:
    """The command line's overrides with each sweep (`-m model=a,b`) reduced to its first value, so that one compose
    checks every key; interval sweeps (Optuna) are left out. None when Hydra cannot parse them (it says why)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:
        return None
    single = []
    for override in parsed:
        if not override.is_sweep_override():
            single.append(override.input_line)
            continue
        try:
            first = next(iter(override.sweep_string_iterator()))
        except Exception:
            continue
        package = f"@{override.package}" if override.package else ""
        single.append(f"{_PREFIX.get(override.type.name, '')}{override.key_or_group}{package}={first}")
    return single


def unknown_key_message(config_name: str, overrides: list[str]) -> str | None:
    """When an override names a key that `config_name` lacks (Hydra: "Key 'max_epoch' is not in struct"), one
    paragraph naming the close matches at that level (`trainer.max_epochs`); None when the overrides compose, or
    fail for another reason (Hydra's own message says it then)."""
    import difflib
    import re

    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    single = _single_value_overrides(overrides)
    if single is None:
        return None
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir()), job_name=config_name):
        try:
            compose(config_name, overrides=single)
            return None
        except ConfigCompositionException as exc:
            found = re.match(r"Could not override '([^']+)'", str(exc))
            if not found or not isinstance(exc.__cause__, (ConfigAttributeError, ConfigKeyError)):
                return None
            bad = found.group(1)
        rest = [o for o in single if _override_key(o) != bad]
        try:
            base = compose(config_name, overrides=rest)
        except Exception:
            return None
    value = next((o.split("=", 1)[1] for o in single if _override_key(o) == bad and "=" in o), "VALUE")
    parts = bad.split(".")
    node: Any = base
    for depth, part in enumerate(parts):
        if isinstance(node, DictConfig) and part in node:
            node = node[part]
            continue
        level = ".".join(parts[:depth])
        keys = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
        if depth == 0:  # a group name typed wrong (modle=...) is a top-level key too
            keys = sorted(set(keys) | {p.name for p in config_dir().iterdir() if p.is_dir()} - {"hydra"})
        matches = difflib.get_close_matches(part, keys, n=3, cutoff=0.6)
        where = f"under {level}" if level else f"at the top of the {config_name} config"
        if matches:
            fixes = [".".join([*parts[:depth], m, *parts[depth + 1:]]) for m in matches]
            advice = "Did you mean " + " or ".join(fixes) + "?"
        else:
            shown = ", ".join(keys[:25]) + (", ..." if len(keys) > 25 else "")
            advice = f"The keys {where} are: {shown}."
        return (f"Unknown key {bad} ({part!r} is not a key {where}). {advice} To add a new key on purpose, write "
                f"+{bad}={value}.")
    return None


def override_syntax_message(overrides: list[str]) -> str | None:
    """When an override cannot be read by Hydra's override grammar (an unquoted regex, an unclosed list), one
    paragraph naming it and how to quote it; None when every override parses."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_override(override)
        except Exception as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            key, _, value = override.partition("=")
            return (f"The override '{override}' cannot be read ({reason}). Hydra's command-line grammar gives "
                    f"( ) [ ] {{ }} , = quotes and spaces a meaning: put a value holding them in single quotes inside "
                    f"the shell's double quotes, e.g. \"{key}='{value}'\", or close the list or brackets you opened "
                    f"(lists are written [a,b]).")
    return None


def _override_key(override: str) -> str:
    key = override.split("=", 1)[0].lstrip("+~")
    return key.split("@", 1)[0]
