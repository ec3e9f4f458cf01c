"""Property-based tests of every file the project reads: policies, YAML configs and model files.

Hypothesis generates malformed inputs (wrong types, missing and extra keys, deep nesting, NaN and
infinities, huge and negative values, unicode, raw bytes) and each test asserts that loading either
returns a valid object or raises the project's own error (an :class:`amc.errors.AmcError`) with a
one-line message, never anything else. The CLI is driven in-process the same way: exit code 2, one
error line, nothing written. Deterministic: ``derandomize=True``, no example database.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import math
import os
import re
import tempfile
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

import amc.engine
from agents.search import SearchConfig
from amc.checkpoint import SavedModel, load_model, save_model
from amc.cli import main
from amc.config import load_yaml, to_dict
from amc.errors import AmcError
from amc.models import ModelSpec, create_model
from amc.policy import Policy, load_policy

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
"""Deterministic, no example database, no per-example deadline (the machine is shared)."""

SPEC = ModelSpec("resnet20", 1, 10, 16)

# --------------------------------------------------------------------------- value strategies
NASTY = [
    "",
    " ",
    "1e-4",
    "0.5",
    "nan",
    "true",
    "null",
    "~",
    "\u202e\u0645\u0631\u062d\u0628\u0627",
    "\U0001f680" * 3,
    "a\nb",
    "\x00",
    "x" * 500,
    0,
    1,
    -1,
    2**31,
    2**63,
    -(2**63) - 1,
    10**30,
    0.5,
    1.5,
    -0.0,
    1e308,
    5e-324,
    float("nan"),
    float("inf"),
    float("-inf"),
    True,
    False,
    None,
    [],
    {},
]
scalars = st.one_of(
    st.sampled_from(NASTY),
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a nested dict (sections and leaves)."""
    out = []
    for key, value in data.items():
        out.append((*prefix, key))
        if isinstance(value, dict):
            out.extend(_paths(value, (*prefix, key)))
    return out


@st.composite
def mutated(draw: st.DrawFn, base: dict, extra_paths: tuple[tuple, ...] = ()) -> Any:
    """``base`` with one to four edits: a value replaced, a key deleted, an unknown key added, a value
    nested deep inside lists, or the whole document replaced."""
    data = copy.deepcopy(base)
    paths = _paths(base) + list(extra_paths)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["set", "set", "set", "delete", "extra", "nest", "top"]))
        if kind == "top":
            return draw(values)
        path = draw(st.sampled_from(paths))
        parent = data
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            continue
        key = path[-1]
        if kind == "set":
            parent[key] = draw(values)
        elif kind == "delete":
            parent.pop(key, None)
        elif kind == "extra":
            parent[draw(st.text(min_size=1, max_size=8))] = draw(values)
        else:
            value = parent.get(key)
            for _ in range(draw(st.integers(1, 300))):
                value = [value]
            parent[key] = value
    return data


# --------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _tmpdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def _note(outcome: str) -> None:
    """Counts an outcome in Hypothesis' statistics (pytest --hypothesis-show-statistics)."""
    if currently_in_test_context():
        event(outcome)


def _one_line(exc: BaseException) -> None:
    message = str(exc)
    assert message and "\n" not in message and "\r" not in message, repr(message)


def _load(loader: Callable[[], Any]) -> Any:
    """Runs ``loader``; returns what it loaded, or None after checking the project's error it raised."""
    try:
        loaded = loader()
    except AmcError as exc:
        _one_line(exc)
        _note(f"refused: {type(exc).__name__}")
        return None
    _note("loaded")
    return loaded


