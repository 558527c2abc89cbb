"""dataset folder: your own images (DIR/train/<class>/* + DIR/val/<class>/*, or DIR/<class>/*), read once into
memory, normalized with the training split's statistics or the config's norm_mean / norm_std."""

import json

import pytest
import torch
from PIL import Image

import evaluate
import train
from greedy.datasets import create_datasets
from greedy.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_thread")
COLORS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}


def write_images(root, per_class: int, seed: int = 0) -> None:
    """Noisy images of one color per class, of varied sizes, one grayscale; a hidden file and a text file too."""
    g = torch.Generator().manual_seed(seed)
    for name, color in COLORS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            h, w = 20 + i % 3, 24 + i % 5
            noise = torch.randint(-40, 40, (h, w, 3), generator=g)
            pixels = (torch.tensor(color) + noise).clamp(0, 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / name / f"{i}.png")
        Image.fromarray(pixels[..., 0]).save(root / name / "gray.png")  # mode L: read as RGB
        (root / name / "notes.txt").write_text("not an image\n")
        Image.fromarray(pixels).save(root / name / ".hidden.png")


@pytest.fixture(scope="module")
def two_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    write_images(root / "train", 16)
    write_images(root / "val", 6, seed=1)
    return root


def test_train_and_val_folders_are_read_into_memory(two_folders):
    data = create_datasets("folder", two_folders, img_size=12)
    assert data.num_classes == 3 and data.in_chans == 3 and data.img_size == 12
    assert (len(data.train), len(data.test)) == (3 * 17, 3 * 7)  # the gray image counts, hidden and text do not
    assert data.train.images.shape == (51, 3, 12, 12) and data.train.targets.tolist()[:17] == [0] * 17  # blue: class 0
    # normalized with the training split's own statistics: mean 0, std 1 per channel
    flat = data.train.images.transpose(0, 1).reshape(3, -1)
    assert flat.mean(dim=1).abs().max() < 1e-4 and (flat.std(dim=1, correction=0) - 1).abs().max() < 1e-4
    given = create_datasets("folder", two_folders, img_size=12, norm=([0.5] * 3, [0.25] * 3))
    assert given.mean == (0.5,) * 3 and given.std == (0.25,) * 3
    split = create_datasets("folder", two_folders, img_size=12, val_split=0.25, split_seed=0)
    assert len(split.train) + len(split.val) == 51 and torch.equal(split.test.images, data.test.images)


def test_one_folder_holds_out_a_fixed_stratified_test_split(tmp_path):
    write_images(tmp_path, 10)
    data = create_datasets("folder", tmp_path, img_size=8)
    assert (len(data.train), len(data.test)) == (27, 6)  # 20 % of each class's 11
    assert torch.bincount(data.test.targets).tolist() == [2, 2, 2]
    again = create_datasets("folder", tmp_path, img_size=8)
    assert torch.equal(again.test.images, data.test.images)  # the same whatever the run


@pytest.mark.parametrize("layout, message", [
    ("missing", "dataset 'folder': ROOT does not exist; pass --data-dir DIR (DIR/train/<class>/* and "
                "DIR/val/<class>/*, or DIR/<class>/*)"),
    ("one_class", "dataset 'folder': ROOT holds 1 class folder; a classifier needs two or more"),
    ("no_val", "dataset 'folder': no val/ folder under ROOT"),
    ("differ", "dataset 'folder': class folders differ between ROOT/train and ROOT/val (only in train: ['red']"),
    ("empty", "dataset 'folder': Found no valid file for the classes blue, red."),
])
def test_bad_trees_are_one_line(tmp_path, layout, message):
    root = tmp_path / "data"
    if layout == "one_class":
        write_images(tmp_path / "x", 2)
        root.mkdir()
        (tmp_path / "x" / "red").rename(root / "red")
    elif layout == "no_val":
        write_images(root / "train", 2)
    elif layout == "differ":
        write_images(root / "train", 2)
        write_images(root / "val", 2)
        for f in (root / "val" / "red").iterdir():
            f.unlink()
        (root / "val" / "red").rmdir()
    elif layout == "empty":  # class folders without an image in them
        (root / "red" / "a").mkdir(parents=True)
        (root / "blue").mkdir()
    with pytest.raises(UsageError) as err:
        create_datasets("folder", root, img_size=8)
    assert message.replace("ROOT", str(root)) in str(err.value) and "\n" not in str(err.value)


def test_own_images_train_through_the_cli_and_evaluate_the_same(two_folders, tmp_path, capsys):
    out = tmp_path / "runs"
    args = ["-c", "configs/digits_k2.yaml", "--dataset", "folder", "--data-dir", str(two_folders), "--img-size", "12",
            "--widths", "8,8,16", "--downsample", "3", "--epochs", "3", "--batch-size", "16", "--augment",
            "crop_flip", "--out-dir", str(out), "--name", "own", "--no-progress"]
    assert train.main(args) == 0
    summary = json.loads((out / "own" / "summary.json").read_text())
    assert summary["final_test_acc"] > 0.6  # three colors; chance is 1/3
    capsys.readouterr()
    assert evaluate.main([str(out / "own")]) == 0
    assert f"final test accuracy: {summary['final_test_acc']:.4f}" in capsys.readouterr().out


def test_the_class_count_comes_from_the_folders_before_any_image_is_read(two_folders):
    from greedy.config import build_config, load_yaml
    from greedy.datasets import dataset_classes

    assert dataset_classes("folder", two_folders) == 3 and dataset_classes("digits") == 10
    cfg = build_config({**load_yaml("configs/digits_k2.yaml"), "dataset": "folder", "data_dir": str(two_folders)})
    assert train.check_model_shapes(cfg).num_classes == 3  # --print-model and the shape check see 3 classes
