"""The Python front door (greedy.train): the README's example as written, your own tensors in any mode and
objective, nothing left on disk unless asked, bad input as a ValueError with the CLI's words."""

import re

import pytest
import torch

import greedy
from greedy.datasets import create_datasets
from tests.helpers import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")


def readme_python_blocks() -> list[str]:
    section = (ROOT / "README.md").read_text().split("## From Python", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_readme_example_runs_as_written(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(ROOT)
    runs = sorted((ROOT / "runs").glob("*")) if (ROOT / "runs").is_dir() else []
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # the run's temporary folder: here, to see it go
    exec(readme_python_blocks()[0], {})
    out = capsys.readouterr().out
    lines = re.findall(r"^stage (\d): test accuracy (0\.\d{3})$", out, re.M)
    assert [s for s, _ in lines] == ["1", "2", "3"] and all(float(a) > 0.3 for _, a in lines)  # chance is 0.1
    assert re.search(r"^final: 0\.\d{3} in \d+\.\d s$", out, re.M)
    assert not any(tmp_path.iterdir())  # nothing left on disk
    assert (sorted((ROOT / "runs").glob("*")) if (ROOT / "runs").is_dir() else []) == runs


@pytest.fixture(scope="module")
def tensors():
    data = create_datasets("digits")
    return data.train.images, data.train.targets, data.test.images, data.test.targets


def test_your_tensors_in_any_mode_and_objective(tensors, tmp_path):
    x_train, y_train, x_test, y_test = tensors
    exec(readme_python_blocks()[1], {"greedy": greedy, "x_train": x_train, "y_train": y_train, "x_test": x_test,
                                     "y_test": y_test})
    result = greedy.train({"widths": [16, 16, 32], "downsample": [3], "epochs": 2, "no_progress": True}, tensors,
                          mode="decoupled", objective="predsim", out_dir=tmp_path)
    assert result.final_test_acc > 0.5 and len(result.stages) == 3 and len(result.stage_test_acc) == 3
    assert result.run_dir is not None and (result.run_dir / "summary.json").is_file()  # kept: out_dir was given
    assert isinstance(result.net, greedy.models.GreedyNet) and result.summary["mode"] == "decoupled"
    assert [(r["stage"], r["epoch"]) for r in result.epochs] == [(b, e) for e in (1, 2) for b in (1, 2, 3)]
    for row in result.stages:  # each block's local loss over its last epoch
        assert row["train_loss"] == [r["loss"] for r in result.epochs if r["stage"] == row["stage"]][-1] > 0
    e2e = greedy.train({"widths": [16, 16, 32], "downsample": [3], "epochs": 1, "no_progress": True}, tensors,
                       mode="e2e")
    assert [row["stage"] for row in e2e.stages] == ["e2e"] and e2e.stages[0]["train_loss"] == e2e.epochs[-1]["loss"]
    logits = result.net.eval()(x_test[:8].to(next(result.net.parameters()).device))
    assert logits.shape == (8, 10)


@pytest.mark.parametrize("call, message", [
    (lambda: greedy.train({"lr": 0}), "config key 'lr': 0.0 is outside the allowed range (0, inf)"),
    (lambda: greedy.train({"widht": [8]}), "unknown config key 'widht' in the config given; did you mean 'width"),
    (lambda: greedy.train(epochs="two"), "config key 'epochs': 'two' is not an integer"),
    (lambda: greedy.train({}, (torch.zeros(4, 1, 8, 6), torch.zeros(4, dtype=torch.long), torch.zeros(2, 1, 8, 6),
                               torch.zeros(2, dtype=torch.long))), "x_train must be a float tensor N x C x S x S"),
    (lambda: greedy.tensor_data(torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 2, -1]), torch.zeros(2, 1, 8, 8),
                                torch.zeros(2, dtype=torch.long)),
     "y_train: label -1 at index 3 is outside 0..2; labels are class indices"),
])
def test_bad_input_is_a_value_error_with_the_cli_words(call, message):
    with pytest.raises(ValueError) as err:
        call()
    assert isinstance(err.value, greedy.UsageError) and message in str(err.value) and "\n" not in str(err.value)


