"""An optional AudioSeal watermark: a 16-bit message naming the server, inaudible, inside the audio itself.

Why on top of Content Credentials: a manifest lives in the file's metadata, so re-encoding or stripping tags removes
it. A watermark survives that (AudioSeal is trained against MP3 compression), so `/verify` can still recognise a
stripped file. Off by default (`BANDMATE_WATERMARK=audioseal` turns it on).

How: AudioSeal works on 16 kHz mono. The track's mono mix is resampled to 16 kHz, the generator computes the
watermark (a residual) for it, the residual is resampled back to the track's rate and added to every channel. This
happens before MP3 encoding (after loudness and fades). Detection decodes at most MAX_DETECT_SECONDS of a file.

Weights are the operator's download (`python bot.py download audioseal`, which calls `download_weights`): this module
never reaches the network when loading. The models are built the way the audioseal package builds them, from the
YAML cards it ships (or the config stored in the checkpoint), with torch.compile switched off: AudioSeal's SEANet
would otherwise compile on the first call (~10 s) and again for every new track length.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

NBITS = 16
MODEL_RATE = 16000
GENERATOR_FILE = "generator.pth"
DETECTOR_FILE = "detector.pth"
GENERATOR_CARD = "audioseal_wm_16bits"
DETECTOR_CARD = "audioseal_detector_16bits"
HUB_REPO = "facebook/audioseal"
HUB_FILES = {GENERATOR_FILE: "generator_base.pth", DETECTOR_FILE: "detector_base.pth"}
DETECTION_THRESHOLD = 0.5  # share of frames the detector calls watermarked
# AudioSeal marks every frame, so a few seconds suffice; the real detector runs at ~3x real time on 2 CPU cores.
MAX_DETECT_SECONDS = 10.0
# A guard against a broken checkpoint, not a tuning knob: AudioSeal's own watermark sits around 25 dB below the
# music; one louder than this is scaled down (and logged) rather than written into every track.
MIN_SNR_DB = 15.0
DOWNLOAD_HINT = "run `python bot.py download audioseal` (needs internet once), or unset BANDMATE_WATERMARK"


class WatermarkError(RuntimeError):
    """The watermark cannot be used as configured; the message says what to do."""


@dataclass(frozen=True)
class WatermarkReport:
    checked: bool
    detected: bool
    probability: float | None = None  # share of the audio the detector calls watermarked
    message: int | None = None  # the 16 bits it decoded
    matches_server: bool | None = None  # whether they are this server's message
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def server_message(server_name: str) -> int:
    """This server's 16-bit message: the first 16 bits of SHA-256 of its name (stable across restarts)."""
    return int.from_bytes(hashlib.sha256(server_name.encode("utf-8")).digest()[:2], "big")


def message_to_bits(message: int) -> list[int]:
    if not 0 <= message < 2**NBITS:
        raise ValueError(f"a watermark message is {NBITS} bits: 0 to {2**NBITS - 1}, not {message}")
    return [(message >> (NBITS - 1 - i)) & 1 for i in range(NBITS)]


def bits_to_message(bits: Any) -> int:
    values = [int(b) for b in bits]
    if len(values) != NBITS or any(b not in (0, 1) for b in values):
        raise ValueError(f"expected {NBITS} bits of 0/1, got {values}")
    return sum(b << (NBITS - 1 - i) for i, b in enumerate(values))


def weights_present(weights_dir: Path | str) -> bool:
    return all((Path(weights_dir) / name).is_file() for name in (GENERATOR_FILE, DETECTOR_FILE))


# --- loading ------------------------------------------------------------------------------------------------------


def _load_checkpoint(path: Path) -> dict:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        # The hub checkpoints may hold an omegaconf config, which the safe loader refuses: load them the way the
        # audioseal package does. They are the operator's own download from HUB_REPO.
        from audioseal.loader import _safe_load_checkpoint

        return _safe_load_checkpoint(path, device="cpu")


