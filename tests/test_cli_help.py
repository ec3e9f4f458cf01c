"""One spelling per idea and help on every flag, over every parser of the ``amc`` command line (and the demo's)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest

from amc.cli import build_parser, main
from amc.cli import options as opts

ROOT = Path(__file__).resolve().parents[1]
SEARCH_CONFIG = ROOT / "experiments" / "configs" / "digits-resnet20-flops50.yaml"


def _parsers() -> dict[str, argparse.ArgumentParser]:
    """``amc``, ``amc <command>`` for every subcommand, and the demo's parser."""
    from amc.cli.demo import build_parser as demo_parser

    top = build_parser()
    out = {"amc": top}
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            out.update({f"amc {name}": p for name, p in action.choices.items()})
    out["demo"] = demo_parser()
    return out


PARSERS = _parsers()
COMMANDS = sorted(name.split()[1] for name in PARSERS if name.startswith("amc "))


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if a.option_strings and not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
    ]


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def test_every_command_is_walked() -> None:
    assert {"train", "prune", "sensitivity", "search", "sweep", "pareto", "export", "ui"} <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_option_has_help(name: str) -> None:
    missing = [a.option_strings[0] for a in _options(PARSERS[name]) if not (a.help or "").strip()]
    assert missing == [], f"{name}: options without help: {missing}"
    hidden = [a.option_strings[0] for a in _options(PARSERS[name]) if a.help == argparse.SUPPRESS]
    assert hidden == [], f"{name}: hidden options: {hidden}"


# idea -> (the one flag that spells it, the attribute it fills); a command that has the idea spells it so
IDEAS: dict[str, tuple[str, str]] = {
    "torch device": ("--device", "device"),
    "importance criterion": ("--criterion", "criterion"),
    "MLflow tracking store": ("--tracking-uri", "tracking_uri"),
    "output directory": ("--out", "out"),
    "random seed": ("--seed", "seed"),
    "dense model file": ("--checkpoint", "checkpoint"),
    "config file": ("--config", "config"),
    "model name": ("--model", "model"),
    "data set": ("--data", "data"),
    "fine-tuning epochs": ("--finetune-epochs", "finetune_epochs"),
    "search episodes": ("--episodes", "episodes"),
    "search budget (env.target_ratio)": ("--target-ratio", "target_ratio"),
    "no MLflow writes": ("--no-tracking", "no_tracking"),
    "Ray cluster": ("--address", "address"),
    "MLflow experiment": ("--experiment", "experiment"),
}
# older or other spellings: each may only be a second name of the canonical flag, never a flag of its own
ALIASES = {"--target": "--target-ratio", "--no-log": "--no-tracking"}
# spellings of the ideas above that no command may use
NEVER = {
    "--dev",
    "--gpu",
    "--cuda",
    "--importance",
    "--mlflow-uri",
    "--store",
    "--output",
    "--output-dir",
    "--out-dir",
    "--outdir",
    "--random-seed",
    "--ckpt",
    "--model-path",
    "--weights",
    "--budget",
    "--flops-target",
    "--no-mlflow",
    "--dry-run",
}


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_one_spelling_per_idea(name: str) -> None:
    parser = PARSERS[name]
    for idea, (flag, dest) in IDEAS.items():
        for action in _options(parser):
            if action.dest == dest:
                assert action.option_strings[0] == flag, f"{name}: {idea} is {action.option_strings[0]}, not {flag}"
    for action in _options(parser):
        for alias, canonical in ALIASES.items():
            if alias in action.option_strings:
                assert action.option_strings[0] == canonical, f"{name}: {alias} must be an alias of {canonical}"
    assert not (_flags(parser) & NEVER), f"{name}: {sorted(_flags(parser) & NEVER)}"


def _actions_named(flag: str) -> list[tuple[str, argparse.Action]]:
    return [(name, a) for name, p in PARSERS.items() for a in _options(p) if a.option_strings[0] == flag]


@pytest.mark.parametrize(
    ("flag", "attribute"),
    [("--tracking-uri", "help"), ("--seed", "type"), ("--input-size", "type"), ("--device", "type")],
)
def test_shared_flags_share_their_help_or_type(flag: str, attribute: str) -> None:
    values = {name: getattr(a, attribute) for name, a in _actions_named(flag)}
    assert len(values) >= 2, values
    assert len(set(values.values())) == 1, values


def test_device_help_is_one_text_where_the_device_is_used() -> None:
    helps = {name: a.help for name, a in _actions_named("--device")}
    assert set(helps) == {"amc train", "amc prune", "amc sensitivity", "amc search"}
    assert {helps[n] for n in ("amc train", "amc prune", "amc sensitivity")} == {opts.DEVICE_HELP}
    assert "cpu only" in helps["amc search"]  # a search runs on the CPU; other devices are refused


def test_criterion_choices_are_the_registry_names() -> None:
    from amc.pruning import CRITERIA, DEFAULT_CRITERION

    assert list(opts.CRITERION_NAMES) == CRITERIA.names()
    assert opts.DEFAULT_CRITERION == DEFAULT_CRITERION
    found = _actions_named("--criterion")
    assert {name for name, _ in found} == {"amc prune", "amc sensitivity"}
    for name, action in found:
        assert list(action.choices) == CRITERIA.names(), name
        assert action.default == DEFAULT_CRITERION, name


