"""Saving and sharing: fresh-process round-trips, vanilla readability, push_to_hub, the push script, remote code.

The Hub is unreachable here: the upload calls of ``huggingface_hub.HfApi`` are the one thing replaced, by recorders
that keep what would have been uploaded.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
import yaml
from huggingface_hub import HfApi
from skimage import data as photos
from transformers import AutoImageProcessor, ViTConfig, ViTForImageClassification, ViTImageProcessorPil

import hf_expedite
from hf_expedite import ExpeditedViTForImageClassification
from hf_expedite.hub import REMOTE_MODULE, save_for_hub

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(
    hidden_size=32, num_hidden_layers=6, num_attention_heads=4, intermediate_size=64, image_size=64, patch_size=8,
    num_labels=5,
)  # fmt: skip
SETTINGS = {"clustering_location": 2, "num_clusters": [4, 4], "reconstruction_k": 4, "clustering_temperature": 2.0}
# Makes `import hf_expedite` fail in a subprocess, as in an environment where the package is not installed.
BLOCK_PACKAGE = """
import sys
class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "hf_expedite":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _NotInstalled())
"""


@pytest.fixture(scope="module")
def vit_repo(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vit")
    ViTForImageClassification(ViTConfig(**TINY)).save_pretrained(path)
    ViTImageProcessorPil(size={"height": 64, "width": 64}).save_pretrained(path)
    (path / "README.md").write_text("---\nlicense: apache-2.0\ntags: [vision]\n---\n# A tiny ViT\n")
    return path


@pytest.fixture(scope="module")
def model(vit_repo):
    return hf_expedite.AutoModelForImageClassification.from_pretrained(vit_repo, expedite=SETTINGS).eval()


@pytest.fixture(scope="module")
def pixels():
    processor = ViTImageProcessorPil(size={"height": 64, "width": 64})
    return processor([photos.astronaut(), photos.chelsea()], return_tensors="pt")["pixel_values"]


def run_python(code: str, tmp_path: Path, block_package: bool = False) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (own module cache for remote code, offline)."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": path}
    # the same intra-op thread count as this process: bit-identical results are compared across the two
    threads = f"import torch\ntorch.set_num_threads({torch.get_num_threads()})\n"
    script = (BLOCK_PACKAGE if block_package else "") + threads + code
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def hub_uploads(monkeypatch):
    """Replace the Hub upload calls by recorders of the files they would have uploaded."""
    uploads = []

    def create_repo(self, repo_id, **kwargs):
        uploads.append({"create_repo": repo_id, **kwargs})
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        paths = [path for path in Path(folder_path).rglob("*") if path.is_file()]
        files = {path.relative_to(folder_path).as_posix(): path.read_bytes() for path in paths}
        uploads.append({"upload": repo_id, "files": files, "token": self.token, **kwargs})
        return huggingface_hub.CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/0", commit_message="", commit_description="",
            oid="0", pr_url=None,
        )  # fmt: skip

    def create_commit(self, repo_id, operations, **kwargs):
        files = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}
        uploads.append({"upload": repo_id, "files": files, **kwargs})
        return huggingface_hub.CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/0", commit_message="", commit_description="",
            oid="0", pr_url=None,
        )  # fmt: skip

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # reading the remote card fails fast
    return uploads


def test_saved_folder_reloads_as_expedited_in_a_fresh_process(model, pixels, tmp_path):
    model.save_pretrained(tmp_path / "saved")
    with torch.no_grad():
        expected = model(pixels)
    torch.save({"pixels": pixels, "logits": expected.logits}, tmp_path / "io.pt")
    code = f"""
import hf_expedite, torch, transformers
assert not any(hasattr(c.from_pretrained, "transformers_original") for c in hf_expedite.auto.TRANSFORMERS_AUTO_CLASSES)
io = torch.load({str(tmp_path / "io.pt")!r})
base = transformers.AutoModel.from_pretrained({str(tmp_path / "saved")!r})
model = transformers.AutoModelForImageClassification.from_pretrained({str(tmp_path / "saved")!r}).eval()
with torch.no_grad():
    logits = model(io["pixels"]).logits
