"""OpenAI-compatible emulator: files, batches, chat completions, responses, embeddings, completions, moderations and
models, shaped like the real API (optionally also under Azure OpenAI's paths).

In process::

    from gbatch_flows.emulator import EmulatorConfig, run_emulator

    with run_emulator(EmulatorConfig(batch_duration=0)) as emu:
        client = openai.OpenAI(base_url=emu.base_url, api_key="sk-test-dummy")
        ...
        emu.stats()                      # counts of what was served
        emu.set_faults(script=[{"op": "chat.completions", "nth": 2, "fault": "http_500"}])

As a server: ``python -m gbatch_flows.emulator --port 8000`` (``--help`` lists every knob).
"""

from .app import create_app
from .config import EmulatorConfig, FaultConfig, FaultRates, FaultRule
from .responders import Responder, ResponderContext, default_responder
from .runtime import Emulator
from .server import RunningEmulator, run_emulator, serve

__all__ = [
    "Emulator",
    "EmulatorConfig",
    "FaultConfig",
    "FaultRates",
    "FaultRule",
    "Responder",
    "ResponderContext",
    "RunningEmulator",
    "create_app",
    "default_responder",
    "run_emulator",
    "serve",
]
