"""Secrets never become flow parameters: the API key and storage credentials stay out of what the server stores."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import ModuleType

import pytest

from gbatch_flows.flow import run_flow
from gbatch_flows.options import Options

from .conftest import DUMMY_KEY, PrefectServer, emulator_for, flow_options, read_jsonl


def recent_flow_run_parameters() -> list[str]:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return [json.dumps(run.parameters) for run in client.read_flow_runs(limit=50)]


def test_api_key_as_parameter_is_refused(prefect_server: PrefectServer, char_codes: ModuleType,
                                         tmp_path: Path) -> None:
    """The key comes from the environment; giving it as a flow parameter fails at once, saying what to do."""
    with emulator_for(char_codes.CharCodes) as emu:
        options = flow_options(tmp_path, emu, openai_api_key="sk-test-dummy-as-parameter")
        state = char_codes.char_codes_flow(options=options, params={"char_ranges": "0x41"}, return_state=True)
        assert state.is_failed()
        assert "OPENAI_API_KEY in the environment" in (state.message or "")
        with pytest.raises(Exception, match="OPENAI_API_KEY in the environment"):
            state.result()
        assert emu.stats()["requests_total"] == 0
    assert not (tmp_path / "tasks").exists()
    assert os.environ["OPENAI_API_KEY"] != "sk-test-dummy-as-parameter"


def test_cli_run_keeps_storage_credentials_and_key_off_the_server(prefect_server: PrefectServer,
                                                                  char_codes: ModuleType, tmp_path: Path) -> None:
    """``run_flow`` (what the CLI calls) with a key and credential-like storage options: the run works, the server
    stores neither (redacted storage options, no key at all)."""
    with emulator_for(char_codes.CharCodes) as emu:
        options = Options(**flow_options(tmp_path, emu), openai_api_key="sk-test-dummy-cli-key",
                          storage_options={"token": "sekret-storage-token"})
        summary = run_flow(char_codes.CharCodes({"char_ranges": "0x41-0x43"}), options, session_id="secret-check")
    assert summary.status == "finished"
    assert os.environ["OPENAI_API_KEY"] == DUMMY_KEY  # the key went to the flow in memory, not the environment
    assert len(read_jsonl(tmp_path / "tasks" / "char_codes" / "char_codes_output.jsonl")) == 3
    stored = [p for p in recent_flow_run_parameters() if "secret-check" in p]
    assert len(stored) == 1
    assert "sekret-storage-token" not in stored[0] and "sk-test-dummy-cli-key" not in stored[0]
    assert json.loads(stored[0])["options"]["storage_options"] == {"token": "***"}


def test_redacted_storage_credentials_are_refused(prefect_server: PrefectServer, char_codes: ModuleType,
                                                  tmp_path: Path) -> None:
    """A deployment whose storage_options hold credentials (redacted on the way) fails with the remedy."""
    with emulator_for(char_codes.CharCodes) as emu:
        options = flow_options(tmp_path, emu, storage_options={"key": "***", "secret": "***"})
        state = char_codes.char_codes_flow(options=options, params={"char_ranges": "0x41"}, return_state=True)
    assert state.is_failed()
    assert "AWS_ACCESS_KEY_ID" in (state.message or "") and "\n" not in state.message  # one line
    with pytest.raises(ValueError, match="AWS_ACCESS_KEY_ID"):
        state.result()