print(type(base).__name__, type(model).__name__, torch.equal(logits, io["logits"]), model.config.num_clusters)
"""
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ExpeditedViTModel", "ExpeditedViTForImageClassification", "True", "[4,", "4]"]


def test_saved_weights_stay_readable_by_the_vanilla_class(model, vit_repo, pixels, tmp_path):
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "expedited_vit" and config["num_clusters"] == [4, 4]
    vanilla, info = ViTForImageClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    off = hf_expedite.expedite(model, {"expedite": False})
    original = ViTForImageClassification.from_pretrained(vit_repo).eval()
    with torch.no_grad():
        assert torch.equal(vanilla.eval()(pixels).logits, off(pixels).logits)
        assert torch.equal(vanilla(pixels).logits, original(pixels).logits)


def test_model_push_to_hub(model, pixels, hub_uploads):
    model.push_to_hub("me/tiny-vit-expedited")
    assert hub_uploads[0]["create_repo"] == "me/tiny-vit-expedited"
    files = hub_uploads[-1]["files"]
    assert {"config.json", "model.safetensors"} <= files.keys()
    config = json.loads(files["config.json"])
    assert config["model_type"] == "expedited_vit" and config["clustering_location"] == 2


def load_script():
    spec = importlib.util.spec_from_file_location("push_to_hub", ROOT / "scripts" / "push_to_hub.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_push_script_writes_a_complete_repository(vit_repo, model, pixels, tmp_path):
    results = tmp_path / "results.json"
    results.write_text(
        json.dumps(
            {
                "vanilla": {"metrics": {"accuracy": 0.81}, "images_per_second": 10.0, "latency_ms": 100.0},
                "expedited": {"metrics": {"accuracy": 0.80}, "images_per_second": 14.0, "latency_ms": 71.4},
            }
        )
    )
    out = tmp_path / "out"
    argv = [str(vit_repo), "me/tiny-vit-expedited", "--output-dir", str(out), "--expedite", json.dumps(SETTINGS)]
    load_script().main([*argv, "--clustering-location", "3", "--results", str(results)])
    assert sorted(os.listdir(out)) == sorted(
        ["README.md", "config.json", "model.safetensors", "preprocessor_config.json", f"{REMOTE_MODULE}.py"]
    )
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "expedited_vit" and config["clustering_location"] == 3  # the flag wins
    assert config["num_clusters"] == [4, 4]
    assert config["auto_map"] == {
        "AutoConfig": f"{REMOTE_MODULE}.ExpeditedViTConfig",
        "AutoModel": f"{REMOTE_MODULE}.ExpeditedViTModel",
        "AutoModelForImageClassification": f"{REMOTE_MODULE}.ExpeditedViTForImageClassification",
    }
    loaded = hf_expedite.AutoModelForImageClassification.from_pretrained(out)
    assert type(loaded) is ExpeditedViTForImageClassification and loaded.config.clustering_location == 3
    processor = AutoImageProcessor.from_pretrained(out)
    assert processor.size == {"height": 64, "width": 64}
    card = (out / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["license"] == "apache-2.0" and "expedite" in metadata["tags"]
    assert "| accuracy | 0.81 | 0.8 |" in card and "1.40x" in card


def test_push_script_uploads(vit_repo, tmp_path, hub_uploads):
    commit_url = load_script().main([str(vit_repo), "me/tiny-vit-expedited", "--private", "--token", "hf_xyz"])
    assert commit_url.startswith("https://huggingface.co/me/tiny-vit-expedited")
    create, upload = hub_uploads
    assert create["create_repo"] == "me/tiny-vit-expedited" and create["private"] is True
    assert upload["upload"] == "me/tiny-vit-expedited" and upload["token"] == "hf_xyz"
    assert {"README.md", "config.json", "model.safetensors", "preprocessor_config.json"} <= upload["files"].keys()
    config = json.loads(upload["files"]["config.json"])
    assert config["model_type"] == "expedited_vit" and config["cluster_ratio"] == 0.7  # the default preset


def test_push_script_rejects_bad_settings_before_loading(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'clustering_location'"):
        load_script().main([str(tmp_path / "absent"), "-o", str(tmp_path), "--expedite", '{"clustering_locaton": 3}'])
    with pytest.raises(ValueError, match="Unknown Expedite preset 'fastest'"):
        load_script().main([str(tmp_path / "absent"), "-o", str(tmp_path), "--expedite", "fastest"])


@pytest.fixture(scope="module")
def remote_code_repo(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("remote")
    save_for_hub(model, path, base_model="google/vit-base-patch16-224", base_metadata={})
    return path


def test_trust_remote_code_with_the_package_installed(remote_code_repo, model, pixels, tmp_path):
    torch.save({"pixels": pixels, "logits": model(pixels).logits.detach()}, tmp_path / "io.pt")
    code = f"""
