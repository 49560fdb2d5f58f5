"""Demo task: classify utterances into the MELD emotion classes, with multi-opinion voting.

Each utterance first gets ``opinions_min`` answers (one request with ``n`` choices); while the leading emotion has
less than ``confidence`` of the votes, follow-up requests ask for more, up to ``opinions_max``. On
``--chat_endpoint /v1/responses`` (no ``n``) every request carries one opinion and follow-ups collect the rest.

    python flows/utterance_emotion.py --opinions_min 3 --opinions_max 7 --confidence 0.7
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

import hashlib
import json
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from gbatch_flows.cli import lazy_flow  # noqa: E402
from gbatch_flows.endpoints import user_text
from gbatch_flows.task import Processed, Result, Task

UTTERANCES_FILE = Path(__file__).resolve().parent / "data" / "utterances.jsonl"

SYSTEM = (
    "Classify the emotion the speaker expresses in the utterance into exactly one of: neutral, joy, surprise, "
    "anger, sadness, disgust, fear."
)


class Emotion(StrEnum):
    neutral = "neutral"
    joy = "joy"
    surprise = "surprise"
    anger = "anger"
    sadness = "sadness"
    disgust = "disgust"
    fear = "fear"


class EmotionAnswer(BaseModel):
    emotion: Emotion


class UtteranceEmotion(BaseModel):
    """One output record."""

    id: str
    utterance: str
    emotion: Emotion | None
    confidence: float
    votes: dict[str, int]
    confident: bool


class UtteranceParams(BaseModel):
    utterances_file: str = Field(str(UTTERANCES_FILE), description="JSONL file of {\"id\", \"utterance\"} lines")

    @field_validator("utterances_file")
    @classmethod
    def _readable(cls, value: str) -> str:
        path = Path(value).expanduser()
        if not path.is_file():
            problem = "is a folder" if path.is_dir() else "does not exist"
            raise ValueError(f"{value} {problem}: pass --utterances_file with a JSONL file of "
                             '{"id": ..., "utterance": ...} lines')
        return value


def load_utterances(path: str) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


class UtteranceEmotionTask(Task):
    name = "utterance_emotion"
    default_meta = {**Task.default_meta, "model": "gpt-4o-mini", "max_completion_tokens": 20, "temperature": 1.0,
                    "opinions_min": 3, "opinions_max": 7, "confidence": 0.7}
    record_type = UtteranceEmotion
    Params = UtteranceParams

    def _request(self, key: str, utterance: str, meta: dict[str, Any], n: int, votes: list[str]):
        n = min(n, self.max_choices(meta) or n)  # /v1/responses: one opinion per request, follow-ups ask for more
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Utterance: {utterance}"}]
        return self.chat_request(key, messages, meta, response_model=EmotionAnswer, n=n,
                                 request_meta={"utterance": utterance, "votes": votes})

    def generate_requests(self, meta: dict[str, Any]):
        n = self.adviser(meta).opinions_min
        for item in load_utterances(meta["utterances_file"]):
            yield self._request(item["id"], item["utterance"], meta, n, [])

    def process_result(self, result: Result, meta: dict[str, Any]) -> Processed:
        votes = list(result.request.meta.get("votes", []))
        votes += [self.parse(c, EmotionAnswer).emotion.value for c in self.contents(result)]
        verdict = self.adviser(meta).advise(votes)
        utterance = result.request.meta["utterance"]
        if verdict.more:
            return Processed(followups=[self._request(result.request.key, utterance, meta, verdict.more, votes)])
        counts = {e: votes.count(e) for e in sorted(set(votes))}
        record = UtteranceEmotion(id=result.request.key, utterance=utterance, emotion=verdict.answer,
                                  confidence=round(verdict.share, 4), votes=counts, confident=verdict.confident)
        return Processed(records=[record.model_dump(mode="json")])

    def emulator_responders(self) -> dict[str, Any]:
        return {"*": emulator_answer}


LEXICON = {
    "joy": ("great", "love", "happy", "wonderful", "yay", "awesome", "fantastic"),
    "anger": ("hate", "stupid", "furious", "shut up", "how dare"),
    "sadness": ("miss", "sorry", "sad", "cry", "lost", "alone"),
    "surprise": ("what?!", "really?", "no way", "wow", "oh my"),
    "fear": ("scared", "afraid", "terrified", "help"),
    "disgust": ("gross", "disgusting", "ew", "yuck"),
}


def emulator_answer(body: dict[str, Any], ctx: Any) -> str:
    """A noisy annotator for the emulator: a keyword guess, replaced by a random emotion in ~25% of answers."""
    text = user_text(body)  # chat messages or Responses input
    if not text.startswith("Utterance: "):
        from gbatch_flows.emulator.responders import default_responder

        return default_responder(body, ctx)
    lowered = text.lower()
    guess = next((e for e, words in LEXICON.items() if any(w in lowered for w in words)), "neutral")
    digest = hashlib.sha256(f"{text}|{ctx.choice_index}|{body.get('n', 1)}".encode()).digest()
    if digest[0] < 64:
        guess = [e.value for e in Emotion][digest[1] % len(Emotion)]
    return json.dumps({"emotion": guess})


# ``utterance_emotion_flow``: the Prefect flow of this task (deployment entrypoint ``flows/utterance_emotion.py:utterance_emotion_flow``), made on first access.
__getattr__ = lazy_flow(globals(), UtteranceEmotionTask, "utterance_emotion_flow")


if __name__ == "__main__":
    from gbatch_flows.cli import main

    sys.exit(main(UtteranceEmotionTask))
