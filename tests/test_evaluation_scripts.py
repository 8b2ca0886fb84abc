"""scripts/evaluate_{depth,semantic_segmentation,panoptic}.py end to end on tiny saved models and tiny local datasets
built from real photographs, in-process, as a subprocess and under a 2-process `accelerate launch`.

The references of the end-to-end datasets are the vanilla model's own predictions (depth maps, label maps + 1 for
ADE20K's label reduction, panoptic segments with COCO-like category ids mapped by name), so the vanilla model must
score perfectly: any mix-up of samples, sizes, labels or categories in the pipeline breaks that; the expedited twin,
with a real reduction, must score measurably lower.
"""

import importlib.util
import io
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from transformers import AutoImageProcessor

import hf_expedite
from hf_expedite.evaluation.runner import InputError
from hf_expedite.evaluation.tasks.depth import DepthTask, crop_mask, kb_window
from hf_expedite.evaluation.tasks.panoptic import PanopticTask
from hf_expedite.fidelity import predict

from test_fidelity import (
    DPT_REDUCED,
    M2F_REDUCED,
    photos,
    tiny_dpt_depth,
    tiny_dpt_segmentation,
    tiny_mask2former,
    tiny_upernet,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZE = (80, 60)  # photographs resized to 80x60 (width x height)
THINGS = {0, 1, 2}
PANOPTIC_ARGS = ["--thing-ids", "0-2", "--threshold", "0", "--overlap-threshold", "0"]
CATEGORY_OFFSET = 10  # dataset category id = model label + 10, mapped back by class name with --label-map
LABEL_MAP = json.dumps({str(label + CATEGORY_OFFSET): f"LABEL_{label}" for label in range(6)})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on shared cores extra threads thrash."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scripts():
    return {name: _script(name) for name in ("evaluate_depth", "evaluate_semantic_segmentation", "evaluate_panoptic")}


def _encoded(image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _vanilla(path: Path, auto_class):
    return auto_class.from_pretrained(path).eval(), AutoImageProcessor.from_pretrained(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Tiny models and datasets labelled by the vanilla models' own predictions."""
    root = tmp_path_factory.mktemp("evaluation")
    paths = {
        "depth_model": tiny_dpt_depth(root / "depth_model"),
        "seg_model": tiny_dpt_segmentation(root / "seg_model"),
        "m2f_model": tiny_mask2former(root / "m2f_model"),
    }
    images = photos(size=SIZE)

    # NYUv2 layout (image, depth_map as a float "F" image), saved with save_to_disk; sample 3 is a truncated JPEG.
    model, processor = _vanilla(paths["depth_model"], hf_expedite.AutoModelForDepthEstimation)
    depth = [predict(model, processor, image, "depth") for image in images]
    encoded = [{"bytes": _encoded(image, "PNG"), "path": None} for image in images]
    encoded.insert(3, {"bytes": _encoded(images[0], "JPEG")[:300], "path": None})
    depth.insert(3, depth[0])
    features = datasets.Features({"image": datasets.Image(), "depth_map": datasets.Image()})
    datasets.Dataset.from_dict(
        {"image": encoded, "depth_map": [datasets.Image().encode_example(d) for d in depth]}, features=features
    ).save_to_disk(str(root / "nyu"))
    paths["nyu_data"] = root / "nyu"

    # ADE20K layout (image, annotation) as a Parquet folder: vanilla labels + 1 (0 = ignored "other" on the top
    # rows); sample 5 carries a label 200, outside the 5 classes.
    model, processor = _vanilla(paths["seg_model"], hf_expedite.AutoModelForSemanticSegmentation)
    annotations = [predict(model, processor, image, "semantic").astype(np.uint8) + 1 for image in images[:5]]
    for annotation in annotations:
        annotation[:4] = 0
    annotations.append(np.full((SIZE[1], SIZE[0]), 200, dtype=np.uint8))
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    (root / "ade").mkdir()
    datasets.Dataset.from_dict({"image": images, "annotation": annotations}, features=features).to_parquet(
        str(root / "ade" / "validation-00000-of-00001.parquet")
    )
    paths["ade_data"] = root / "ade"

    # COCO panoptic layout (image, label = RGB-encoded segment ids, segments_info with sparse category ids), labelled
    # by the vanilla model through the script's own protocol (Mask2Former's panoptic inference).
    model, processor = _vanilla(paths["m2f_model"], hf_expedite.AutoModelForUniversalSegmentation)
    task = PanopticTask(
        panoptic_column="label", segments_column="segments_info", num_labels=6, label_map=None, thing_ids=THINGS,
        threshold=0.0, mask_threshold=0.5, overlap_threshold=0.0,
    )  # fmt: skip
    labels, segments = [], []
    for image in images[:4]:
        inputs = task.preprocess(processor, image)
        with torch.no_grad():
            outputs = task.infer(model, inputs)
        [(segmentation, info)] = task.predictions(processor, outputs, [(image.height, image.width)], inputs)
        ids = np.where(segmentation > 0, segmentation * 300, 0)  # ids above 255 need all three channels
        labels.append(np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8))
        segments.append([{"id": s["id"] * 300, "category_id": s["label_id"] + CATEGORY_OFFSET, "iscrowd": 0}
                         for s in info])
    assert sum(map(len, segments)) >= 8, "the tiny Mask2Former should predict several segments"
    segment = {name: datasets.Value("int64") for name in ("id", "category_id", "iscrowd")}
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.Image(), "segments_info": datasets.List(segment)}
    )
    datasets.Dataset.from_dict(
        {"image": images[:4], "label": labels, "segments_info": segments}, features=features
    ).save_to_disk(str(root / "coco"))
    paths["coco_data"] = root / "coco"
    return paths


