import pytest

from greedy.config import build_config, coerce, load_yaml
from greedy.errors import UsageError


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_yaml_and_types(tmp_path):
    values = load_yaml(write(tmp_path, "widths: [8, 16]\nk: 3\nbatchnorm: false\nlr: 0.5\ndata-dir: x\n"))
    cfg = build_config(values)
    assert (cfg.widths, cfg.k, cfg.batchnorm, cfg.lr, cfg.data_dir) == ([8, 16], 3, False, 0.5, "x")


@pytest.mark.parametrize("text, fragment", [
    ("widht: [8]\n", "unknown config key 'widht'"),
    ("k: 4\n", "outside the allowed range [1, 3]"),
    ("k: three\n", "not an integer"),
    ("widths: [8, 16]\ndownsample: [3]\n", "do not exist"),
    ("widths: []\n", "non-empty"),
    ("mode: fancy\n", "not one of greedy, e2e, decoupled"),
    ("dataset: cifar10\ndata_dir: /nonexistent/cifar\n", "does not exist"),
    ("- a\n- b\n", "mapping"),
])
def test_bad_configs_raise_one_line(tmp_path, text, fragment):
    with pytest.raises(UsageError) as err:
        build_config(load_yaml(write(tmp_path, text)))
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_cli_values_are_coerced():
    assert coerce("widths", "64,64,128") == [64, 64, 128]
    assert coerce("batchnorm", "false") is False
    assert coerce("img_size", "none") is None
    assert coerce("decay_epochs", "7") == 7.0
    with pytest.raises(UsageError):
        coerce("epochs", "1.5")
