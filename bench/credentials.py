"""What Content Credentials cost: signing and verifying a 30 s track against rendering it, in one run.

    python bench/credentials.py              a 30 s stereo track at 32 kHz (MusicGen's rate), 5 repeats
    python bench/credentials.py --quick      a 5 s track, 2 repeats
    python bench/credentials.py --watermark  also AudioSeal embedding with the real model's shape (random weights)

The render is `render_track` (loudness, fades, FLAC master, 192 kbps MP3, waveform PNG); model generation comes on
top of it and is far slower, so the ratio against the render is the strict one. Prints `name: value` lines, medians
of the repeats; `mp3_credentials_vs_render` (sign + verify of the MP3 over the render) and `credentials_vs_render`
(the MP3 and the FLAC master) have a goal of <= 0.05. A derived track (one parent ingredient) is signed as well,
since lineage makes manifests bigger.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# bench/ holds queue.py, which would shadow the standard library's queue module: keep it off the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from generation.credentials import ContentCredentials, Credential  # noqa: E402
from generation.postprocess import Provenance, render_track  # noqa: E402
from generation.types import Audio  # noqa: E402

SR = 32000


def music(seconds: float, seed: int) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    tone = sum(np.sin(2 * np.pi * f * (1 + 0.01 * seed) * t) for f in (220.0, 277.2, 329.6)) / 3
    mono = 0.2 * (0.55 + 0.45 * np.sin(2 * np.pi * t) ** 2) * (tone + 0.05 * rng.standard_normal(t.size))
    return np.stack([mono, np.roll(mono, 40)]).astype(np.float32)


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def watermark_figures(seconds: float, repeats: int) -> None:
    """AudioSeal at its real size (the 16-bit cards), random weights: embedding/detection time, not quality."""
    import torch
    from audioseal.builder import AudioSealDetectorConfig, AudioSealWMConfig, create_detector, create_generator
    from audioseal.loader import AudioSeal, load_local_model_config
    from omegaconf import OmegaConf

    from generation.watermark import DETECTOR_CARD, GENERATOR_CARD, AudioSealWatermarker, server_message

    torch.manual_seed(0)

    def config(card, kind):
        raw = OmegaConf.to_container(load_local_model_config(card))
        raw.pop("checkpoint")
        return AudioSeal.parse_config(raw, kind, nbits=16)

    generator = create_generator(config(GENERATOR_CARD, AudioSealWMConfig)).eval()
    detector = create_detector(config(DETECTOR_CARD, AudioSealDetectorConfig)).eval()
    marker = AudioSealWatermarker(generator, detector, message=server_message("bench"))
    samples = music(seconds, 9)
    embed = statistics.median(timed(lambda: marker.embed(samples, SR))[0] for _ in range(repeats))
    detect = statistics.median(timed(lambda: marker.detect(samples, SR))[0] for _ in range(repeats))
    print(f"watermark_embed_s: {embed:.3f}")
    print(f"watermark_detect_s: {detect:.3f}")
    print(f"watermark_threads: {torch.get_num_threads()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--watermark", action="store_true")
    args = parser.parse_args()
    seconds = args.seconds or (5.0 if args.quick else 30.0)
    repeats = args.repeats or (2 if args.quick else 5)

    now = datetime.datetime.now(datetime.timezone.utc)
    provenance = Provenance(track_id="bench", prompt="bench track", seed=1, model_id="facebook/musicgen-small",
                            model_license="CC-BY-NC-4.0", params={"duration_s": seconds})  # fmt: skip
    figures: dict[str, list[float]] = {k: [] for k in ("render", "sign_mp3", "sign_flac", "verify_mp3", "verify_flac",
                                                         "sign_derived_mp3")}  # fmt: skip
    added = 0
    with tempfile.TemporaryDirectory(prefix="bandmate-bench-") as work:
        work_dir = Path(work)
        creds = ContentCredentials(work_dir / "keys")
        creds.check()  # warm: the first native call pays the library's set-up
        for i in range(repeats):
            audio = Audio(music(seconds, i), SR)
            render_s, track = timed(lambda: render_track(audio, provenance, work_dir, f"t{i}"))
            cred = Credential(f"t{i}", provenance.model_id, provenance.model_license, "compose", now, prompt="bench")
            figures["render"].append(render_s)
            figures["sign_mp3"].append(timed(lambda: creds.sign(track.mp3, cred, include_prompt=True))[0])
            figures["sign_flac"].append(timed(lambda: creds.sign(track.flac, cred, include_prompt=True))[0])
            verify_s, report = timed(lambda: creds.verify(track.mp3))
            figures["verify_mp3"].append(verify_s)
            assert report.trusted, report
            verify_s, report = timed(lambda: creds.verify(track.flac))
            figures["verify_flac"].append(verify_s)
            assert report.trusted, report
            child = render_track(Audio(music(seconds, 100 + i), SR), provenance, work_dir, f"c{i}")
            derived = Credential(f"c{i}", provenance.model_id, provenance.model_license, "extend", now,
                                 parent_files=(track.mp3,))  # fmt: skip
            derived_s, signed = timed(lambda: creds.sign(child.mp3, derived, include_prompt=False))
            figures["sign_derived_mp3"].append(derived_s)
            assert creds.verify(child.mp3).parents == [f"t{i}"]
            added = signed.bytes_added
        mp3_bytes = track.mp3.stat().st_size

    median = {k: statistics.median(v) for k, v in figures.items()}
    print(f"track_seconds: {seconds:g}")
    print(f"mp3_bytes: {mp3_bytes}")
    for name, value in median.items():
        print(f"{name}_s: {value:.4f}")
    print(f"derived_manifest_bytes: {added}")
    render = median["render"]
    print(f"mp3_credentials_vs_render: {(median['sign_mp3'] + median['verify_mp3']) / render:.4f}")
    both = median["sign_mp3"] + median["verify_mp3"] + median["sign_flac"] + median["verify_flac"]
    print(f"credentials_vs_render: {both / render:.4f}")
    print("credentials_goal: 0.05")
    if args.watermark:
        watermark_figures(seconds, max(1, repeats // 2))


if __name__ == "__main__":
    main()