def _metrics(payload: dict, model: str) -> dict:
    return payload[model]["metrics"]


def test_depth_end_to_end(scripts, data, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="Skipping dataset index 3: column 'image'"):
        payload = scripts["evaluate_depth"].main([
            str(data["depth_model"]), "--dataset", str(data["nyu_data"]), "--benchmark", "nyu", "--alignment", "none",
            "--expedite", json.dumps(DPT_REDUCED), "--output-dir", str(out),
        ])
    vanilla, expedited = _metrics(payload, "vanilla"), _metrics(payload, "expedited")
    assert vanilla["rmse"] == 0.0 and vanilla["abs_rel"] == 0.0 and vanilla["delta1"] == 1.0
    assert 0.0 < expedited["rmse"] < 3.0 and 0.2 < expedited["delta1"] < 1.0
    assert payload["vanilla"]["num_images"] == payload["expedited"]["num_images"] == 6
    assert payload["ratios"]["rmse"] is None and payload["ratios"]["delta1"] == pytest.approx(expedited["delta1"])
    assert payload["vanilla"]["images_per_second"] > 0 and payload["expedited"]["latency_ms"] > 0
    metadata = payload["metadata"]
    assert list(metadata["skipped samples"]) == ["3"] and "OSError" in metadata["skipped samples"]["3"]
    assert metadata["expedited settings"]["num_clusters"] == [4, 4] and metadata["alignment"] == "none"
    assert "crop eigen" in metadata["depth"] and "10.0) m" in metadata["depth"]
    assert metadata["aggregation"] == "per image, then over images"
    markdown = (out / "depth.md").read_text()
    assert "| rmse | 0.0000 |" in markdown and "| images/s |" in markdown and "| latency (ms/image) |" in markdown
    assert json.loads((out / "depth.json").read_text()) == payload
    captured = capsys.readouterr()
    assert "depth: vanilla + expedited" in captured.err and "| delta1 | 1.0000 |" in captured.out

    # Several images per forward pass; median scaling of a perfect prediction keeps it perfect. The finished report
    # is not replaced without --overwrite (refused before any model is loaded).
    again = [
        str(data["depth_model"]), "--dataset", str(data["nyu_data"]), "--benchmark", "nyu", "--batch-size", "3",
        "--alignment", "median", "--max-samples", "5", "--output-dir", str(out), "--no-progress",
    ]
    with pytest.raises(InputError, match="already holds depth.md, depth.json: pass --overwrite"):
        scripts["evaluate_depth"].main(again)
    assert json.loads((out / "depth.json").read_text()) == payload
    with pytest.warns(UserWarning, match="index 3"):
        batched = scripts["evaluate_depth"].main([*again, "--overwrite"])
    assert batched["metadata"]["alignment"] == "median" and batched["vanilla"]["num_images"] == 4
    assert _metrics(batched, "vanilla")["abs_rel"] < 1e-4 and _metrics(batched, "vanilla")["delta1"] == 1.0


