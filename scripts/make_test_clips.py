"""Makes the committed synthetic speech clips in tests/data/clips/ with the Debian espeak-ng CLI.

    .venv/bin/python scripts/make_test_clips.py [--out tests/data/clips]

40 hand-written English sentences (numbers, names, everyday topics), each spoken by one of
eight eSpeak NG voices at 130-190 words per minute, resampled to 16 kHz mono FLAC, plus
``manifest.jsonl`` (``id``, ``audio`` relative to the manifest, ``text``). Deterministic: voice
and speed are fixed per sentence. Re-running rewrites the same files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile
import soxr

SENTENCES = [
    "The train to Boston leaves at seven fifteen tomorrow morning.",
    "My sister bought three apples and a loaf of bread.",
    "Please close the window before it starts to rain.",
    "We planted tomatoes in the garden last spring.",
    "The meeting has been moved to Thursday afternoon.",
    "Doctor Patel will see you in twenty minutes.",
    "He drove four hundred miles without stopping once.",
    "The library closes early on Sundays.",
    "Can you pass me the salt and pepper, please?",
    "Our team won the final game by two points.",
    "The river was cold, but the children swam anyway.",
    "She reads a new book every week.",
    "The bakery on Main Street sells fresh bagels.",
    "I forgot my umbrella at the office again.",
    "The concert starts at eight o'clock in the evening.",
    "Maria and James are flying to London next month.",
    "The price of coffee went up by ten percent.",
    "Turn left at the second traffic light.",
    "The old bridge was built more than a century ago.",
    "Remember to water the plants while I am away.",
    "Our neighbor has a small brown dog named Max.",
    "The museum is free for students on Fridays.",
    "We need six chairs for the dinner party.",
    "The weather report says it will snow tonight.",
    "Peter fixed the broken bicycle in an hour.",
    "The store is open from nine to five.",
    "She learned to play the piano when she was eight.",
    "A strong wind knocked down the fence last night.",
    "The kitchen smells of cinnamon and warm bread.",
    "Please send me the report by the end of the day.",
    "The children painted a picture of the ocean.",
    "My grandfather was born in nineteen fifty two.",
    "The bus was late because of the heavy traffic.",
    "We watched the sunset from the top of the hill.",
    "There are twelve eggs in the basket.",
    "Anna plays tennis with her friends every Saturday.",
    "The hotel room had a view of the mountains.",
    "He wrote a long letter to his brother in Canada.",
    "The soup needs a little more salt.",
    "Thank you for coming to the meeting today.",
]

VOICES = ["en-us", "en", "en-gb-x-rp", "en+f3", "en+m3", "en-us+f2", "en-gb-scotland", "en-029"]
SPEEDS = [130, 145, 160, 175, 190]


def synthesise_cli(text: str, voice: str, wpm: int) -> np.ndarray:
    """16 kHz mono float32 from the espeak-ng CLI (which writes 22.05 kHz WAV)."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "out.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(wav), text],
                       check=True, capture_output=True)
        audio, sr = soundfile.read(str(wav), dtype="float32")
    return soxr.resample(audio, sr, 16000, quality="HQ").astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "tests/data/clips")
    args = parser.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        print("error: espeak-ng is not installed (apt-get install espeak-ng)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, text in enumerate(SENTENCES):
        voice = VOICES[i % len(VOICES)]
        wpm = SPEEDS[(i * 3) % len(SPEEDS)]
        audio = synthesise_cli(text, voice, wpm)
        clip_id = f"clip{i:03d}"
        soundfile.write(str(args.out / f"{clip_id}.flac"), audio, 16000, subtype="PCM_16")
        rows.append({"id": clip_id, "audio": f"{clip_id}.flac", "text": text,
                     "voice": voice, "wpm": wpm, "seconds": round(len(audio) / 16000, 2)})
    with open(args.out / "manifest.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    total = sum(r["seconds"] for r in rows)
    print(f"wrote {len(rows)} clips ({total:.1f} s) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
