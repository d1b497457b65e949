"""Audio front end and spectrogram-transformer encoder (paper App. B.2).

* :func:`read_wav`: a small RIFF/WAVE reader with the standard library only
  (``struct``): PCM 8/16/24/32-bit, IEEE float 32/64 and WAVE_FORMAT_EXTENSIBLE
  (Python 3.11's ``wave`` module refuses the last two; ``soundfile`` would add a
  native libsndfile dependency for no gain on ESC-50 / SpeechCommands, which are
  plain 16-bit PCM). Multi-channel clips are averaged to mono. Anything unreadable
  raises :class:`~segfungi.infra.errors.DatasetError` naming the file.
* :func:`resample`: band-limited windowed-sinc resampling in torch (polyphase,
  Hann-windowed sinc, as torchaudio's default), no torchaudio.
* :func:`kaldi_fbank`: Kaldi-compatible log-mel filter banks in torch (the AST /
  SSAST front end: 25 ms Hann frames every 10 ms, DC removal, pre-emphasis 0.97,
  power spectrum, HTK-style triangular mel filters from 20 Hz to Nyquist, log),
  which is what ``torchaudio.compliance.kaldi.fbank(..., htk_compat=True,
  window_type='hanning', dither=0)`` computes.
* :class:`AudioFrontEnd`: wave -> fbank -> pad/cut to ``target_length`` frames ->
  ``(fbank - mean) / (2 * std)`` (AST normalisation, AudioSet statistics by default).
* :class:`SpectrogramViT`: a timm ViT over the single-channel ``n_mels × frames``
  image (``in_chans=1``), random-init or weights from a local checkpoint (the image
  side's checkpoint loader and ViT split).
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from segfungi.backbones import load_checkpoint
from segfungi.classify.augment import audio_noise_views
from segfungi.classify.features import SplitViTFungi
from segfungi.classify.vit import TimmViT
from segfungi.infra.errors import CheckpointError, DatasetError
from segfungi.infra.weights import WeightsSource

# -------------------------------------------------------------------- WAV reading

_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """``(mono float32 waveform in [-1, 1], sample_rate)``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DatasetError(f"{path}: cannot read audio file ({err.strerror or err})") from None

    def bad(why: str) -> DatasetError:
        return DatasetError(f"{path}: not a readable WAV file ({why})")

    if len(data) < 12 or data[:4] not in (b"RIFF", b"RIFX") or data[8:12] != b"WAVE":
        raise bad("no RIFF/WAVE header")
    if data[:4] == b"RIFX":
        raise bad("big-endian RIFX is not supported")
    pos, fmt, payload = 12, None, None
    while pos + 8 <= len(data):
        cid = data[pos : pos + 4]
        size = struct.unpack_from("<I", data, pos + 4)[0]
        body = data[pos + 8 : pos + 8 + size]
        if cid == b"fmt ":
            if len(body) < 16:
                raise bad("truncated fmt chunk")
            tag, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", body, 0)
            if tag == _EXTENSIBLE and len(body) >= 26:
                tag = struct.unpack_from("<H", body, 24)[0]
            fmt = (tag, channels, rate, block_align, bits)
        elif cid == b"data":
            payload = body
        pos += 8 + size + (size & 1)
    if fmt is None:
        raise bad("no fmt chunk")
    if payload is None:
        raise bad("no data chunk")
    tag, channels, rate, block_align, bits = fmt
    if channels < 1 or rate <= 0:
        raise bad(f"{channels} channels at {rate} Hz")
    width = bits // 8
    if width < 1 or block_align != width * channels:
        raise bad(f"{bits}-bit samples with block align {block_align}")
    n = len(payload) // block_align
    raw = payload[: n * block_align]
    if tag == _PCM:
        if width == 1:
            x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
        elif width == 2:
            x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
        elif width == 3:
            b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
            v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
            v = np.where(v >= 1 << 23, v - (1 << 24), v)
            x = v.astype(np.float32) / float(1 << 23)
        elif width == 4:
            x = np.frombuffer(raw, "<i4").astype(np.float32) / float(1 << 31)
        else:
            raise bad(f"unsupported PCM width {bits} bits")
    elif tag == _FLOAT and width in (4, 8):
        x = np.frombuffer(raw, "<f4" if width == 4 else "<f8").astype(np.float32)
    else:
        raise bad(f"unsupported sample format tag {tag} ({bits} bits)")
    if n == 0:
        raise bad("no samples")
    x = x.reshape(n, channels).mean(axis=1)
    if not np.all(np.isfinite(x)):
        raise bad("non-finite samples")
    return np.ascontiguousarray(x, dtype=np.float32), int(rate)