def test_expedited_checkpoint_keeps_its_settings(scripts, data, tmp_path):
    """An expedited checkpoint is evaluated with its saved settings against its vanilla twin."""
    vanilla = hf_expedite.AutoModelForDepthEstimation.from_pretrained(data["depth_model"])
    hf_expedite.expedite(vanilla, DPT_REDUCED).save_pretrained(tmp_path / "expedited")
    AutoImageProcessor.from_pretrained(data["depth_model"]).save_pretrained(tmp_path / "expedited")
    with pytest.warns(UserWarning, match="index 3"):
        payload = scripts["evaluate_depth"].main([
            str(tmp_path / "expedited"), "--dataset", str(data["nyu_data"]), "--benchmark", "nyu",
            "--alignment", "none", "--output-dir", str(tmp_path / "out"), "--no-progress",
        ])
    assert payload["metadata"]["expedite"] == "saved settings"
    assert payload["metadata"]["expedited settings"]["num_clusters"] == [4, 4]
    assert _metrics(payload, "vanilla")["rmse"] == 0.0 < _metrics(payload, "expedited")["rmse"]


def test_semantic_end_to_end(scripts, data, tmp_path):
    # The labels are the vanilla model's own predictions through its image processor: --protocol processor.
    args = ["--dataset", str(data["ade_data"]), "--benchmark", "ade20k", "--check-samples", "2", "--output-dir",
            str(tmp_path), "--no-progress", "--protocol", "processor"]
    with pytest.warns(UserWarning, match=r"index 5: Image 5: reference contains label\(s\) \[199\]"):
        payload = scripts["evaluate_semantic_segmentation"].main(
            [str(data["seg_model"]), "--expedite", json.dumps(DPT_REDUCED), *args]
        )
    vanilla, expedited = _metrics(payload, "vanilla"), _metrics(payload, "expedited")
    assert vanilla["mean_iou"] == 1.0 and vanilla["overall_accuracy"] == 1.0
    assert 0.2 < expedited["mean_iou"] < 0.98 and payload["ratios"]["mean_iou"] == pytest.approx(expedited["mean_iou"])
    assert len(vanilla["per_category_iou"]) == 5 and payload["vanilla"]["num_images"] == 5
    assert list(payload["metadata"]["invalid samples"]) == ["5"]
    assert "reduce_labels=True" in payload["metadata"]["labels"]
    assert (tmp_path / "semantic_segmentation.md").is_file()

    # Mask2Former through its semantic post-processing (6 classes; the default preset).
    with pytest.warns(UserWarning, match="Image 5"):
        m2f = scripts["evaluate_semantic_segmentation"].main([str(data["m2f_model"]), *args, "--overwrite"])
    assert len(_metrics(m2f, "vanilla")["per_category_iou"]) == 6
    assert 0.0 <= _metrics(m2f, "expedited")["mean_iou"] <= 1.0
    assert m2f["metadata"]["expedited settings"]["clustered_window_size"] < 4


def test_panoptic_end_to_end(scripts, data, tmp_path):
    payload = scripts["evaluate_panoptic"].main([
        str(data["m2f_model"]), "--dataset", str(data["coco_data"]), "--label-map", LABEL_MAP,
        "--expedite", json.dumps(M2F_REDUCED), "--output-dir", str(tmp_path), "--no-progress", *PANOPTIC_ARGS,
    ])
    vanilla, expedited = _metrics(payload, "vanilla"), _metrics(payload, "expedited")
    assert vanilla["pq"] == vanilla["sq"] == vanilla["rq"] == 1.0
    assert vanilla["pq_things"] == 1.0 or vanilla["pq_stuff"] == 1.0
    assert all(v["fp"] == v["fn"] == 0 for v in vanilla["per_category"].values())
    assert 0.0 <= expedited["pq"] < 0.9
    assert "things: 3 classes" in payload["metadata"]["segments"]
    assert (tmp_path / "panoptic.md").is_file()


# ---------------------------------------------------------------- published protocols


