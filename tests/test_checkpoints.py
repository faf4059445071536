"""checkpoints.py: safetensors + JSON round trips, every corrupt/missing/mismatched path, shipped models."""
import json
import os
import pickle

import pytest
import torch

from dpmsched import files
from dpmsched.checkpoints import CONFIG, WEIGHTS, load_model, read_config, save_model, shipped_models
from dpmsched.denoisers.nets import MLP, DigitsClassifier, EDMDenoiser, UNet
from dpmsched.denoisers.vp import VPDenoiser
from dpmsched.files import atomic_write_bytes, sha256_bytes
from dpmsched.models import load
from dpmsched.noise import DiscreteVP
from dpmsched.resources import data_dir

SHIPPED = shipped_models()



def _edm(tmp_path, randomized, name="m"):
    den = EDMDenoiser(randomized(MLP(width=16, depth=2, emb_dim=8)), 0.6, (2,), 0.01, 50.0, name)
    return den, save_model(den, tmp_path / name, kind="edm", dataset="toy2d-ring", training={"steps": 7})


# -- round trips --------------------------------------------------------------------------------
def test_edm_round_trip_is_exact_and_config_is_complete(tmp_path, randomized):
    den, folder = _edm(tmp_path, randomized)
    back = load_model(folder)
    assert isinstance(back, EDMDenoiser) and not back.training
    x = torch.randn(5, 2, dtype=torch.float64)
    sig = torch.tensor([0.01, 0.1, 1.0, 10.0, 50.0], dtype=torch.float64)
    assert torch.equal(back(x, sig), den(x, sig))
    assert (back.event_shape, back.sigma_min, back.sigma_max, back.sigma_data) == ((2,), 0.01, 50.0, 0.6)
    assert back.name == "m"
    cfg = read_config(folder)
    assert cfg["sha256"] == sha256_bytes((folder / WEIGHTS).read_bytes())
    assert cfg["arch"] == {"type": "mlp", "dim": 2, "width": 16, "depth": 2, "emb_dim": 8}
    assert cfg["dataset"] == "toy2d-ring" and cfg["training"] == {"steps": 7} and cfg["dtype"] == "float32"
    assert len(cfg["git_commit"]) >= 7
    assert load(str(folder))(x, sig).equal(den(x, sig))      # models.load delegates folders here


def test_ddpm_round_trip_wraps_vp_and_exposes_eps(tmp_path, randomized):
    net = randomized(UNet(ch=8, mults=(1, 2), emb_dim=16))
    vp = VPDenoiser(net, DiscreteVP.linear(1000), "epsilon", (1, 8, 8), name="d")
    folder = save_model(vp, tmp_path / "d", kind="ddpm", dataset="digits")
    back = load_model(folder)
    assert isinstance(back, VPDenoiser) and back.noise.T == 1000 and back.prediction == "epsilon"
    assert back.sigma_min == pytest.approx(vp.sigma_min) and back.sigma_max == pytest.approx(vp.sigma_max)
    x_t, n = torch.randn(3, 1, 8, 8), torch.tensor([0.0, 500.0, 999.0])
    assert torch.equal(back.eps(x_t, n), net(x_t, n))
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    assert torch.equal(back(x, 0.5), vp(x, 0.5))


def test_classifier_and_float64_round_trip(tmp_path, randomized):
    clf = randomized(DigitsClassifier(ch=4, feat_dim=8)).eval()
    back = load_model(save_model(clf, tmp_path / "c", kind="classifier", dataset="digits"))
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(back(x), clf(x)) and torch.equal(back.features(x), clf.features(x))
    den = EDMDenoiser(randomized(MLP(width=8, depth=1, emb_dim=4)).double(), 0.5, (2,))
    back = load_model(save_model(den, tmp_path / "e64", kind="edm", dataset="toy2d-ring"))
    assert next(back.parameters()).dtype == torch.float64
    x = torch.randn(3, 2, dtype=torch.float64)
    assert torch.equal(back(x, 0.3), den(x, 0.3))


def test_save_rejects_unknown_kind(tmp_path, randomized):
    den, _ = _edm(tmp_path, randomized)
    with pytest.raises(ValueError, match="kind must be one of"):
        save_model(den, tmp_path / "x", kind="gan", dataset="d")


# -- every bad path -----------------------------------------------------------------------------
def test_missing_folder_file_and_name(tmp_path, randomized):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="shipped"):
        load_model("no-such-model")
    _, folder = _edm(tmp_path, randomized)
    (folder / WEIGHTS).unlink()
    with pytest.raises(FileNotFoundError, match="weights file"):
        load_model(folder)
    _, folder = _edm(tmp_path, randomized, "m2")
    (folder / CONFIG).unlink()
    with pytest.raises(FileNotFoundError, match="config"):
        load_model(folder)


def test_wrong_checksum(tmp_path, randomized):
    _, folder = _edm(tmp_path, randomized)
    raw = bytearray((folder / WEIGHTS).read_bytes())
    raw[-3] ^= 0xFF                                          # flip bits inside the last tensor's data
    (folder / WEIGHTS).write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_model(folder)


