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


def test_help_documents_every_key():
    """train.py --help: every config key under its group, with its meaning, its default and its choices."""
    import re
    import typing

    from greedy.config import config_arguments, make_parser
    from greedy.registry import HEADS, PROBES
    from greedy.schema import FIELDS, GROUPS, choices

    parser = make_parser("train.py", "test")
    config_arguments(parser)
    groups = {g.title.split(" (")[0]: g for g in parser._action_groups}
    assert [title for title in groups if title in GROUPS] == list(GROUPS)
    text = "".join(parser.format_help().split())  # argparse wraps lines (at spaces and hyphens): compare unspaced
    for name, f in FIELDS.items():
        flag = f"--{name.replace('_', '-')}"
        [action] = [a for a in groups[f.metadata["group"]]._group_actions if a.option_strings[0] == flag]
        assert len(action.help.split()) >= 2 and re.search(r"\(default: [^)]+\)$", action.help), name
        allowed = choices(name)
        if allowed is not None:
            assert action.metavar.startswith("{" + ",".join(allowed) + "}"), name
        elif typing.get_type_hints(type(build_config({})))[name] is bool:
            assert action.metavar == "true|false"
        assert "".join(action.help.replace("%%", "%").split()) in text
    assert "{greedy,e2e,decoupled}" in text and "{" + ",".join(HEADS) + "}" in text
    assert "{" + ",".join(choices("probes")) + "},..." in text and set(choices("probes")) < set(PROBES)
    assert "(default:0.1)" in text and "(default:64,64,128)" in text and "(default:false)" in text
    assert parser.format_usage().strip() == "usage: train.py [-h] [--KEY VALUE ...]"


def test_registries_are_full_from_the_config_alone():
    """The schema checks names against registries filled by the implementations, which `import greedy` loads:
    a fresh process that imports only greedy.config knows every auxiliary net and probe family."""
    import subprocess
    import sys

    code = ("from greedy.config import build_config\nfrom greedy.registry import DATASETS, HEADS, PROBES\n"
            "from greedy.schema import choices\n"
            "print(','.join(DATASETS), ','.join(HEADS), ','.join(choices('probes')), len(PROBES))\n"
            "build_config({'aux': 'mlp_sr', 'probes': ['knn'], 'dataset': 'fake'})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["digits,fashion_mnist,cifar10,cifar100,imagenet,folder,fake", "cnn,mlp,mlp_sr,linear,vgg",
                           "linear,knn,clustering,binned_entropy,information", "13"]


def test_registry_refuses_a_name_twice():
    from greedy.registry import Registry, did_you_mean

    reg: Registry[int] = Registry("objective", "local objective")
    assert reg.add("ce", 1) == 1 and reg.register("two")(2) == 2  # both hand back what they registered
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("ce", 3)
    with pytest.raises(UsageError, match=r"config key 'objective': 'cee' is not one of ce"):
        reg.get("cee")
    assert did_you_mean("cee", reg) == "did you mean 'ce'? " and reg.get("ce") == 1 and reg.names() == ("ce", "two")
