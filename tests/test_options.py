"""Options model: defaults, constraints, contradictions, secrets, source layering."""

from __future__ import annotations

import json
import subprocess
import sys
import typing

import pytest
from pydantic import SecretStr, ValidationError

from gbatch_flows.options import SECRET_MASK, Options, env_vars, redact_mapping, secret_fields

DUMMY_KEY = "sk-test-dummy-0123456789-XYZZY"

EXPECTED_DEFAULTS = {
    "task_dir": "./tasks", "storage_options": {}, "quota_dir": None, "model": None, "client_base_url": None,
    "chat_endpoint": "/v1/chat/completions", "openai_api_key": None, "openai_organization": None,
    "openai_project": None, "emulator": "auto", "no_wandb": False, "wandb_project": "gbatch_flows",
    "wandb_name": None, "wandb_run_id": None, "wandb_entity": None, "dryrun": False, "force_direct": False,
    "direct_verbose": "never", "no_prefect": False, "direct_finish_requests": 0, "max_direct_rpm": None, "max_direct_tpm": None,
    "max_direct_concurrency": 16, "shared_direct_limit": None,
    "max_batch_requests": 50000, "max_batch_mb": 100, "max_batch_ktokens": 20000,
    "max_batch_cost": 10.0, "max_unpushed_batches": 10, "max_remote_batches": 15,
    "max_remote_requests": 5_000_000, "max_remote_mb": 10000, "max_remote_ktokens": 50000,
    "max_remote_cost": 50.0, "max_session_requests": None, "max_session_ktokens": None,
    "max_session_cost": 10.0, "max_task_requests": None, "max_task_ktokens": None, "max_task_cost": None,
    "max_retries": 2, "min_pass_ratio": 0.8, "max_pass_failures": 2, "process_failed_batches": 0,
    "retry_fatal_requests": False, "token_safety_margin": 0.02, "size_safety_margin": 0.02,
    "poll_interval_min_s": 1.0, "poll_interval_max_s": 60.0, "max_poll_wait_s": None, "only_process": False,
    "no_run": False, "reinit_meta": False, "wipe_requests": False, "wipe_failed": False, "wipe_task": False,
    "max_completion_tokens": None, "completion_ratio": None, "temperature": None, "top_p": None,
    "opinions_min": None, "opinions_max": None, "confidence": None, "cost_input_direct_mtoken": None,
    "cost_input_cached_mtoken": None, "cost_input_batch_mtoken": None, "cost_output_direct_mtoken": None,
    "cost_output_batch_mtoken": None, "max_outage_s": 180.0, "log_level": "INFO",
    # Azure OpenAI (issue 18)
    "azure_endpoint": None, "azure_api_version": None, "azure_api_key": None, "azure_price_model": None,
}


def test_fields_and_defaults_are_the_original_ones() -> None:
    assert set(Options.model_fields) == set(EXPECTED_DEFAULTS)
    opts = Options()
    for name, expected in EXPECTED_DEFAULTS.items():
        assert getattr(opts, name) == expected, name


def test_every_field_has_a_description() -> None:
    for name, field in Options.model_fields.items():
        assert field.description and len(field.description) > 10, name


def test_unknown_field_is_refused() -> None:
    with pytest.raises(ValidationError, match="max_batch_size"):
        Options(max_batch_size=3)  # type: ignore[call-arg]