def _build(kind: str, path: Path) -> Any:
    """The audioseal model of `kind` from the checkpoint at `path`, configured like audioseal.AudioSeal.parse_model."""
    from audioseal.builder import AudioSealDetectorConfig, AudioSealWMConfig, create_detector, create_generator
    from audioseal.loader import (
        AudioSeal,
        convert_state_dict_for_scriptable_model,
        load_local_model_config,
        load_state_dict,
    )
    from omegaconf import OmegaConf

    card, config_type, create = {
        "generator": (GENERATOR_CARD, AudioSealWMConfig, create_generator),
        "detector": (DETECTOR_CARD, AudioSealDetectorConfig, create_detector),
    }[kind]
    try:
        checkpoint = _load_checkpoint(path)
    except Exception as exc:
        raise WatermarkError(f"cannot load the AudioSeal {kind} from {path} ({exc}); {DOWNLOAD_HINT}") from None
    config: dict = OmegaConf.to_container(load_local_model_config(card))  # type: ignore[assignment]
    config.pop("checkpoint", None)
    if isinstance(checkpoint, dict) and "xp.cfg" in checkpoint:
        config = {**config, **OmegaConf.to_container(OmegaConf.create(checkpoint["xp.cfg"]))}  # type: ignore[dict-item]
    state = checkpoint
    if isinstance(state, dict) and "best_state" in state:
        state = state["best_state"]["model"]
    elif isinstance(state, dict) and "model" in state:
        state = state["model"]
    model_config = AudioSeal.parse_config(config, config_type=config_type, nbits=NBITS)
    model = create(model_config)
    try:
        if not any("inner_conv" in key for key in state):  # the hub's layout predates audioseal's scriptable modules
            state = convert_state_dict_for_scriptable_model(state)
        load_state_dict(model, state_dict=state)
    except (RuntimeError, KeyError, AssertionError) as exc:
        raise WatermarkError(f"{path} does not hold AudioSeal {kind} weights ({exc}); {DOWNLOAD_HINT}") from None
    return model.eval()


def load_watermarker(weights_dir: Path | str, *, server_name: str, device: str = "cpu") -> "AudioSealWatermarker":
    """The watermarker from `weights_dir` (generator.pth, detector.pth). Call at start-up when the setting is on.

    Raises WatermarkError saying what to do when the weights are not there.
    """
    weights_dir = Path(weights_dir)
    missing = [name for name in (GENERATOR_FILE, DETECTOR_FILE) if not (weights_dir / name).is_file()]
    if missing:
        raise WatermarkError(
            f"BANDMATE_WATERMARK=audioseal needs the AudioSeal weights, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing from {weights_dir}: {DOWNLOAD_HINT}"
        )
    if importlib.util.find_spec("audioseal") is None:
        raise WatermarkError("BANDMATE_WATERMARK=audioseal needs the audioseal package (pip install audioseal)")
    generator = _build("generator", weights_dir / GENERATOR_FILE).to(device)
    detector = _build("detector", weights_dir / DETECTOR_FILE).to(device)
    return AudioSealWatermarker(generator, detector, message=server_message(server_name), device=device)


def download_weights(weights_dir: Path | str) -> Path:
    """Fetch AudioSeal's 16-bit generator and detector from the hub into `weights_dir` (for `bot.py download`)."""
    weights_dir = Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise WatermarkError("downloading AudioSeal needs huggingface_hub: pip install huggingface_hub") from None
    for local_name, hub_name in HUB_FILES.items():
        try:
            fetched = Path(hf_hub_download(repo_id=HUB_REPO, filename=hub_name, local_dir=weights_dir / ".download"))
        except Exception as exc:
            raise WatermarkError(
                f"could not download {hub_name} from {HUB_REPO} ({type(exc).__name__}); check the network "
                "connection (and that HF_HUB_OFFLINE is not set), then run `python bot.py download audioseal` again"
            ) from None
        fetched.replace(weights_dir / local_name)
    return weights_dir


# --- embedding and detection --------------------------------------------------------------------------------------


def _resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    if rate_in == rate_out:
        return x
    import soxr

    return soxr.resample(x, rate_in, rate_out)