def _texts(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """(where, text) of every help text, group title and description of ``parser``."""
    texts = [(a.option_strings[0], a.help or "") for a in _options(parser)]
    texts += [(f"group {g.title}", f"{g.title or ''} {g.description or ''}") for g in parser._action_groups]
    texts.append(("description", parser.description or ""))
    return texts


MENTION = re.compile(r"(?:amc (?P<command>[a-z]+) [^`]*?)?(?P<flag>--[a-z][a-z0-9-]*)")


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_help_mentions_only_flags_that_exist(name: str) -> None:
    """A help text that names ``--x`` names a flag of its own command, or of ``amc <command>`` it quotes."""
    for where, text in _texts(PARSERS[name]):
        for match in MENTION.finditer(text):
            command = match.group("command")
            target = f"amc {command}" if command in COMMANDS else name
            assert match.group("flag") in _flags(PARSERS[target]), f"{name} {where}: {match.group(0)!r}"


def _readme_commands() -> list[tuple[str, list[str]]]:
    """Each ``amc <command> ...`` line in the shell blocks and inline code of the README and the documentation
    pages (``docs/``): (command, its flags)."""
    pages = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md") if "gen" not in p.parts)]
    text = "\n".join(p.read_text() for p in pages)
    lines = [line for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S) for line in block.splitlines()]
    lines += re.findall(r"`(amc [a-z]+ [^`]*)`", text)
    out = []
    for line in lines:
        line = re.sub(r"\.venv/bin/amc", "amc", line.split("#")[0]).strip()
        m = re.match(r"amc ([a-z]+)\b(.*)", line)
        if m and m.group(1) in COMMANDS:
            out.append((m.group(1), re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", m.group(2))))
    return out


def test_readme_uses_only_flags_that_exist() -> None:
    found = _readme_commands()
    assert len(found) > 10
    for command, flags in found:
        unknown = set(flags) - _flags(PARSERS[f"amc {command}"])
        assert not unknown, f"README or docs: amc {command} has no {sorted(unknown)}"


# --------------------------------------------------------------------------- what the spellings do
class _Reached(Exception):
    pass


def _captured_search(args: list[str], tmp_path: Path) -> Any:
    seen: list[Any] = []

    def capture(config: Any, *a: Any, **k: Any) -> None:
        seen.append(config)
        raise _Reached

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("agents.search.run_search", capture)
        with pytest.raises(_Reached):
            main(["search", "--config", str(SEARCH_CONFIG), "--no-tracking", "--out", str(tmp_path / "o"), *args])
    return seen[0]


def test_target_ratio_and_its_alias_set_the_budget(tmp_path: Path) -> None:
    assert _captured_search(["--target-ratio", "0.3"], tmp_path).env.target_ratio == 0.3
    assert _captured_search(["--target", "0.4"], tmp_path).env.target_ratio == 0.4


def test_workers_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _captured_search([], tmp_path).workers == "auto", "the shipped configs use the local CPUs"
    assert _captured_search(["--workers", "0"], tmp_path).workers == 0  # in-process, no Ray
    assert _captured_search(["--workers", "3"], tmp_path).workers == 3  # three Ray actors
    assert _captured_search(["--workers", "auto"], tmp_path).workers == "auto"
    for bad in ("-1", "many", "1.5"):
        with pytest.raises(SystemExit) as exc:
            main(["search", "--config", str(SEARCH_CONFIG), "--no-tracking", "--workers", bad])
        assert exc.value.code == 2 and "expected auto or an integer >= 0" in capsys.readouterr().err


def test_target_ms_sets_a_latency_budget(tmp_path: Path) -> None:
    env = _captured_search(["--target-ms", "2.5"], tmp_path).env
    assert (env.target_metric, env.target_ms) == ("latency", 2.5)


def test_address_with_in_process_workers_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    args = ["search", "--config", str(SEARCH_CONFIG), "--no-tracking", "--out", str(out)]
    assert main([*args, "--workers", "0", "--address", "127.0.0.1:6399"]) == 2
    assert "workers 0 runs the search in-process" in capsys.readouterr().err
    assert not out.exists()


def test_pareto_no_log_is_no_tracking() -> None:
    parser = PARSERS["amc pareto"]
    assert parser.parse_args(["--experiment", "e", "--no-log"]).no_tracking is True
    assert parser.parse_args(["--experiment", "e", "--no-tracking"]).no_tracking is True
    assert parser.parse_args(["--experiment", "e"]).no_tracking is False


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_search_refuses_a_device_other_than_cpu(
    device: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["search", "--config", str(SEARCH_CONFIG), "--device", device, "--no-tracking", "--out", str(tmp_path / "o")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a search runs on the CPU" in err and "amc prune --device" in err, err
    assert not (tmp_path / "o").exists()


def test_search_accepts_device_cpu(tmp_path: Path) -> None:
    assert _captured_search(["--device", "cpu"], tmp_path).agent == "ddpg"