def test_your_own_units_train_greedily(capsys):
    scope = {"greedy": greedy}
    exec(readme_python_blocks()[2], scope)
    result, net = scope["result"], scope["net"]
    assert result.net is net and net.num_stages == 3 and len(result.stages) == 3
    assert result.final_test_acc > 0.5  # digits, 2 epochs a stage; chance is 0.1
    with pytest.raises(ValueError, match="your GreedyNet has 10 classes but the data 3; build it with num_classes=3"):
        greedy.train({"epochs": 1}, (torch.zeros(6, 1, 8, 8), torch.tensor([0, 1, 2] * 2), torch.zeros(3, 1, 8, 8),
                                     torch.tensor([0, 1, 2])), net=net)
    with pytest.raises(ValueError, match="--pipeline 2 places the config's net on the processes"):
        greedy.train({"epochs": 1, "mode": "decoupled", "pipeline": 2}, net=net)


def test_the_readme_probes_what_it_trained(capsys):
    scope = {"greedy": greedy}
    exec(readme_python_blocks()[2], scope)
    capsys.readouterr()
    exec(readme_python_blocks()[3], scope)
    lines = re.findall(r"^(\w+): linear probe (0\.\d{3}|1\.000)$", capsys.readouterr().out, re.M)
    assert [name for name, _ in lines] == ["input", "block1", "block2", "block3"]
    assert float(lines[-1][1]) > 0.5  # digits: chance is 0.1
    analysis = scope["analysis"]
    assert analysis["samples"]["test"] == 300 and [la["layer"] for la in analysis["knn"]["layers"]][-1] == "block3"


def test_analyze_on_tensors_gives_what_evaluate_computes(tensors):
    from greedy.analysis.context import AnalysisSettings
    from greedy.analysis.runner import run_analysis

    torch.manual_seed(0)
    net = greedy.GreedyNet([8, 8], 10, in_chans=1, img_size=8)
    net.train()
    mine = greedy.analyze(net, tensors, ["knn", "clustering"], samples=120, knn_k=3)
    assert net.training  # left as it was
    data = greedy.tensor_data(*tensors)
    theirs = run_analysis(net, data, ["knn", "clustering"], AnalysisSettings(samples=120, knn_k=3))
    assert [la["test_acc"] for la in mine["knn"]["layers"]] == [la["test_acc"] for la in theirs["knn"]["layers"]]
    assert mine["clustering"]["layers"][1]["nc1"] == pytest.approx(theirs["clustering"]["layers"][1]["nc1"])
    assert mine["knn"]["settings"]["knn_k"] == 3 and mine["samples"]["train"] == 120


def test_analyze_compares_two_nets(tensors):
    torch.manual_seed(0)
    a, b = (greedy.GreedyNet([8, 8], 10, in_chans=1, img_size=8) for _ in range(2))
    out = greedy.analyze(a, tensors, "cka", other=b, samples=50)
    assert len(out["compare"]["cka"]["same_layer"]) == 3  # input and two blocks, A's layer against B's
    assert out["compare"]["cka"]["same_layer"][0]["cka"] == pytest.approx(1.0)  # the same input images
    wider = greedy.GreedyNet([16, 8], 10, in_chans=1, img_size=8)
    with pytest.raises(ValueError, match=r"^analyze: connectivity interpolates the weights of one architecture, but "
                                         r"the nets differ at \S+ \(\(8, 8, 3, 3\) vs \(16, 16, 3, 3\)\); pass other="):
        greedy.analyze(a, tensors, "connectivity", other=wider, samples=50)