class AudioSealWatermarker:
    """Embeds this server's message and detects watermarks. Holds the two models; thread-unsafe like any nn.Module."""

    def __init__(self, generator: Any, detector: Any, *, message: int, device: str = "cpu") -> None:
        self.generator = generator
        self.detector = detector
        self.message = message
        self.bits = message_to_bits(message)
        self.device = device

    def watermark_for(self, samples: np.ndarray, sample_rate: int, message: int | None = None) -> np.ndarray:
        """The residual AudioSeal adds to `samples` ((channels, frames) or (frames,)), at `sample_rate`, mono."""
        import torch
        from audioseal.libs.moshi.utils.compile import no_compile

        x = np.asarray(samples, dtype=np.float32)
        mono = x if x.ndim == 1 else x.mean(axis=0)
        frames = mono.shape[-1]
        at_model_rate = _resample(mono.astype(np.float32), sample_rate, MODEL_RATE).astype(np.float32)
        bits = torch.tensor(self.bits if message is None else message_to_bits(message), device=self.device)
        with torch.inference_mode(), no_compile():
            wav = torch.from_numpy(at_model_rate).to(self.device)[None, None, :]
            residual = self.generator.get_watermark(wav, message=bits)[0, 0].float().cpu().numpy()
        back = _resample(residual, MODEL_RATE, sample_rate).astype(np.float32)
        if back.shape[0] < frames:
            back = np.pad(back, (0, frames - back.shape[0]))
        return back[:frames]

    def embed(self, samples: np.ndarray, sample_rate: int, message: int | None = None) -> np.ndarray:
        """`samples` with this server's watermark (or `message`: a job's, on a Redis worker) added to every
        channel: same shape, float32, within [-1, 1]."""
        x = np.asarray(samples, dtype=np.float32)
        if x.shape[-1] == 0:
            return x.copy()
        residual = self.watermark_for(x, sample_rate, message)
        signal_rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
        mark_rms = float(np.sqrt(np.mean(np.square(residual, dtype=np.float64))))
        if signal_rms > 0 and mark_rms > signal_rms * 10 ** (-MIN_SNR_DB / 20):
            log.warning("the watermark was %.1f dB below the music; scaling it to %.0f dB",
                        20 * np.log10(signal_rms / mark_rms), MIN_SNR_DB)  # fmt: skip
            residual = residual * (signal_rms * 10 ** (-MIN_SNR_DB / 20) / mark_rms)
        return np.clip(x + residual, -1.0, 1.0).astype(np.float32)

    def detect(self, samples: np.ndarray, sample_rate: int) -> WatermarkReport:
        import torch
        from audioseal.libs.moshi.utils.compile import no_compile

        x = np.asarray(samples, dtype=np.float32)
        mono = x if x.ndim == 1 else x.mean(axis=0)
        limit = int(MAX_DETECT_SECONDS * sample_rate)
        mono = _resample(mono[:limit], sample_rate, MODEL_RATE).astype(np.float32)
        if mono.shape[0] < MODEL_RATE // 10:
            return WatermarkReport(checked=False, detected=False, error="too short to check for a watermark")
        with torch.inference_mode(), no_compile():
            wav = torch.from_numpy(mono).to(self.device)[None, None, :]
            probability, bits = self.detector.detect_watermark(wav, message_threshold=0.5)
        message = bits_to_message(bits[0].tolist())
        p = float(probability[0])
        detected = p >= DETECTION_THRESHOLD
        return WatermarkReport(checked=True, detected=detected, probability=round(p, 4), message=message,
                               matches_server=detected and message == self.message)  # fmt: skip

    def detect_file(self, path: Path) -> WatermarkReport:
        """Decode at most MAX_DETECT_SECONDS of an MP3/FLAC/WAV file and look for the watermark."""
        import soundfile

        with soundfile.SoundFile(str(path)) as audio:
            rate = audio.samplerate
            data = audio.read(frames=int(MAX_DETECT_SECONDS * rate), dtype="float32", always_2d=True)
        return self.detect(data.T, rate)