def test_semantic_published_protocol_per_family(scripts, data, tmp_path):
    """The ade20k benchmark runs each family's published protocol: DPT by sliding windows of its training crop,
    Mask2Former on the whole image at its test short side (padded), UperNet as mmseg (short side 512, unpadded); both
    models on the same windows."""
    args = ["--dataset", str(data["ade_data"]), "--benchmark", "ade20k", "--max-samples", "2", "--no-progress"]
    dpt = scripts["evaluate_semantic_segmentation"].main([str(data["seg_model"]), *args, "--output-dir",
                                                          str(tmp_path / "dpt")])
    assert dpt["metadata"]["protocol"] == "short side 64; sliding window 64, stride 42, scores averaged"
    m2f = scripts["evaluate_semantic_segmentation"].main([str(data["m2f_model"]), *args, "--output-dir",
                                                          str(tmp_path / "m2f")])
    assert m2f["metadata"]["protocol"] == "short side 512, long side <= 2048; whole image (padded to multiples of " \
        "32), single scale"
    upernet = scripts["evaluate_semantic_segmentation"].main([str(tiny_upernet(tmp_path / "upernet_model")), *args,
                                                              "--output-dir", str(tmp_path / "upernet")])
    assert upernet["metadata"]["protocol"] == "short side 512, long side <= 2048; whole image, single scale"
    for payload in (dpt, m2f, upernet):
        assert payload["vanilla"]["num_images"] == payload["expedited"]["num_images"] == 2
        assert 0.0 <= _metrics(payload, "expedited")["mean_iou"] <= 1.0


def test_depth_crops_truncate_as_the_references():
    rows = lambda mask: (int(mask.any(1).argmax()), int(len(mask) - mask.any(1)[::-1].argmax()))  # noqa: E731
    cols = lambda mask: rows(mask.T)  # noqa: E731
    eigen = crop_mask((480, 640), "eigen")
    assert rows(eigen) == (45, 471) and cols(eigen) == (41, 601)  # BTS: eval_mask[45:471, 41:601]
    # A 370-row KITTI map (2011_09_28 / 2011_09_30 drives): int(0.99189189 * 370) = 366, not 367.
    garg = crop_mask((370, 1226), "garg")
    assert rows(garg) == (int(0.40810811 * 370), 366) and cols(garg) == (int(0.03594771 * 1226), int(0.96405229 * 1226))
    assert rows(crop_mask((375, 1242), "garg")) == (153, 371)
    assert crop_mask((10, 10), "none") is None


def test_kitti_kb_crop_of_input_and_reference():
    assert kb_window(375, 1242) == (23, 13, 375, 1229)  # bottom-centred 352 x 1216, BTS's margins
    task = DepthTask(depth_column="depth", depth_scale=256.0, min_depth=1e-3, max_depth=80.0, crop="garg",
                     kb_crop=True, alignment="none", aggregation="per-image")
    depth = np.arange(375 * 1242, dtype=np.float64).reshape(375, 1242)
    reference = task.reference(0, {"depth": depth})
    assert reference.map.shape == (352, 1216) and reference.map[0, 0] == depth[23, 13] / 256.0
    full_mask = crop_mask((375, 1242), "garg")  # the Garg crop is taken on the full-size map, then cropped
    assert np.array_equal(reference.info, full_mask[23:375, 13:1229])
    image = PIL.Image.fromarray((depth % 255).astype(np.uint8)).convert("RGB")
    cropped = task.input_image(image)
    assert cropped.size == (1216, 352) and np.asarray(cropped)[0, 0, 0] == depth[23, 13] % 255
    with pytest.raises(ValueError, match="Image 4: the KB crop needs at least 352 x 1216"):
        task.reference(4, {"depth": np.ones((300, 1000))})


# ---------------------------------------------------------------- long runs: bad rows, Ctrl-C, resume


def test_null_images_and_null_categories_are_skipped_and_listed(scripts, data, tmp_path):
    """A Parquet-style missing image and a panoptic segment without a category never abort the run."""
    coco = datasets.load_from_disk(str(data["coco_data"])).cast_column("image", datasets.Image(decode=False))
    rows = coco.to_list()
    rows[1]["image"] = None  # a missing value
    rows[2]["segments_info"][0]["category_id"] = None  # a reference the metric cannot read
    datasets.Dataset.from_list(rows, features=coco.features).save_to_disk(str(tmp_path / "coco"))
    with pytest.warns(UserWarning, match="index 1"):
        payload = scripts["evaluate_panoptic"].main([
            str(data["m2f_model"]), "--dataset", str(tmp_path / "coco"), "--label-map", LABEL_MAP,
            "--expedite", json.dumps(M2F_REDUCED), "--output-dir", str(tmp_path / "out"), "--no-progress",
            "--check-samples", "1", *PANOPTIC_ARGS,
        ])
    metadata = payload["metadata"]
    assert "missing value" in metadata["skipped samples"]["1"]
    assert list(metadata["invalid samples"]) == ["2"] and "TypeError" in metadata["invalid samples"]["2"]
    assert payload["vanilla"]["num_images"] == 2 and _metrics(payload, "vanilla")["pq"] == 1.0