def _rewrite_config(folder, **changes):
    cfg = json.loads((folder / CONFIG).read_text())
    cfg.update(changes)
    (folder / CONFIG).write_text(json.dumps(cfg))


def test_config_that_does_not_match_the_weights(tmp_path, randomized):
    _, folder = _edm(tmp_path, randomized)
    _rewrite_config(folder, arch={"type": "mlp", "dim": 2, "width": 32, "depth": 2, "emb_dim": 8})
    with pytest.raises(ValueError, match="does not match the weights.*shape mismatch"):
        load_model(folder)
    _rewrite_config(folder, arch={"type": "mlp", "dim": 2, "width": 16, "depth": 3, "emb_dim": 8})
    with pytest.raises(ValueError, match="does not match the weights.*missing"):
        load_model(folder)
    _rewrite_config(folder, arch={"type": "transformer"})
    with pytest.raises(ValueError, match="unknown architecture"):
        load_model(folder)


def test_bad_config_json(tmp_path, randomized):
    _, folder = _edm(tmp_path, randomized)
    (folder / CONFIG).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_model(folder)
    (folder / CONFIG).write_text(json.dumps({"format": "something-else/9"}))
    with pytest.raises(ValueError, match="expected a config with format"):
        load_model(folder)
    _, folder = _edm(tmp_path, randomized, "m2")
    _rewrite_config(folder, kind="vae")
    with pytest.raises(ValueError, match="kind"):
        load_model(folder)


def test_pickle_files_are_refused_never_loaded(tmp_path, randomized):
    net = MLP(width=4, depth=1, emb_dim=4)
    pt = tmp_path / "model.pt"
    torch.save(net.state_dict(), pt)
    with pytest.raises(ValueError, match="pickle"):
        load_model(pt)
    # a pickle disguised as model.safetensors, with a matching checksum: refused before parsing
    _, folder = _edm(tmp_path, randomized)
    data = pickle.dumps({"w": [1, 2, 3]})
    (folder / WEIGHTS).write_bytes(data)
    _rewrite_config(folder, sha256=sha256_bytes(data))
    with pytest.raises(ValueError, match="pickle"):
        load_model(folder)
    with pytest.raises(ValueError, match="pickle"):
        files.tensors_from_file(folder / WEIGHTS)


def test_corrupt_safetensors_with_matching_checksum(tmp_path, randomized):
    _, folder = _edm(tmp_path, randomized)
    data = b"\x10\x00\x00\x00\x00\x00\x00\x00{broken header}"
    (folder / WEIGHTS).write_bytes(data)
    _rewrite_config(folder, sha256=sha256_bytes(data))
    with pytest.raises(ValueError, match="not a valid safetensors"):
        load_model(folder)


def test_a_file_instead_of_a_folder(tmp_path, randomized):
    _, folder = _edm(tmp_path, randomized)
    assert load_model(folder / CONFIG).name == "m"           # the folder of config.json / model.safetensors
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(ValueError, match="pass the checkpoint folder"):
        load_model(other)


def test_atomic_write_keeps_old_content_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"old")
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask       # like open(), not mkstemp's 0o600

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # no temporary file left behind


def test_atomic_write_keeps_the_mode_of_an_existing_file(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_bytes(path, b"old")
    os.chmod(path, 0o640)
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and path.stat().st_mode & 0o777 == 0o640


def test_stale_temporaries_of_a_killed_writer_are_cleaned(tmp_path):
    (tmp_path / ".state.safetensors.abc123.tmp").write_bytes(b"half")
    (tmp_path / "keep.json").write_text("{}")
    assert [p.name for p in files.clean_stale_temporaries(tmp_path)] == [".state.safetensors.abc123.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["keep.json"]


# -- the shipped checkpoints --------------------------------------------------------------------
def test_shipped_checkpoints_are_small_and_verified():
    assert {"toy2d-edm", "digits-classifier"} <= set(SHIPPED)
    for name in SHIPPED:
        folder = data_dir() / name
        assert (folder / WEIGHTS).stat().st_size <= 5 * 2**20, f"{name} exceeds 5 MB"
        model = load_model(name)                               # verifies the sha256 and the architecture
        cfg = read_config(folder)
        assert cfg["training"]["steps"] >= 1 and cfg["training"]["params"] == sum(
            p.numel() for p in model.parameters())
        if cfg["kind"] == "classifier":
            assert cfg["training"]["test_accuracy"] >= 0.97
            continue
        den = load(name)
        assert den.name == name and den.event_shape == tuple(cfg["event_shape"])
        assert 0 < den.sigma_min < den.sigma_max
        x = torch.zeros(2, *den.event_shape, dtype=torch.float64)
        out = den(x, 1.0)
        assert out.shape == x.shape and out.dtype == torch.float64 and torch.isfinite(out).all()


@pytest.mark.skipif("digits-ddpm" not in SHIPPED, reason="digits-ddpm not trained yet")
def test_shipped_ddpm_is_a_vp_denoiser_with_its_eps_net():
    vp = load("digits-ddpm")
    assert isinstance(vp, VPDenoiser) and vp.noise.T == 1000
    x_t = torch.randn(2, 1, 8, 8)
    assert vp.eps(x_t, torch.tensor([10.0, 900.0])).shape == (2, 1, 8, 8)
