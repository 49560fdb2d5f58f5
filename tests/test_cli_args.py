"""CLI generated from the Options model: flags, help, YAML config, environment, precedence, errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gbatch_flows.cli_args import OptionsError, build_parser, field_kind, parse_options, resolve_options
from gbatch_flows.options import Options, secret_fields

DUMMY_KEY = "sk-test-dummy-cli-QWERTY"


def _exit(capsys: pytest.CaptureFixture[str], argv: list[str], env: dict | None = None,
          task_defaults: dict | None = None) -> str:
    """Run parse_options expecting exit 2; return the error line."""
    with pytest.raises(SystemExit) as info:
        parse_options(argv, env=env or {}, task_defaults=task_defaults)
    assert info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_every_field_has_a_flag_and_help_lists_it(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    flags = {opt for action in parser._actions for opt in action.option_strings}
    assert {f"--{name}" for name in Options.model_fields} | {"--config", "--help", "-h"} == flags
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--help"])
    assert info.value.code == 0
    help_text = capsys.readouterr().out
    for name in Options.model_fields:
        assert f"--{name} " in help_text or f"--{name}\n" in help_text, name


def test_help_shows_defaults_and_env_but_never_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser(defaults={"model": "gpt-4o-mini", "openai_api_key": DUMMY_KEY})
    help_text = " ".join(parser.format_help().split())
    assert "(default: 50000)" in help_text and "(default: gbatch_flows)" in help_text
    assert "(default: gpt-4o-mini, set by the task)" in help_text
    assert "[env: OPENAI_API_KEY]" in help_text and "[env: OPENAI_BASE_URL]" in help_text
    assert DUMMY_KEY not in help_text
    assert "{auto,always,never}" in help_text


def test_field_kinds_cover_every_field() -> None:
    kinds = {name: field_kind(field.annotation) for name, field in Options.model_fields.items()}
    assert kinds["dryrun"].base is bool
    assert kinds["max_session_cost"].base is float and kinds["max_session_cost"].optional
    assert kinds["max_batch_requests"].base is int and not kinds["max_batch_requests"].optional
    assert kinds["emulator"].choices == ("auto", "always", "never")
    assert kinds["storage_options"].base is dict


def _to_argv(values: dict[str, Any]) -> list[str]:
    argv: list[str] = []
    for name, value in values.items():
        if isinstance(value, bool):
            argv += [f"--{name}"] if value else []
        elif value is None:
            argv += [f"--{name}", "none"]
        elif isinstance(value, dict):
            argv += [f"--{name}", json.dumps(value)]
        else:
            argv += [f"--{name}", str(value)]
    return argv


def test_every_flag_round_trips_a_non_default_value() -> None:
    wanted = {
        "task_dir": "s3://bucket/prefix", "storage_options": {"anon": True, "client_kwargs": {"x": 1}}, "quota_dir": "s3://bucket/quota",
        "model": "gpt-4.1-nano", "client_base_url": "http://127.0.0.1:9/v1", "chat_endpoint": "/v1/other",
        "openai_api_key": DUMMY_KEY, "openai_organization": "org-1", "openai_project": "proj-1",
        "emulator": "never", "no_wandb": True, "wandb_project": "p2", "wandb_name": "n", "wandb_run_id": "r1",
        "wandb_entity": "e", "dryrun": True, "force_direct": True, "no_prefect": True, "direct_verbose": "warn",
        "direct_finish_requests": 7, "max_direct_rpm": 120.5, "max_direct_tpm": 9000.0,
        "max_direct_concurrency": 3, "shared_direct_limit": "team-a",
        "max_batch_requests": 1000, "max_batch_mb": 12.5, "max_batch_ktokens": 300.0,
        "max_batch_cost": 2.5, "max_unpushed_batches": 4, "max_remote_batches": 6, "max_remote_requests": 70000,
        "max_remote_mb": 500.0, "max_remote_ktokens": 1000.0, "max_remote_cost": 20.0,
        "max_session_requests": 5000, "max_session_ktokens": 800.0, "max_session_cost": None,
        "max_task_requests": 90000, "max_task_ktokens": 2000.0, "max_task_cost": 30.0, "max_retries": 0,
        "min_pass_ratio": 0.5, "max_pass_failures": 5, "process_failed_batches": -1, "retry_fatal_requests": True,
        "token_safety_margin": 0.1, "size_safety_margin": 0.05, "poll_interval_min_s": 0.5,
        "poll_interval_max_s": 30.0, "max_poll_wait_s": 600.0, "only_process": False, "no_run": True,
        "reinit_meta": True, "wipe_requests": True, "wipe_failed": True, "wipe_task": True,
        "max_completion_tokens": 256, "completion_ratio": 0.4, "temperature": 0.7, "top_p": 0.9,
        "opinions_min": 2, "opinions_max": 5, "confidence": 0.75, "cost_input_direct_mtoken": 0.15,
        "cost_input_cached_mtoken": 0.075, "cost_input_batch_mtoken": 0.075, "cost_output_direct_mtoken": 0.6,
        "cost_output_batch_mtoken": 0.3, "max_outage_s": 42.0, "log_level": "DEBUG",
        "azure_endpoint": "https://example-resource.openai.azure.com", "azure_api_version": "2025-03-01-preview",
        "azure_api_key": "azure-test-dummy-key", "azure_price_model": "gpt-4o",
    }
    assert set(wanted) == set(Options.model_fields)
    opts = parse_options(_to_argv(wanted), env={})
    for name, value in wanted.items():
        got = getattr(opts, name).get_secret_value() if name in secret_fields(Options) else getattr(opts, name)
        assert got == value, name


def test_precedence_cli_over_yaml_over_env_over_task_defaults(tmp_path: Path) -> None:
    env = {"OPENAI_ENDPOINT": "/env", "OPENAI_ORG_ID": "org-env", "OPENAI_PROJECT_ID": "proj-env",
           "OPENAI_BASE_URL": ""}  # empty = unset
    config = _write(tmp_path, "chat_endpoint: /yaml\nopenai_organization: org-yaml\nmax_retries: 4\n"
                              "temperature: 0.5\nmax_session_cost: null\n")
    task_defaults = {"model": "task-model", "max_retries": 9, "temperature": 0.1, "openai_project": "proj-task"}
    opts = parse_options(["--config", config, "--chat_endpoint", "/cli"], env=env, task_defaults=task_defaults)
    assert opts.chat_endpoint == "/cli"  # CLI beats YAML and env
    assert opts.openai_organization == "org-yaml"  # YAML beats env
    assert opts.openai_project == "proj-env"  # env beats task default
    assert (opts.max_retries, opts.temperature) == (4, 0.5)  # YAML beats task default
    assert opts.model == "task-model"  # task default beats built-in default
    assert opts.client_base_url is None and opts.max_session_cost is None
    assert opts.max_batch_requests == 50000  # built-in default


def test_flags_only_override_what_is_given(tmp_path: Path) -> None:
    config = _write(tmp_path, "dryrun: true\nmax_batch_mb: 50\n")
    opts = parse_options(["--config", config, "--max_retries", "1"], env={})
    assert (opts.dryrun, opts.max_batch_mb, opts.max_retries) == (True, 50, 1)


def test_unknown_yaml_key_lists_valid_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _exit(capsys, ["--config", _write(tmp_path, "max_batch_mbs: 3\nmax_retries: 1\n")])
    assert "unknown option(s) 'max_batch_mbs' (did you mean 'max_batch_mb'?)" in line
    assert "valid options:" in line and all(name in line for name in Options.model_fields)


@pytest.mark.parametrize("text,expected", [
    ("max_retries: [1\n", "invalid YAML at line"),
    ("- a\n- b\n", "expected a mapping of option names to values, got list"),
    ("max_batch_mb: 300\n", "max_batch_mb=300 (from --config"),
    ("max_batch_mb: lots\n", "max_batch_mb='lots' (from --config"),
])
def test_bad_yaml_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                                    expected: str) -> None:
    assert expected in _exit(capsys, ["--config", _write(tmp_path, text)])


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "cannot read the file" in _exit(capsys, ["--config", str(tmp_path / "nope.yaml")])


def test_empty_config_file_is_fine(tmp_path: Path) -> None:
    assert parse_options(["--config", _write(tmp_path, "")], env={}) == Options()


@pytest.mark.parametrize("argv,expected", [
    (["--max_batch_ktokens", "3000", "--max_remote_ktokens", "2000"],
     "lower --max_batch_ktokens or raise --max_remote_ktokens"),
    (["--max_batch_mb", "x"], "argument --max_batch_mb: expected a number, got 'x'"),
    (["--max_retries", "1.5"], "argument --max_retries: expected an integer, got '1.5'"),
    (["--max_batch_requests", "none"], "expected an integer, got 'none'"),
    (["--storage_options", "{bad"], "argument --storage_options: invalid JSON"),
    (["--storage_options", "[1]"], "expected a JSON object"),
    (["--emulator", "sometimes"], "invalid choice: 'sometimes'"),
    (["--max_batch_requests", "60000"], "max_batch_requests=60000 (from the command line): Input should be less"),
    (["--max_batch", "5"], "unrecognized arguments"),  # no abbreviations
    (["--wipe_task", "--only_process"], "--wipe_task with --only_process"),
])
def test_cli_mistakes_exit_2_with_one_line(capsys: pytest.CaptureFixture[str], argv: list[str],
                                           expected: str) -> None:
    assert expected in _exit(capsys, argv)


def test_env_errors_name_the_variable_and_never_echo_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    line = _exit(capsys, [], env={"OPENAI_BASE_URL": "localhost:8000", "OPENAI_API_KEY": "**********"})
    assert "(from environment variable OPENAI_BASE_URL)" in line
    assert "openai_api_key (from environment variable OPENAI_API_KEY)" in line
    line = _exit(capsys, ["--openai_api_key", DUMMY_KEY, "--max_batch_mb", "150", "--max_remote_mb", "100"])
    assert DUMMY_KEY not in line


def test_optional_numbers_accept_none() -> None:
    opts = parse_options(["--max_session_cost", "none", "--temperature", "NULL", "--model", ""], env={},
                         task_defaults={"temperature": 0.2, "model": "m"})
    assert (opts.max_session_cost, opts.temperature, opts.model) == (None, None, None)


def test_task_defaults_with_unknown_key_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="task_defaults: unknown option"):
        parse_options([], env={}, task_defaults={"modle": "x"})


def test_resolve_options_raises_instead_of_exiting() -> None:
    with pytest.raises(OptionsError, match="opinions_min"):
        resolve_options({"opinions_min": 3, "opinions_max": 2}, env={})


def test_split_options_keeps_what_was_given_and_what_adapted() -> None:
    """The task's command line: the run's Options know which flags were given and which defaults moved."""
    from pydantic import BaseModel

    from gbatch_flows.cli import options_model, split_options
    from gbatch_flows.task import Task

    class P(BaseModel):
        size: int = 3

    class T(Task):
        name = "t"
        Params = P

    combined = parse_options(["--max_session_cost", "0.1", "--size", "4"], env={}, model=options_model(T))
    options, params = split_options(T, combined)
    assert params == {"size": 4}
    assert options.model_fields_set == {"max_session_cost"} and options.max_batch_cost == 0.1
    assert [note.split()[0] for note in options.adapted] == ["max_batch_cost"]
    _, params = split_options(T, parse_options([], env={}, model=options_model(T)))
    assert params == {}  # not given: the stored value (or the task's default) is used