def _check_typed(obj: Any) -> None:
    """Every field of a loaded config dataclass holds a value of its declared type."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        _check_value(getattr(obj, f.name), hints[f.name], f.name)


def _check_value(value: Any, hint: Any, name: str) -> None:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        assert isinstance(value, hint), name
        _check_typed(value)
    elif type(None) in args:
        assert value is None or _check_value(value, next(a for a in args if a is not type(None)), name) is None
    elif origin is tuple:
        assert isinstance(value, tuple), name
        for v in value:
            _check_value(v, args[0], name)
    elif hint is float:
        assert type(value) is float and math.isfinite(value), (name, value)
    elif hint in (int, bool, str):
        assert type(value) is hint, (name, value)


def _check_policy(policy: Policy) -> None:
    assert isinstance(policy, Policy) and policy.ratios
    assert all(type(r) is float and 0.0 <= r < 1.0 for r in policy.ratios.values())
    assert all(type(v) is int and v >= 1 for v in policy.model.input_shape)
    assert type(policy.round_to) is int and policy.round_to >= 1
    assert all(type(v) is float and math.isfinite(v) for v in policy.measured.values())
    assert policy.target is None or (type(policy.target.ratio) is float and 0 < policy.target.ratio <= 1)


def _write_yaml(path: Path, data: Any) -> None:
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")


POLICY = {
    "schema_version": 1,
    "kind": "amc-policy",
    "model": {"name": "resnet20", "input_shape": [1, 16, 16], "num_classes": 10, "arch_hash": "0123456789abcdef"},
    "ratios": {"conv1": 0.1, "layer1.0.conv1": 0.5, "layer2.0.conv1": 0.0},
    "granularity": "channel",
    "criterion": "l1",
    "round_to": 1,
    "target": {"metric": "flops", "ratio": 0.5},
    "measured": {"top1": 0.9, "flops": 1000},
    "versions": {"torch": "2.14.1"},
    "created": "2026-01-01T00:00:00+00:00",
}
CONFIG = to_dict(SearchConfig(episodes=5))
RAW = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(lambda t: t.encode("utf-8")),
    st.sampled_from(
        [
            b"",
            b"   \n",
            b"\xef\xbb\xbf",
            b"\xff\xfe\x00",
            b"[" * 20_000,
            b"{a: " * 3000,
            b'{"a":' * 5000,
            b"9" * 5000,
            b"NaN",
            b"null",
            b"[]",
            b"- - -",
            b"{}",
            b"a: &x [*x]",
            b"!!binary AAAA",
            b"env: {target_ratio: .inf}",
            b"x: !!python/object/apply:os.system [ls]",
            json.dumps(POLICY).encode()[:-5],
        ]
    ),
)


# --------------------------------------------------------------------------- policies
@FUZZ
@given(data=mutated(POLICY, extra_paths=(("model", "input_shape"), ("ratios", "new.group"))))
def test_malformed_policy_loads_or_raises_amc_error(data: Any) -> None:
    with _tmpdir() as d:
        (d / "p.json").write_text(json.dumps(data, allow_nan=True, ensure_ascii=False), encoding="utf-8")
        policy = _load(lambda: load_policy(d / "p.json"))
        if policy is not None:
            _check_policy(policy)
            assert _load(lambda: load_policy(policy.save(d / "again.json"))) == policy, (
                "a loaded policy saves and reloads"
            )


@FUZZ
@given(raw=RAW)
def test_policy_from_raw_bytes(raw: bytes) -> None:
    with _tmpdir() as d:
        (d / "p.json").write_bytes(raw)
        policy = _load(lambda: load_policy(d / "p.json"))
        assert policy is None or _check_policy(policy) is None


@FUZZ
@given(data=values)
def test_policy_from_dict_of_anything(data: Any) -> None:
    policy = _load(lambda: Policy.from_dict(data))
    assert policy is None or _check_policy(policy) is None


# --------------------------------------------------------------------------- configs
@FUZZ
@given(data=mutated(CONFIG, extra_paths=(("env", "data", "input_size"), ("ddpg", "hidden"))))
def test_malformed_config_loads_or_raises_amc_error(data: Any) -> None:
    with _tmpdir() as d:
        _write_yaml(d / "c.yaml", data)
        config = _load(lambda: load_yaml(SearchConfig, d / "c.yaml"))
        if config is not None:
            _check_typed(config)


@FUZZ
@given(raw=RAW)
def test_config_from_raw_bytes(raw: bytes) -> None:
    with _tmpdir() as d:
        (d / "c.yaml").write_bytes(raw)
        config = _load(lambda: load_yaml(SearchConfig, d / "c.yaml"))
        assert config is None or _check_typed(config) is None


def test_config_error_names_the_dotted_field(tmp_path: Path) -> None:
    (tmp_path / "key.yaml").write_text("env:\n  target_ratio: true\n")
    with pytest.raises(AmcError) as info:
        load_yaml(SearchConfig, tmp_path / "key.yaml")
    assert "env.target_ratio must be a number, got true" in str(info.value)
    assert "key.yaml.env" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "key", "valid"),
    [
        ("env:\n  bogus: 1\n", "'env.bogus'", "valid keys of env: model, data,"),
        ("env:\n  data:\n    bogus: 1\n", "'env.data.bogus'", "valid keys of env.data: name, root,"),
        ("bogus: 1\n", "'bogus'", "valid keys at the top level: env, agent,"),
        ("env:\n  1: 2\n", "1 in section env", "valid keys of env: model,"),
    ],
)
def test_unknown_key_error_names_the_file_and_the_dotted_key_apart(
    text: str, key: str, valid: str, tmp_path: Path
) -> None:
    path = tmp_path / "key.yaml"
    path.write_text(text)
    with pytest.raises(AmcError) as info:
        load_yaml(SearchConfig, path)
    assert str(info.value).startswith(f"config file {path}: unknown key {key}; {valid}"), str(info.value)
    assert "key.yaml.env" not in str(info.value)


# --------------------------------------------------------------------------- paths that are not files
def _make(kind: str, d: Path) -> Path:
    p = d / f"input-{kind}"
    if kind == "directory":
        p.mkdir()
    elif kind == "dangling symlink":
        p.symlink_to(d / "nowhere")
    elif kind == "symlink loop":
        p.symlink_to(p)
    elif kind == "fifo":
        os.mkfifo(p)
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "non-utf-8":
        p.write_bytes(b"kind: \xff\xfe\x80")
    elif kind == "nul in path":
        return Path(str(p) + "\x00x")
    return p


PATH_KINDS = ["missing", "directory", "dangling symlink", "symlink loop", "fifo", "empty", "non-utf-8", "nul in path"]
LOADERS: dict[str, Callable[[Path], Any]] = {
    "policy": load_policy,
    "config": lambda p: load_yaml(SearchConfig, p),
    "model": load_model,
}


@pytest.mark.parametrize("kind", PATH_KINDS)
@pytest.mark.parametrize("what", list(LOADERS))
def test_paths_that_are_not_input_files(what: str, kind: str, tmp_path: Path) -> None:
    path = _make(kind, tmp_path)
    with pytest.raises(AmcError) as info:
        LOADERS[what](path)
    _one_line(info.value)
    if kind == "directory":
        assert "is a directory, expected a" in str(info.value)


# --------------------------------------------------------------------------- model files
@pytest.fixture(scope="module")
def model_payload(tmp_path_factory: pytest.TempPathFactory) -> dict:
    path = tmp_path_factory.mktemp("model") / "m.pt"
    torch.manual_seed(0)
    save_model(path, create_model(SPEC), SPEC)
    return torch.load(path, weights_only=True)


tensor_free_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8), st.sampled_from(NASTY[:-2])),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=5,
)


@settings(FUZZ, max_examples=30)
@given(
    edits=st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "format",
                    "format_version",
                    "spec",
                    "spec.name",
                    "spec.in_channels",
                    "spec.num_classes",
                    "spec.input_size",
                    "history",
                    "policy",
                    "state_dict",
                    "extra",
                ]
            ),
            tensor_free_values,
        ),
        max_size=3,
    )
)
def test_malformed_model_file_loads_or_raises_amc_error(model_payload: dict, edits: list[tuple[str, Any]]) -> None:
    payload = {**model_payload, "spec": dict(model_payload["spec"])}  # no edits: the file loads
    for key, value in edits:
        section, _, field = key.partition(".")
        if field and isinstance(payload.get(section), dict):
            payload[section][field] = value
        elif not field:
            payload[section] = value
    with _tmpdir() as d:
        torch.save(payload, d / "m.pt")
        saved = _load(lambda: load_model(d / "m.pt"))
        assert saved is None or isinstance(saved, SavedModel)


@settings(FUZZ, max_examples=30)
@given(raw=RAW)
def test_model_file_from_raw_bytes(raw: bytes) -> None:
    with _tmpdir() as d:
        (d / "m.pt").write_bytes(raw)
        assert _load(lambda: load_model(d / "m.pt")) is None


# --------------------------------------------------------------------------- the CLI, in-process
class _Reached(Exception):
    """Raised by the stubs below: the input was accepted and the command went on to the real work."""


def _stop(*args: Any, **kwargs: Any) -> None:
    raise _Reached


def _run_cli(args: list[str], root: Path) -> tuple[int | None, str]:
    """Runs ``amc`` in-process with the heavy steps stubbed; returns (exit code or None if accepted, stderr)."""
    before = sorted(root.rglob("*"))
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        mp.setattr(amc.engine, "build_workspace", _stop)
        mp.setattr("agents.search.run_search", _stop)
        try:
            code: int | None = main(args)
        except _Reached:
            code = None
        except SystemExit as exc:  # argparse's own usage errors
            code = int(exc.code or 0)
    _note("accepted" if code is None else f"exit {code}")
    if code is not None:
        assert code == 2, (code, err.getvalue())
        errors = [line for line in err.getvalue().strip().splitlines() if "error" in line]
        assert len(errors) == 1, err.getvalue()
        assert sorted(root.rglob("*")) == before, "nothing is written on bad input"
    return code, err.getvalue()


@settings(FUZZ, max_examples=25)
@given(data=mutated(POLICY))
def test_cli_prune_with_malformed_policy(data: Any) -> None:
    with _tmpdir() as d:
        (d / "p.json").write_text(json.dumps(data, allow_nan=True), encoding="utf-8")
        _run_cli(["prune", "--model", "resnet20", "--policy", str(d / "p.json"), "--out", str(d / "out")], d)


@settings(FUZZ, max_examples=25)
@given(data=mutated(CONFIG))
def test_cli_search_with_malformed_config(data: Any) -> None:
    with _tmpdir() as d:
        _write_yaml(d / "c.yaml", data)
        _run_cli(["search", "--config", str(d / "c.yaml"), "--no-tracking", "--out", str(d / "out")], d)


@settings(FUZZ, max_examples=25)
@given(
    flag=st.sampled_from(
        [
            "--lr",
            "--finetune-epochs",
            "--seed",
            "--input-size",
            "--bn-batches",
            "--iterative",
            "--uniform",
            "--device",
            "--round-to",
        ]
    ),
    value=st.one_of(
        st.sampled_from(["nan", "inf", "-1", "0", "1e400", "9" * 5000, "true", "", "0x10", "1.5", "cuda:x"]),
        st.text(max_size=8).filter(lambda t: not t.startswith("-") and "\x00" not in t),
    ),
)
def test_cli_prune_flags(flag: str, value: str) -> None:
    with _tmpdir() as d:
        uniform = [] if flag == "--uniform" else ["--uniform", "0.5"]
        code, err = _run_cli(["prune", "--model", "resnet20", *uniform, flag, value, "--out", str(d / "out")], d)
        if value in ("nan", "inf", "1e400") and flag in ("--lr", "--uniform"):
            assert code == 2 and flag in err


@pytest.mark.parametrize("kind", PATH_KINDS[:-1])
def test_cli_input_paths_that_are_not_files(kind: str, tmp_path: Path) -> None:
    path = str(_make(kind, tmp_path))
    for args in (
        ["prune", "--model", "resnet20", "--policy", path],
        ["prune", "--checkpoint", path, "--uniform", "0.5"],
        ["search", "--config", path, "--no-tracking"],
    ):
        code, err = _run_cli([*args, "--out", str(tmp_path / "out")], tmp_path)
        assert code == 2, (args, err)
    (tmp_path / "file").write_text("x")
    code, err = _run_cli(
        ["prune", "--model", "resnet20", "--uniform", "0.5", "--out", str(tmp_path / "file")], tmp_path
    )
    assert code == 2 and "is not a directory" in err


def test_coerce_field_checks_dotted_sweep_values() -> None:
    from amc.config import coerce_field
    from amc.data import DataConfig

    assert coerce_field(SearchConfig, "env.target_ratio", 1) == 1.0
    assert coerce_field(SearchConfig, "env.data", {"name": "synthetic"}) == DataConfig("synthetic")
    for key, value, message in [
        ("env.target_ratio", True, "env.target_ratio must be a number, got true"),
        ("episodes", {}, "episodes must be an integer, got {}"),
        ("env.nope", 1, "unknown field 'env.nope'"),
        ("ddpg.hidden", [1, "a"], "ddpg.hidden[1] must be an integer, got 'a'"),
    ]:
        with pytest.raises(AmcError, match=re.escape(message)):
            coerce_field(SearchConfig, key, value)


# --------------------------------------------------------------------------- --set KEY=VALUE overrides
SEARCH_CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "digits-resnet20-flops50.yaml"


def test_set_overrides_any_config_field(tmp_path: Path) -> None:
    seen: list[SearchConfig] = []

    def capture(config: SearchConfig, *args: Any, **kwargs: Any) -> None:
        seen.append(config)
        raise _Reached

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("agents.search.run_search", capture)
        with pytest.raises(_Reached):
            main(
                [
                    "search",
                    "--config",
                    str(SEARCH_CONFIG),
                    "--no-tracking",
                    "--out",
                    str(tmp_path / "out"),
                    "--set",
                    "env.target_ratio=0.3",
                    "--set",
                    "ddpg.noise_sigma=0.25",
                    "--set",
                    "env.reconstruct=true",
                    "--set",
                    "ddpg.hidden=[64, 32]",
                    "--set",
                    "episodes=7",
                    "--seed",
                    "3",
                ]
            )
    config = seen[0]
    assert (config.env.target_ratio, config.ddpg.noise_sigma, config.env.reconstruct) == (0.3, 0.25, True)
    assert (config.ddpg.hidden, config.episodes, config.seed) == ((64, 32), 7, 3)
    base = SearchConfig.from_yaml(SEARCH_CONFIG)
    assert base.env.target_ratio != 0.3 and base.episodes != 7  # the file itself is unchanged
    assert config.env.replace(target_ratio=base.env.target_ratio, reconstruct=base.env.reconstruct) == base.env


@pytest.mark.parametrize(
    "override, message",
    [
        ("env.targt=0.3", "unknown field 'env.targt'"),
        ("env.target_ratio", "write KEY=VALUE"),
        ("env.target_ratio=abc", "env.target_ratio must be a number, got 'abc'"),
        ("env.target_ratio=true", "env.target_ratio must be a number, got true"),
        ("episodes.x=1", "'episodes.x' is not a field"),
        ("ddpg.hidden=[1", "is not valid YAML"),
    ],
)
def test_set_bad_override_exits_2_naming_it(override: str, message: str, tmp_path: Path) -> None:
    code, err = _run_cli(
        ["search", "--config", str(SEARCH_CONFIG), "--no-tracking", "--out", str(tmp_path / "out"), "--set", override],
        tmp_path,
    )
    assert code == 2 and message in err, err


@settings(FUZZ, max_examples=40)
@given(
    key=st.one_of(
        st.sampled_from(
            [
                "env.target_ratio",
                "env.reward",
                "ddpg.hidden",
                "episodes",
                "env.data.name",
                "env",
                "ddpg",
                "env.data",
                "nope",
                "",
                ".",
            ]
        ),
        st.text(max_size=10),
    ),
    value=st.one_of(
        st.sampled_from(["0.3", "nan", "-1", "[1, 2]", "{a: 1}", "", "true", "null", "acc", "'x"]), st.text(max_size=10)
    ),
)
def test_set_fuzz_loads_or_exits_2(key: str, value: str) -> None:
    with _tmpdir() as d:
        _run_cli(
            [
                "search",
                "--config",
                str(SEARCH_CONFIG),
                "--no-tracking",
                "--out",
                str(d / "out"),
                f"--set={key}={value}",
            ],
            d,
        )


def test_cifar10_files_that_fail_the_checksums_are_named(tmp_path: Path) -> None:
    """Files with CIFAR-10's names but other contents: the data set's own error, not torchvision's download hint."""
    from amc.data import DataConfig, load_data
    from amc.errors import DataNotFoundError

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes(b"not CIFAR-10")
    with pytest.raises(DataNotFoundError, match="do not match CIFAR-10's published checksums.*extract"):
        load_data(DataConfig("cifar10", root=str(tmp_path)))
