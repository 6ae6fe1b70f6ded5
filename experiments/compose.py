"""Configs composed from ``experiments/configs/`` as the command line composes them.

``compose_config`` is the one way code outside a Hydra app (tests, the bench, a checkpoint's
re-evaluation) builds a config; ``checkpoint_config`` puts a command's overrides on top of the run
config a checkpoint stores; ``unknown_key_message`` and ``explain_overrides`` turn a typo into a
message that lists the keys that are valid where it was made.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf, open_dict

from experiments import CONFIG_DIR

# Groups a command may switch for a trained model; the rest (exp, model, budget, ...) made the checkpoint.
CHECKPOINT_GROUPS = ("data", "eval")
# Nodes an older checkpoint may lack keys of: the current defaults fill them, stored values win.
FILLED_NODES = ("eval",)


def compose_config(config_name: str = "config", overrides: Sequence[str] = ()) -> DictConfig:
    """``configs/<config_name>.yaml`` with Hydra overrides, as ``python -m experiments.<command>`` composes it.

    Works inside a running Hydra app too (tests and notebooks call it outside one).
    """
    return compose_with_choices(config_name, overrides)[0]


def compose_with_choices(config_name: str, overrides: Sequence[str]) -> tuple[DictConfig, dict[str, str]]:
    """``compose_config`` plus the option chosen in each config group (``{"data": "phantom", ...}``)."""
    if GlobalHydra.instance().is_initialized():
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    else:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, {k: v for k, v in choices.items() if k != "hydra" and not k.startswith("hydra/")}


def group_options(group: str) -> list[str]:
    """The options of a config group (``exp`` -> ``["ablation/align", ..., "vae"]``)."""
    root = CONFIG_DIR / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml") if not p.name.startswith("_"))


def unknown_key_message(cfg: DictConfig | dict[str, Any], key: str, where: str = "") -> str | None:
    """None when ``key`` (dotted) exists in ``cfg``; else a message naming the valid keys where it went wrong."""
    node: Any = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else cfg
    parts = key.split(".")
    for depth, part in enumerate(parts):
        parent = ".".join(parts[:depth])
        if not isinstance(node, dict):
            return f"unknown key '{key}'{where}: '{parent}' is a value, not a group of keys"
        if part not in node:
            valid = sorted(str(k) for k in node)
            close = difflib.get_close_matches(part, valid, n=1)
            hint = f" (did you mean '{'.'.join([*parts[:depth], close[0]])}'?)" if close else ""
            place = f"under '{parent}'" if parent else "at the top level"
            return f"unknown key '{key}'{where}{hint}\nvalid keys {place}: {', '.join(valid)}"
        node = node[part]
    return None


def parse_overrides(overrides: Sequence[str]) -> list[Override]:
    return OverridesParser.create().parse_overrides(list(overrides))


def quoting_hint(override: str) -> str | None:
    """How to quote ``override`` when Hydra's override grammar cannot read it; None when it can."""
    try:
        parse_overrides([override])
        return None
    except Exception:  # Hydra raises OverrideParseException or a lexer error
        key, _, value = override.partition("=")
        escaped = value.replace("\\", "\\\\").replace("'", "\\'")
        return (
            f"'{override}': Hydra's override grammar cannot read this value (characters such as # ' \" = ( ; and "
            f"non-ASCII letters need quotes). Quote it for Hydra inside the shell's quotes: \"{key}='{escaped}'\""
        )


def explain_overrides(config_name: str, overrides: Sequence[str]) -> str | None:
    """Why a command line did not compose: quoting hints and unknown keys with the valid ones; None if unclear."""
    hints = [hint for o in overrides if (hint := quoting_hint(o))]
    if hints:
        return "\n".join(hints)
    parsed = parse_overrides(overrides)
    try:
        groups = compose_with_choices(config_name, [])[1]
        chosen = [_first_value(o) for o in parsed if o.key_or_group in groups and not o.is_delete()]
        cfg, groups = compose_with_choices(config_name, [c for c in chosen if c is not None])
    except Exception:
        return None  # a bad group option: Hydra's own message lists the options
    messages = []
    for override in parsed:
        key = override.key_or_group
        if key in groups or key.startswith("hydra.") or override.is_add() or override.is_force_add():
            continue
        message = unknown_key_message(cfg, key)
        if message:
            messages.append(message + _group_note(key, groups))
    return "\n".join(messages) or None


def _first_value(override: Override) -> str | None:
    """``group=option`` with a sweep's first option (``exp=hybrid,ddpm`` -> ``exp=hybrid``)."""
    if override.is_sweep_override():
        values = list(override.sweep_string_iterator())
        return f"{override.key_or_group}={values[0]}" if values else None
    return override.input_line


def _group_note(key: str, groups: dict[str, Any]) -> str:
    root = key.split(".")[0]
    if root in groups:
        return f"\n('{root}' is the '{groups[root]}' option of group '{root}'; another option may have other keys)"
    return f"\nconfig groups: {', '.join(sorted(groups))}" if "." not in key else ""


