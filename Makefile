# The two commands of the README. Both set everything up first (idempotent, fast when already done).
.PHONY: setup run test fixture bench

setup:
	@bash scripts/setup.sh

run: setup
	.venv/bin/python bot.py

test: setup
	.venv/bin/python -m pytest -q

fixture: setup
	.venv/bin/python tests/fixtures/build_tiny_musicgen.py && .venv/bin/python tests/fixtures/build_tiny_musicgen_melody.py && .venv/bin/python tests/fixtures/build_tiny_stable_audio.py

bench: setup
	.venv/bin/python bench/generate.py --quick
