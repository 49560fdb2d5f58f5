"""Demo task: describe Unicode characters, one structured-output request per character.

    python flows/char_codes.py                      # bundled emulator when OPENAI_API_KEY is not set
    python flows/char_codes.py --char_ranges 0x41-0x5A,0x3B1-0x3C9 --max_session_cost 0.5
"""

from __future__ import annotations

import gc
import os
import signal
import sys

if __name__ == "__main__":  # Ctrl+C while the imports load (1-2 s): one line, no traceback (main() restores it)
    signal.signal(signal.SIGINT, lambda *_: (print("interrupted while starting: nothing was changed",
                                                   file=sys.stderr, flush=True), os._exit(130)))
    gc.disable()  # no cyclic collection while the imports load: main() resumes it (gbatch_flows/startup.py)

import unicodedata
from enum import StrEnum
from json.encoder import encode_basestring_ascii as _json_string
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from gbatch_flows.cli import lazy_flow  # noqa: E402
from gbatch_flows.endpoints import user_text
from gbatch_flows.task import Processed, ResponseInvalid, Result, Task

SYSTEM = (
    "You are a meticulous Unicode expert. For the character you are given, answer with its type, a one-sentence "
    "description, and a natural sample sentence that contains the character exactly twice."
)


class CharType(StrEnum):
    letter = "letter"
    digit = "digit"
    punctuation = "punctuation"
    symbol = "symbol"
    whitespace = "whitespace"
    other = "other"


class CharInfo(BaseModel):
    """What the model answers for one character."""

    character: str
    type: CharType
    description: str
    sample_sentence: str


class CharCode(BaseModel):
    """One output record."""

    codepoint: int
    character: str
    unicode_name: str
    type: CharType
    description: str
    sample_sentence: str


class CharCodesParams(BaseModel):
    char_ranges: str = Field("0x21-0x7E", description="Comma-separated code point ranges, e.g. 0x41-0x5A,0x3B1-0x3C9")

    @field_validator("char_ranges")
    @classmethod
    def _check(cls, value: str) -> str:
        parse_ranges(value)
        return value


def parse_ranges(text: str) -> list[tuple[int, int]]:
    ranges = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            a, b = int(lo, 0), int(hi or lo, 0)
        except ValueError as exc:
            raise ValueError(f"bad range {part!r} in --char_ranges: write e.g. 0x41-0x5A") from exc
        if not 0 <= a <= b <= 0x10FFFF:
            raise ValueError(f"bad range {part!r}: need 0 <= start <= end <= 0x10FFFF")
        ranges.append((a, b))
    return ranges


def user_prompt(char: str) -> str:
    return f"Character: {char!r} (U+{ord(char):04X})"


class CharCodes(Task):
    name = "char_codes"
    default_meta = {**Task.default_meta, "model": "gpt-4o-mini", "max_completion_tokens": 200, "temperature": 0.2}
    record_type = CharCode
    Params = CharCodesParams

    def generate_requests(self, meta: dict[str, Any]):
        for lo, hi in parse_ranges(meta["char_ranges"]):
            for cp in range(lo, hi + 1):
                char = chr(cp)
                if unicodedata.category(char).startswith("C"):
                    continue  # control / unassigned / surrogate
                messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user_prompt(char)}]
                yield self.chat_request(f"U+{cp:04X}", messages, meta, response_model=CharInfo)

    def process_result(self, result: Result, meta: dict[str, Any]) -> Processed:
        char = chr(int(result.request.key[2:], 16))
        info = self.parse(self.contents(result)[0], CharInfo)
        if info.character != char:
            raise ResponseInvalid(f"answer is about {info.character!r}, not {char!r}")
        if info.sample_sentence.count(char) < 2:
            raise ResponseInvalid(f"sample sentence does not contain {char!r} twice")
        record = CharCode(codepoint=ord(char), character=char, unicode_name=unicodedata.name(char, ""),
                          type=info.type, description=info.description, sample_sentence=info.sample_sentence)
        return Processed(records=[record.model_dump(mode="json")])

    def emulator_responders(self) -> dict[str, Any]:
        return {"*": emulator_answer}


def emulator_answer(body: dict[str, Any], ctx: Any) -> str:
    """The bundled emulator's answer to a char_codes request (valid, deterministic)."""
    text = user_text(body)  # chat messages or Responses input
    if not text.startswith("Character: "):
        from gbatch_flows.emulator.responders import default_responder

        return default_responder(body, ctx)
    char = chr(int(text.rsplit("U+", 1)[1].rstrip(")"), 16))
    cat = unicodedata.category(char)
    kind = {"L": "letter", "N": "digit", "P": "punctuation", "S": "symbol", "Z": "whitespace"}.get(cat[0], "other")
    name = unicodedata.name(char, f"U+{ord(char):04X}").lower()
    # json.dumps of {"character", "type", "description", "sample_sentence"}, written out: the emulator answers
    # every bench request with this, and the escaped fields joined directly cost a third of json.dumps
    quoted = _json_string(char)[1:-1]
    return (f'{{"character": "{quoted}", "type": "{kind}", "description": "The character {quoted} is the Unicode '
            f'{_json_string(name)[1:-1]}.", "sample_sentence": "Here is {quoted} and here is {quoted} again."}}')


# ``char_codes_flow``: the Prefect flow of this task (deployment entrypoint ``flows/char_codes.py:char_codes_flow``), made on first access.
__getattr__ = lazy_flow(globals(), CharCodes, "char_codes_flow")


if __name__ == "__main__":
    from gbatch_flows.cli import main

    sys.exit(main(CharCodes))