def checkpoint_config(stored: dict[str, Any], overrides: Sequence[str], config_name: str, own_keys: Sequence[str] = ()) -> DictConfig:
    """The run config stored in a checkpoint with command-line overrides applied on top.

    The overrides compose first with ``configs/<config_name>.yaml`` (with the stored run's data group,
    so its keys are the valid ones), which rejects typos as every command does. Then the stored config
    is the base: a ``key=value`` override takes the composed value, ``data=``/``eval=`` replace that
    node, other groups fail (the checkpoint fixed them), and a key the stored config lacks fails with
    the valid ones. ``own_keys`` are the command's own settings (``ckpt``, ``out``), not run keys.
    """
    own = set(own_keys)
    parsed = parse_overrides(overrides)
    composed, groups = compose_with_choices(config_name, [*stored_data_choice(stored, parsed), *overrides])
    cfg = OmegaConf.create(stored)
    for name in FILLED_NODES:
        if name in composed:
            cfg[name] = OmegaConf.merge(composed[name], stored.get(name) or {})
    keyed = []
    for override in parsed:
        key = override.key_or_group
        if key.split(".")[0] in own or key.startswith("hydra."):
            continue
        if override.is_delete() or override.is_add() or override.is_force_add():
            raise ValueError(f"'{override.input_line}': re-evaluating a checkpoint takes key=value overrides only")
        if key not in groups:
            keyed.append(key)
        elif key not in CHECKPOINT_GROUPS:
            raise ValueError(f"'{override.input_line}': the checkpoint fixed '{key}' when it was trained; "
                             f"of the groups only {', '.join(CHECKPOINT_GROUPS)} can change here")
        elif not (key == "data" and groups["data"] == stored_source(stored)):
            cfg[key] = composed[key]  # another data set or eval protocol: the whole node, as composed
    for key in keyed:
        message = unknown_key_message(cfg, key, " in the checkpoint's run config")
        if message:
            raise ValueError(message)
        OmegaConf.update(cfg, key, OmegaConf.select(composed, key), merge=False)
    return local_paths_from_user(cfg, composed, stored)


DATA_LOCATIONS = ("data.root", "data.csv")


def _path_keys(node: Any, prefix: str = "") -> list[str]:
    """Keys naming where files are written or cached: everything under ``paths``, every ``cache_dir``."""
    keys = []
    if isinstance(node, dict):
        for name, value in node.items():
            key = f"{prefix}{name}"
            if key == "paths" or name == "cache_dir":
                keys.append(key)
            elif isinstance(value, dict):
                keys += _path_keys(value, key + ".")
    return keys


def local_paths_from_user(cfg: DictConfig, composed: DictConfig, stored: dict[str, Any]) -> DictConfig:
    """Paths come from the command line and environment, never from a checkpoint (its values are provenance).

    Output and cache folders take this machine's (``paths.*``, every ``cache_dir``), so a shared
    checkpoint cannot make a command write elsewhere; the data's location must be given when the
    stored run had one (``data.root=DIR``), so nothing is read from a folder the user did not name.
    """
    for key in _path_keys(OmegaConf.to_container(cfg, resolve=False)):
        mine = OmegaConf.select(composed, key, default=None, throw_on_missing=False)
        if mine is not None:
            OmegaConf.update(cfg, key, mine, merge=False)
    if OmegaConf.select(cfg, "data.source", default=None) == stored_source(stored):
        for key in DATA_LOCATIONS:
            was = OmegaConf.select(OmegaConf.create(stored), key, default=None)
            given = OmegaConf.select(composed, key, default=None, throw_on_missing=False)
            if was is not None and given is None and key == "data.root":
                raise ValueError(f"the checkpoint's data was read from {key}={was}; paths come from your command line, never "
                                 f"from a checkpoint: give {key}=DIR (the same data; its fingerprint is checked)")
            if was is not None:
                OmegaConf.update(cfg, key, given, merge=False)
    return cfg


def stored_source(stored: dict[str, Any]) -> Any:
    """The stored run's ``data.source`` (None when its data node is not a mapping)."""
    data = stored.get("data")
    return data.get("source") if isinstance(data, dict) else None


def stored_data_choice(stored: dict[str, Any], parsed: Sequence[Override]) -> list[str]:
    """``["data=<source>"]`` for the stored run's data set when the command line names none."""
    source = stored_source(stored)
    if any(o.key_or_group == "data" for o in parsed) or source not in group_options("data"):
        return []
    return [f"data={source}"]


def with_checkpoint_data(argv: list[str], ckpt_key: str) -> list[str]:
    """``argv`` plus ``data=<source>`` of the checkpoint that ``<ckpt_key>=PATH`` names, unless a data group is given.

    Hydra then checks ``data.*`` overrides against the keys of the data set the checkpoint was
    trained on (``data.root`` for HAM10000) rather than the default phantom's.
    """
    from hydra._internal.utils import get_args_parser

    from models.checkpoint import read_checkpoint, stored_config

    try:
        parsed = parse_overrides(get_args_parser().parse_args(argv).overrides)
        path = next((o.value() for o in parsed if o.key_or_group == ckpt_key), None)
        if path is None:
            return argv
        stored = stored_config(read_checkpoint(str(path)), str(path))
    except Exception:  # the command itself reports a bad path or file, with the full message
        return argv
    return [*argv, *stored_data_choice(stored, parsed)]