def _interrupt_at_forward(count: int):
    """A global forward hook that sends this process SIGINT (as Ctrl-C does) during the ``count``-th forward of a
    depth model (vanilla or expedited)."""
    calls = {"n": 0}

    def hook(module, args, output):
        if type(module).__name__.endswith("ForDepthEstimation"):
            calls["n"] += 1
            if calls["n"] == count:
                os.kill(os.getpid(), signal.SIGINT)

    return torch.nn.modules.module.register_module_forward_hook(hook)


def test_ctrl_c_writes_a_partial_report_and_resume_finishes_the_run(scripts, data, tmp_path):
    main = scripts["evaluate_depth"].main
    common = [str(data["depth_model"]), "--dataset", str(data["nyu_data"]), "--benchmark", "nyu", "--alignment",
              "none", "--warmup", "0", "--no-progress"]
    arguments = [*common, "--expedite", json.dumps(DPT_REDUCED)]
    with pytest.warns(UserWarning, match="index 3"):
        complete = main([*arguments, "--output-dir", str(tmp_path / "complete")])
    assert not list((tmp_path / "complete").glob(".depth.partial-*"))  # removed once the report is written

    out = str(tmp_path / "out")
    handle = _interrupt_at_forward(5)  # vanilla and expedited of image 0, of image 1, then Ctrl-C on image 2
    try:
        assert scripts["evaluate_depth"].cli(lambda: main([*arguments, "--output-dir", out])) == 130
    finally:
        handle.remove()
    partial = json.loads((tmp_path / "out" / "depth.json").read_text())
    assert "PARTIAL REPORT" in partial["metadata"]["interrupted"] and partial["vanilla"]["num_images"] == 2
    assert "partial: interrupted" in (tmp_path / "out" / "depth.md").read_text()
    assert list((tmp_path / "out").glob(".depth.partial-*"))

    with pytest.raises(InputError, match="partial results of an interrupted run: pass --resume"):
        main([*arguments, "--output-dir", out])
    with pytest.raises(InputError, match="different run .*expedite"):
        main([*common, "--expedite", "true", "--output-dir", out, "--resume"])
    with pytest.warns(UserWarning, match="index 3"):
        resumed = main([*arguments, "--output-dir", out, "--resume"])
    assert "2 images" in resumed["metadata"]["resumed"] and "interrupted" not in resumed["metadata"]
    assert resumed["vanilla"]["num_images"] == complete["vanilla"]["num_images"] == 6
    for model in ("vanilla", "expedited"):
        assert _metrics(resumed, model) == pytest.approx(_metrics(complete, model))
    assert not list((tmp_path / "out").glob(".depth.partial-*"))