@pytest.mark.parametrize("kwargs, message", [
    ({"probes": "linaer"}, "unknown analysis 'linaer'; choose from"),
    ({"sample": 100}, "unknown analysis setting 'sample'; did you mean 'samples'? choose from samples, pool,"),
    ({"samples": "many"}, "analysis setting 'samples': 'many' is not an integer"),
    ({"samples": 5}, "analysis setting 'samples' must be at least 10, got 5"),
    ({"sigmas": [0.5, -1]}, "analysis setting 'sigmas' must be positive numbers, got 0.5,-1.0"),
    ({"probes": "connectivity"}, "analyze: probe family 'connectivity' compares two nets of one architecture; pass "
                                 "other=(a TrainResult or GreedyNet)"),
    ({"data": None}, "analyze: a bare GreedyNet needs data: pass a DataBundle or (x_train, y_train, x_test, y_test)"),
    ({"data": (torch.zeros(20, 3, 8, 8), torch.arange(20) % 10, torch.zeros(20, 3, 8, 8), torch.arange(20) % 10)},
     "analyze: the net takes 1 x 8 x 8 images but the data holds 3 x 8 x 8; probe it on images of the size it "
     "trained on"),
    ({"data": (torch.zeros(20, 1, 8, 8), torch.arange(20) % 12, torch.zeros(20, 1, 8, 8), torch.arange(20) % 12)},
     "y_train: label 10 at index 10 is outside 0..9"),
])
def test_analyze_refuses_bad_input_in_one_line(tensors, kwargs, message):
    net = greedy.GreedyNet([8, 8], 10, in_chans=1, img_size=8)
    kwargs = {"data": tensors, **kwargs}
    with pytest.raises(ValueError) as err:
        greedy.analyze(net, **kwargs)
    assert isinstance(err.value, greedy.UsageError) and message in str(err.value) and "\n" not in str(err.value)


class Counted:
    """A collate_fn that counts the batches it builds (accelerate's prepared loader keeps the loader's collate_fn,
    sampler, batch size and workers)."""

    def __init__(self) -> None:
        self.batches = 0

    def __call__(self, items):
        self.batches += 1
        return torch.utils.data.default_collate(items)


def test_your_dataloaders_are_read_as_they_are(tensors):
    x_train, y_train, x_test, y_test = tensors
    train_set, test_set = (torch.utils.data.TensorDataset(x, y) for x, y in ((x_train, y_train), (x_test, y_test)))
    train_count, test_count = Counted(), Counted()
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=48, shuffle=True, collate_fn=train_count)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=100, collate_fn=test_count)
    with pytest.raises(ValueError, match="^loader_data: the number of classes is not known from TensorDataset"):
        greedy.loader_data(train_loader, test_loader)
    data = greedy.loader_data(train_loader, test_loader, num_classes=10)
    assert (data.num_classes, data.in_chans, data.img_size) == (10, 1, 8)
    train_count.batches = 0  # loader_data read one batch to learn the image shape
    result = greedy.train({"widths": [16, 16, 32], "downsample": [3], "epochs": 2, "no_progress": True}, data)
    assert result.final_test_acc > 0.5 and len(result.stages) == 3
    assert train_count.batches == 3 * 2 * -(-len(train_set) // 48)  # 3 stages x 2 epochs x its batches: no cache
    assert test_count.batches == (3 * 2 + 1) * -(-len(test_set) // 100)  # every epoch's evaluation, the final one
    assert (result.config.batch_size, result.config.eval_batch_size, result.config.cache) == (48, 100, "off")
    probed = greedy.analyze(result, probes="knn", samples=100)  # the probes index the loaders' Datasets
    assert probed["knn"]["layers"][-1]["test_acc"] > 0.5
    with pytest.raises(ValueError, match="^config key 'val_split' builds loaders of its own, but your DataLoaders"):
        greedy.train({"epochs": 1, "val_split": 0.2}, data)
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(train_set)

    stream = torch.utils.data.DataLoader(Stream(), batch_size=4)
    with pytest.raises(ValueError, match="^train_loader: an IterableDataset cannot be indexed"):
        greedy.loader_data(stream, test_loader)


def test_create_net_builds_the_config_s_net_without_data():
    net = greedy.create_net({"widths": [16, 16, 32], "downsample": [3]})  # digits: 1 x 8 x 8, 10 classes
    assert net.num_stages == 3 and net.input_shape == (1, 8, 8) and net.num_classes == 10
    result = greedy.train({"epochs": 1, "no_progress": True}, net=net)  # the net it built, trained on digits
    assert result.net is net and result.final_test_acc > 0.3
    timm_net = greedy.create_net({"arch": "timm", "model": "resnet10t", "num_modules": 3}, dataset="cifar10",
                                 img_size=32)
    assert timm_net.num_stages == 3 and timm_net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="^unknown timm model 'resnet5O'; did you mean resnet50"):
        greedy.create_net({"arch": "timm", "model": "resnet5O", "num_modules": 2})
