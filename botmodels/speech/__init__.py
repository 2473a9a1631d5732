"""Speech: speech-to-text and text-to-speech (`schemas`, `front`, `audio`);
runners: `runners/stt.py`, `runners/tts.py`.
"""