@pytest.mark.parametrize("field,value", [
    ("max_batch_requests", 50001), ("max_batch_requests", 0), ("max_batch_mb", 200.5), ("max_batch_mb", 0),
    ("min_pass_ratio", 1.01), ("min_pass_ratio", -0.1), ("confidence", 0), ("confidence", 1.5),
    ("temperature", 2.01), ("temperature", -0.5), ("top_p", 1.2), ("max_retries", -1),
    ("token_safety_margin", -0.01), ("size_safety_margin", 1.5), ("completion_ratio", 101),
    ("max_session_cost", -1), ("max_task_requests", -5), ("direct_finish_requests", -1),
    ("max_direct_concurrency", 0), ("max_direct_rpm", 0), ("process_failed_batches", -2),
    ("opinions_min", 0), ("max_completion_tokens", 0), ("cost_input_batch_mtoken", -0.1),
    ("emulator", "sometimes"), ("direct_verbose", "loud"), ("log_level", "chatty"),
    ("client_base_url", "127.0.0.1:8000"), ("chat_endpoint", "v1/chat/completions"), ("task_dir", ""),
    ("poll_interval_min_s", 0),
])
def test_field_constraints(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        Options(**{field: value})
    assert any(err["loc"] and err["loc"][0] == field for err in info.value.errors())


@pytest.mark.parametrize("field,value", [
    ("max_batch_requests", 50000), ("max_batch_mb", 200), ("confidence", 1), ("temperature", 2), ("top_p", 0),
    ("min_pass_ratio", 0), ("process_failed_batches", -1), ("max_session_cost", None), ("log_level", "debug"),
])
def test_boundary_values_accepted(field: str, value: object) -> None:
    Options(**{field: value})


def test_log_level_is_normalised() -> None:
    assert Options(log_level="warn").log_level == "WARNING"
    assert Options(log_level="debug").logging_level() == 10


@pytest.mark.parametrize("kwargs,expected", [
    ({"max_batch_ktokens": 3000, "max_remote_ktokens": 2000},
     ("max_batch_ktokens (3000) > max_remote_ktokens (2000): a batch could never be pushed; lower "
      "--max_batch_ktokens or raise --max_remote_ktokens")),
    ({"max_batch_requests": 1000, "max_remote_requests": 999}, "lower --max_batch_requests or raise --max_remote_requests"),
    ({"max_batch_mb": 150, "max_remote_mb": 100}, "max_batch_mb (150) > max_remote_mb (100)"),
    ({"max_batch_cost": 60, "max_session_cost": None, "max_remote_cost": 50},
     "max_batch_cost (60) > max_remote_cost (50)"),
    ({"max_batch_cost": 5, "max_session_cost": 2}, "lower --max_batch_cost or raise --max_session_cost"),
    ({"max_batch_cost": 5, "max_task_cost": 1.5}, "max_batch_cost (5) > max_task_cost (1.5)"),
    ({"opinions_min": 4, "opinions_max": 3}, "opinions_min (4) > opinions_max (3)"),
    ({"poll_interval_min_s": 30, "poll_interval_max_s": 10}, "lower --poll_interval_min_s"),
    ({"max_poll_wait_s": 0.5, "poll_interval_min_s": 1}, "raise --max_poll_wait_s"),
    ({"wipe_task": True, "only_process": True}, "--wipe_task with --only_process"),
    ({"wipe_requests": True, "only_process": True}, "--wipe_requests with --only_process"),
    ({"force_direct": True, "only_process": True}, "--force_direct with --only_process"),
    ({"direct_finish_requests": 10, "only_process": True}, "--direct_finish_requests with --only_process"),
    ({"no_run": True, "only_process": True}, "--only_process with --no_run"),
    ({"emulator": "always", "client_base_url": "http://127.0.0.1:1/v1"}, "--emulator always"),
])
def test_contradictions_are_refused_with_the_fix(kwargs: dict, expected: str) -> None:
    with pytest.raises(ValidationError) as info:
        Options(**kwargs)
    assert expected in str(info.value)


def test_equal_limits_are_fine_and_all_problems_are_reported_together() -> None:
    Options(max_batch_ktokens=2000, max_remote_ktokens=2000, max_batch_cost=10, max_session_cost=10,
            opinions_min=3, opinions_max=3, poll_interval_min_s=5, poll_interval_max_s=5, max_poll_wait_s=5)
    Options(wipe_task=True, no_run=True)  # a wipe-only run is the normal use of no_run
    with pytest.raises(ValidationError) as info:
        Options(max_batch_mb=150, max_remote_mb=100, opinions_min=5, opinions_max=2)
    message = str(info.value)
    assert "max_remote_mb" in message and "opinions_max" in message


@pytest.mark.parametrize("argv,expected", [
    # the README's "small real sample" and prefect.yaml's base_options: the default batch cost cap falls
    (["--max_batch_requests", "20", "--max_session_cost", "0.10"], {"max_batch_cost": 0.10, "max_remote_cost": 50}),
    (["--max_session_cost", "1.0"], {"max_batch_cost": 1.0}),
    (["--max_task_cost", "0.5", "--max_session_cost", "2"], {"max_batch_cost": 0.5}),
    # a given batch cap above a default remote cap (or budget): the default rises
    (["--max_batch_cost", "60"], {"max_remote_cost": 60, "max_session_cost": 60}),
    (["--max_batch_requests", "30000", "--max_remote_requests", "20000"], "max_remote_requests (20000)"),
    (["--opinions_max", "2", "--opinions_min", "3"], "opinions_min (3) > opinions_max (2)"),
    (["--poll_interval_max_s", "0.5"], {"poll_interval_min_s": 0.5}),
    (["--max_poll_wait_s", "0.2"], {"poll_interval_min_s": 0.2}),
    (["--poll_interval_min_s", "90"], {"poll_interval_max_s": 90}),
])
def test_defaults_adapt_to_given_options_only_two_given_ones_contradict(argv: list[str], expected: object,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from gbatch_flows.cli_args import parse_options

    if isinstance(expected, str):
        with pytest.raises(SystemExit) as info:
            parse_options(argv, env={})
        assert info.value.code == 2 and expected in capsys.readouterr().err
        return
    opts = parse_options(argv, env={})
    for name, value in expected.items():
        assert getattr(opts, name) == pytest.approx(value), name
        assert name not in opts.model_fields_set
    assert {arg[2:] for arg in argv if arg.startswith("--")} == opts.model_fields_set
    assert any(note.startswith(next(iter(expected))) for note in opts.adapted)


def test_task_defaults_and_env_count_as_not_given_and_given() -> None:
    from gbatch_flows.cli_args import parse_options

    opts = parse_options(["--max_session_cost", "0.5"], env={}, task_defaults={"max_batch_cost": 3.0})
    assert opts.max_batch_cost == 0.5 and opts.model_fields_set == {"max_session_cost"}
    with pytest.raises(SystemExit):  # the environment is given: it may contradict the command line
        parse_options(["--emulator", "always"], env={"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    opts = parse_options(["--only_process"], env={}, task_defaults={"direct_finish_requests": 5})
    assert opts.direct_finish_requests == 0 and opts.only_process


def test_flow_parameters_validate_with_adapted_defaults() -> None:
    """The flow validates its options dict: keys present are given (prefect.yaml's base_options)."""
    opts = Options.model_validate({"max_session_cost": 1.0, "max_batch_requests": 20})
    assert opts.max_batch_cost == 1.0
    again = Options.model_validate(opts.public_dict())  # a CLI run hands all values to its flow
    assert again.max_batch_cost == 1.0 and again.max_session_cost == 1.0


def test_api_key_never_shown_unless_revealed() -> None:
    opts = Options(openai_api_key=DUMMY_KEY)
    assert opts.api_key() == DUMMY_KEY
    for text in (repr(opts), str(opts), opts.model_dump_json(), json.dumps(opts.public_dict()),
                 str(opts.model_dump())):
        assert DUMMY_KEY not in text
    assert "openai_api_key" not in opts.public_dict()
    assert json.loads(opts.model_dump_json())["openai_api_key"] == SECRET_MASK
    revealed = opts.model_dump_json(context={"reveal_secrets": True})
    assert json.loads(revealed)["openai_api_key"] == DUMMY_KEY
    assert Options.model_validate_json(revealed).api_key() == DUMMY_KEY
    assert Options().api_key() is None


def test_masked_key_does_not_survive_a_round_trip_silently() -> None:
    masked = Options(openai_api_key=DUMMY_KEY).model_dump_json()
    with pytest.raises(ValidationError, match="OPENAI_API_KEY environment variable") as info:
        Options.model_validate_json(masked)
    assert DUMMY_KEY not in str(info.value)


def test_validation_errors_do_not_echo_the_key() -> None:
    with pytest.raises(ValidationError) as info:
        Options(openai_api_key=DUMMY_KEY, max_batch_mb=150, max_remote_mb=100)  # model-level error
    assert "max_remote_mb" in str(info.value)
    assert DUMMY_KEY[:5] not in str(info.value)  # not even pydantic's truncated echo of the input
    with pytest.raises(ValidationError) as info:
        Options(openai_api_key=SecretStr(""))
    assert "OPENAI_API_KEY" in str(info.value)


def test_storage_credentials_redacted_in_logs_but_usable() -> None:
    opts = Options(storage_options={"key": "AKIA-DUMMY", "secret": "S3-DUMMY-SECRET",
                                    "client_kwargs": {"aws_session_token": "TOK-DUMMY", "region_name": "r"},
                                    "endpoint_url": "http://127.0.0.1:9"})
    public = json.dumps(opts.public_dict())
    for secret in ("AKIA-DUMMY", "S3-DUMMY-SECRET", "TOK-DUMMY"):
        assert secret not in public and secret not in repr(opts)
    assert "http://127.0.0.1:9" in public and '"region_name": "r"' in public
    assert opts.storage_options["secret"] == "S3-DUMMY-SECRET"
    assert redact_mapping({"Password": 1, "user": 2}) == {"Password": "***", "user": 2}


def test_metadata_helpers() -> None:
    assert secret_fields(Options) == ["openai_api_key", "azure_api_key"]
    assert env_vars(Options) == {
        "client_base_url": "OPENAI_BASE_URL", "chat_endpoint": "OPENAI_ENDPOINT",
        "openai_api_key": "OPENAI_API_KEY", "openai_organization": "OPENAI_ORG_ID",
        "openai_project": "OPENAI_PROJECT_ID", "azure_endpoint": "AZURE_OPENAI_ENDPOINT",
        "azure_api_version": "OPENAI_API_VERSION", "azure_api_key": "AZURE_OPENAI_API_KEY"}
    assert typing.get_args(Options.model_fields["openai_api_key"].annotation)[0] is SecretStr


def test_from_sources_layers_cli_env_and_task_defaults() -> None:
    env = {"OPENAI_API_KEY": DUMMY_KEY, "OPENAI_BASE_URL": "http://127.0.0.1:8000/v1", "UNRELATED": "x"}
    opts = Options.from_sources(["--max_retries", "5", "--dryrun"], env=env,
                                defaults={"model": "gpt-4o-mini", "max_retries": 1, "temperature": 0.3})
    assert opts.api_key() == DUMMY_KEY
    assert opts.client_base_url == "http://127.0.0.1:8000/v1"
    assert (opts.model, opts.max_retries, opts.temperature, opts.dryrun) == ("gpt-4o-mini", 5, 0.3, True)
    assert Options.from_sources([], env={}).api_key() is None


def test_from_sources_bad_input_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        Options.from_sources(["--max_batch_mb", "500"], env={})
    assert info.value.code == 2
    assert "max_batch_mb" in capsys.readouterr().err


def test_light_imports_without_prefect_or_wandb() -> None:
    code = ("import sys\n"
            "import gbatch_flows.options, gbatch_flows.cli_args, gbatch_flows.monitor, gbatch_flows.wandb_view\n"
            "from gbatch_flows.monitor import make_monitor\n"
            "from gbatch_flows.options import Options\n"
            "make_monitor(Options(), env={})\n"
            "bad = sorted(m for m in ('prefect', 'wandb') if m in sys.modules)\n"
            "assert not bad, bad\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