import sys, os, torch, transformers
io = torch.load({str(tmp_path / "io.pt")!r})
model = transformers.AutoModelForImageClassification.from_pretrained({str(remote_code_repo)!r}, trust_remote_code=True)
with torch.no_grad():
    same = torch.equal(model.eval()(io["pixels"]).logits, io["logits"])
model.save_pretrained({str(tmp_path / "resaved")!r})  # must not copy package sources into the folder
print(type(model).__module__, type(model).__name__, same, sorted(os.listdir({str(tmp_path / "resaved")!r})))
"""
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:3] == ["hf_expedite.models.vit", "ExpeditedViTForImageClassification", "True"]
    # the resaved folder carries the remote-code shim again, never the package's sources
    assert result.stdout.split()[3:] == ["['config.json',", f"'{REMOTE_MODULE}.py',", "'model.safetensors']"]


def _tiny_saved_models(root: Path) -> dict[str, Path]:
    """Expedited DPT, Mask2Former and Depth Anything folders written by ``save_pretrained``."""
    from test_dinov2_depth_anything import depth_anything_config
    from test_fidelity import tiny_dpt_depth, tiny_mask2former
    from transformers import (
        AutoModelForDepthEstimation,
        AutoModelForUniversalSegmentation,
        DepthAnythingForDepthEstimation,
    )

    DepthAnythingForDepthEstimation(depth_anything_config()).save_pretrained(root / "depth_anything_vanilla")
    sources = {
        "dpt": (tiny_dpt_depth(root / "dpt_vanilla"), AutoModelForDepthEstimation),
        "mask2former": (tiny_mask2former(root / "m2f_vanilla"), AutoModelForUniversalSegmentation),
        "depth_anything": (root / "depth_anything_vanilla", AutoModelForDepthEstimation),
    }
    folders = {}
    for name, (source, auto_class) in sources.items():
        vanilla = auto_class.from_pretrained(source)
        hf_expedite.expedite(vanilla, True).save_pretrained(root / name)
        folders[name] = root / name
    return folders


def test_every_saved_folder_loads_through_remote_code_without_importing_the_package(tmp_path):
    """Plain transformers, hf_expedite installed but not imported: without trust_remote_code the error asks for it
    (never "does not recognize this architecture" or a KeyError); with it, the expedited class loads."""
    folders = _tiny_saved_models(tmp_path)
    code = f"""
import sys, transformers
folders = {({name: str(path) for name, path in folders.items()})!r}
autos = {{name: transformers.AutoModelForUniversalSegmentation if name == "mask2former"
         else transformers.AutoModelForDepthEstimation for name in folders}}
for name, path in folders.items():  # first all without: the shim imports hf_expedite, which registers the classes
    try:
        autos[name].from_pretrained(path)
        print(f"@{{name}} loaded without trust_remote_code")
    except ValueError as error:
        print(f"@{{name}} refused:", "trust_remote_code=True" in str(error))
assert "hf_expedite" not in sys.modules
for name, path in folders.items():
    model = autos[name].from_pretrained(path, trust_remote_code=True)
    print(f"@{{name}}", type(model).__module__.split(".")[0], type(model).__name__)
"""
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line[line.index("@") + 1 :] for line in result.stdout.splitlines() if "@" in line]  # after the prompts
    assert lines == [
        "dpt refused: True",
        "mask2former refused: True",
        "depth_anything refused: True",
        "dpt hf_expedite ExpeditedDPTForDepthEstimation",
        "mask2former hf_expedite ExpeditedMask2FormerForUniversalSegmentation",
        "depth_anything hf_expedite ExpeditedDepthAnythingForDepthEstimation",
    ]


def test_trust_remote_code_without_the_package_says_how_to_install_it(remote_code_repo, tmp_path):
    code = f"""
import transformers
try:
    transformers.AutoModelForImageClassification.from_pretrained({str(remote_code_repo)!r}, trust_remote_code=True)
except ImportError as error:
    print("ImportError:", error)
"""
    result = run_python(code, tmp_path, block_package=True)
    assert result.returncode == 0, result.stderr
    assert "ImportError:" in result.stdout and "pip install hf-expedite" in result.stdout