def write_wav(path: str | Path, waveform: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM mono writer (stdlib ``wave``), for demos and tests."""
    import wave

    x = np.clip(np.asarray(waveform, np.float32), -1.0, 1.0)
    pcm = (x * 32767.0).round().astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())


# ---------------------------------------------------------------------- resampling


def resample(waveform: torch.Tensor, orig_freq: int, new_freq: int, lowpass_filter_width: int = 6, rolloff: float = 0.99) -> torch.Tensor:
    """Band-limited resampling of a 1-D waveform (Hann-windowed sinc, polyphase)."""
    if orig_freq == new_freq:
        return waveform
    g = math.gcd(int(orig_freq), int(new_freq))
    orig, new = int(orig_freq) // g, int(new_freq) // g
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=torch.float64)[:, None, None] / new + idx
    t = (t * base).clamp(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t) * window * (base / orig)
    kernel = kernel.to(waveform.dtype)  # new×1×K
    n = waveform.shape[-1]
    x = F.pad(waveform.reshape(1, 1, n), (width, width + orig))
    y = F.conv1d(x, kernel, stride=orig)  # 1×new×frames
    y = y.transpose(1, 2).reshape(-1)
    target = math.ceil(new * n / orig)
    return y[:target]


# --------------------------------------------------------------------------- fbank


def _mel(f):
    return 1127.0 * torch.log1p(f / 700.0)


def mel_filterbank(num_bins: int, n_fft: int, sample_rate: int, low_freq: float = 20.0, high_freq: float = 0.0) -> torch.Tensor:
    """Kaldi's triangular mel filters, ``num_bins × (n_fft // 2 + 1)`` (the Nyquist
    column is zero, as in Kaldi)."""
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    if not 0.0 <= low_freq < high_freq <= nyquist:
        raise ValueError(f"bad mel range {low_freq}..{high_freq} Hz at {sample_rate} Hz")
    n_bins = n_fft // 2
    fft_bin_width = sample_rate / n_fft
    mel_low, mel_high = _mel(torch.tensor(low_freq, dtype=torch.float64)), _mel(torch.tensor(high_freq, dtype=torch.float64))
    delta = (mel_high - mel_low) / (num_bins + 1)
    b = torch.arange(num_bins, dtype=torch.float64)[:, None]
    left = mel_low + b * delta
    center = left + delta
    right = center + delta
    mel = _mel(fft_bin_width * torch.arange(n_bins, dtype=torch.float64))[None]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return F.pad(banks, (0, 1)).float()


def kaldi_fbank(
    waveform: torch.Tensor,
    sample_rate: int,
    num_mel_bins: int = 128,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    preemphasis: float = 0.97,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
) -> torch.Tensor:
    """Log-mel filter banks, ``frames × num_mel_bins`` (Kaldi / AST conventions:
    snip edges, DC removal, pre-emphasis, Hann window, FFT size = next power of 2)."""
    x = waveform.to(torch.float32).reshape(-1)
    win = int(sample_rate * frame_length_ms * 0.001)
    hop = int(sample_rate * frame_shift_ms * 0.001)
    if x.numel() < win:
        x = F.pad(x, (0, win - x.numel()))
    frames = x.unfold(0, win, hop)  # n×win
    frames = frames - frames.mean(dim=1, keepdim=True)
    prev = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
    frames = frames - preemphasis * prev
    frames = frames * torch.hann_window(win, periodic=False, dtype=frames.dtype)
    n_fft = 1 << (win - 1).bit_length()
    power = torch.fft.rfft(frames, n=n_fft).abs().pow(2)
    banks = mel_filterbank(num_mel_bins, n_fft, sample_rate, low_freq, high_freq)
    energies = power @ banks.T
    return torch.log(energies.clamp_min(torch.finfo(torch.float32).eps))


class AudioFrontEnd:
    """Wave -> normalised ``n_mels × target_length`` filter bank (AST recipe)."""

    def __init__(self, sample_rate: int = 16000, num_mel_bins: int = 128, target_length: int = 512, norm_mean: float = -4.2677393, norm_std: float = 4.5689974):
        self.sample_rate = int(sample_rate)
        self.num_mel_bins = int(num_mel_bins)
        self.target_length = int(target_length)
        self.norm_mean = float(norm_mean)
        self.norm_std = float(norm_std)

    def __call__(self, sample) -> torch.Tensor:
        wave, rate = sample
        x = torch.as_tensor(np.asarray(wave, np.float32))
        x = resample(x, int(rate), self.sample_rate)
        x = x - x.mean()
        fb = kaldi_fbank(x, self.sample_rate, self.num_mel_bins)  # frames × mels
        n = fb.shape[0]
        if n < self.target_length:
            fb = F.pad(fb, (0, 0, 0, self.target_length - n))
        else:
            fb = fb[: self.target_length]
        fb = (fb - self.norm_mean) / (self.norm_std * 2)
        return fb.T.contiguous()  # mels × frames

    SETTINGS = ("sample_rate", "num_mel_bins", "target_length", "norm_mean", "norm_std")  # `frontend` keys

    def identity(self) -> dict:
        return {**{name: getattr(self, name) for name in self.SETTINGS}, "fbank": "kaldi-htk-hann-25ms-10ms"}


# -------------------------------------------------------------------- the encoder


class SpectrogramViT(TimmViT):
    """A timm ViT over single-channel filter banks: input ``B×n_mels×frames``
    (a ``B×1×n_mels×frames`` image to timm, ``in_chans=1``), random-init (seeded) or
    weights from a local checkpoint, read by :func:`segfungi.backbones.load_checkpoint`
    (the image side's loader: timm layout, DINO / DDP wrappers, safetensors, nothing
    unpickled; position embeddings resampled to the filter-bank grid; a checkpoint that
    does not fit is refused naming the keys)."""

    def __init__(self, name: str = "vit_base_patch16_224", num_mel_bins: int = 128, target_length: int = 512, weights: str | Path | None = None, init_seed: int = 0, global_pool: str | None = None, device: str = "cpu", **model_kwargs):
        import timm

        kwargs = dict(in_chans=1, img_size=(int(num_mel_bins), int(target_length)), num_classes=0)
        if global_pool is not None:
            kwargs["global_pool"] = global_pool
        kwargs.update(model_kwargs)
        # timm initialises from the global generator: seed it in a fork, leaving the caller's state alone
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(init_seed))
            try:
                model = timm.create_model(name, pretrained=False, **kwargs)
            except Exception as err:  # noqa: BLE001
                raise CheckpointError(f"cannot build timm model '{name}' for audio: {err}") from None
        if weights is None:
            weights_id = WeightsSource.random_init(init_seed, timm.__version__).id
        else:
            weights_id = load_checkpoint(model, Path(weights), name=f"{name} (in_chans=1)")
        ident = {
            "init_seed": int(init_seed),
            "input_shape": [int(num_mel_bins), int(target_length)],
            "model_kwargs": {k: (list(v) if isinstance(v, tuple) else v) for k, v in model_kwargs.items()},
        }
        super().__init__(model, name=name, weights_id=weights_id, extra_identity=ident, device=device)
        self.input_shape = (int(num_mel_bins), int(target_length))

    def forward_until_last_block(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward_until_last_block(x[:, None] if x.ndim == 3 else x)


# ---------------------------------------------------------------- FUNGI extractor


class AudioFungi(SplitViTFungi):
    """KL and SimCLR gradients of a spectrogram transformer (paper App. B.2, Table 13):
    KL on the clean filter bank, SimCLR on 16 noise views (:func:`augment.audio_noise_views`)
    against a fixed negatives batch (64 clips × 2 noise views in the paper)."""

    modality = "audio"
    view_recipes = ("simclr",)

    def __init__(self, encoder: SpectrogramViT, frontend: AudioFrontEnd, fungi: dict, device="cpu"):
        self.frontend = frontend
        super().__init__(encoder, fungi, device=device)

    def encoder_identity(self) -> dict:
        # the filter-bank settings shape the encoder's input, so cached features depend on them
        return {**super().encoder_identity(), "frontend": self.frontend.identity()}

    def _view_identity(self, recipe: str, cfg: dict) -> dict:
        if recipe == "simclr":
            return {"simclr": {"views": cfg["views"], "max_shift": cfg["max_shift"], "negative_views": cfg["negative_views"]}}
        return {}

    def _prepare(self, sample):
        return self.frontend(sample)

    def _eval_rows(self, prepared):
        return torch.stack(list(prepared))

    def _simclr_views(self, prepared, cfg, gen, negative=False):
        n = int(cfg["negative_views"] or cfg["views"]) if negative else int(cfg["views"])
        return audio_noise_views(prepared, n, gen, int(cfg["max_shift"]))