def test_an_unusable_output_dir_is_found_before_any_model_is_loaded(scripts, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(InputError, match="cannot hold the report"):
        scripts["evaluate_depth"].main([str(tmp_path / "no-such-model"), "--output-dir", str(tmp_path / "file" / "out")])


@pytest.mark.parametrize("option", [["--max-samples", "0"], ["--max-samples", "-1"], ["--batch-size", "0"]])
def test_count_options_are_checked_by_argparse(scripts, option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        scripts["evaluate_depth"].main(["some/model", *option])
    assert exit_info.value.code == 2 and "must be at least 1" in capsys.readouterr().err


# ---------------------------------------------------------------- bad input, caught before any work


@pytest.mark.parametrize(
    "script, model, arguments, message",
    [
        ("evaluate_depth", "depth_model", ["--dataset", "ade_data"],
         r"lacks column\(s\) \['depth'\]; available columns: \['image', 'annotation'\]"),
        ("evaluate_semantic_segmentation", "seg_model", ["--dataset", "ade_data", "--label-column", "annotation"],
         r"Image \d: reference contains label\(s\) \[(5|200)\] outside \[0, 5\).*--reduce-labels"),
        ("evaluate_semantic_segmentation", "depth_model", ["--dataset", "ade_data"],
         "depth_model is a DPTForDepthEstimation model, not a semantic segmentation model"),
        ("evaluate_panoptic", "seg_model", ["--dataset", "coco_data"],
         "is a DPTForSemanticSegmentation model, not a panoptic segmentation model"),
        ("evaluate_panoptic", "m2f_model", ["--dataset", "coco_data"],
         r"Image 0: segment category ids \[1[0-5].*\] lie outside the model's labels \[0, 6\)"),
        ("evaluate_panoptic", "m2f_model", ["--dataset", "coco_data", "--label-map", '{"10": "sky"}'],
         r"--label-map names \['sky'\] are not classes of the model"),
        ("evaluate_depth", "depth_model", ["--dataset", "nyu_data", "--benchmark", "nyu", "--depth-scale", "1e-9"],
         r"None of the first 6 depth maps has a pixel in \(0.001, 10.0\)"),
        ("evaluate_depth", "depth_model", ["--dataset", "nyu_data", "--expedite", '{"clustering_location": 9}'],
         r"Invalid Expedite setting `clustering_location=9`"),
        ("evaluate_depth", "depth_model", ["--benchmark", "kitti"], "Benchmark 'kitti' has no public dataset"),
    ],
)
@pytest.mark.filterwarnings("ignore:Skipping dataset index 3")  # the undecodable sample of the NYUv2 stand-in
def test_bad_input_is_reported_before_any_work(scripts, data, tmp_path, script, model, arguments, message):
    arguments = [str(data[a]) if a in data else a for a in arguments]
    with pytest.raises(InputError, match=message):
        scripts[script].main([str(data[model]), *arguments, "--output-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # checked, nothing written


# ---------------------------------------------------------------- subprocess and accelerate launch


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(command: list, cwd: Path) -> subprocess.CompletedProcess:
    python_path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": python_path, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1",
           "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_command_line_error_message(data, tmp_path):
    script = REPO_ROOT / "scripts" / "evaluate_semantic_segmentation.py"
    command = [sys.executable, str(script), str(data["depth_model"]), "--dataset", str(data["ade_data"])]
    completed = _run(command, tmp_path)
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines()[-1].startswith(
        f"error: {data['depth_model']} is a DPTForDepthEstimation model, not a semantic segmentation model"
    )


def test_two_processes_match_one_process(data, tmp_path):
    """The depth script with the NYUv2 defaults (Eigen crop, 10 m cap, disparity alignment) on 7 samples (one
    undecodable): uneven shards over 2 CPU processes give exactly the single-process metrics."""
    script = str(REPO_ROOT / "scripts" / "evaluate_depth.py")
    arguments = [str(data["depth_model"]), "--dataset", str(data["nyu_data"]), "--benchmark", "nyu", "--expedite",
                 json.dumps(DPT_REDUCED), "--no-progress"]
    single = _run([sys.executable, script, *arguments, "--output-dir", str(tmp_path / "single")], tmp_path)
    assert single.returncode == 0, single.stdout + single.stderr
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port())]
    multi = _run([*launch, script, *arguments, "--output-dir", str(tmp_path / "multi")], tmp_path)
    assert multi.returncode == 0, multi.stdout + multi.stderr

    one, two = (json.loads((tmp_path / name / "depth.json").read_text()) for name in ("single", "multi"))
    assert two["metadata"]["batch size / processes"] == "1 / 2" and one["metadata"]["batch size / processes"] == "1 / 1"
    for model in ("vanilla", "expedited"):
        assert two[model]["metrics"] == one[model]["metrics"]
        assert two[model]["num_images"] == one[model]["num_images"] == 6
        assert two[model]["details"]["forward_passes"] == 6
    assert one["vanilla"]["metrics"] != one["expedited"]["metrics"]
    assert list(two["metadata"]["skipped samples"]) == list(one["metadata"]["skipped samples"]) == ["3"]
    assert two["ratios"].keys() == one["ratios"].keys()
    assert multi.stdout.count("| rmse |") == 1  # one report, from the main process
