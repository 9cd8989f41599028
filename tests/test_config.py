from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONF, compose_cfg, options
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from lpm.config import (
    PRECISION_ALIASES,
    PRECISIONS,
    ConfigError,
    LDMSpec,
    check,
    cuda_visible,
    resolve_scale,
    resolve_spec,
    scheduler_arguments,
)

AXES = ("model", "dims", "gpus", "sampler", "data", "logger")


def pairwise(groups: list[list[str]]) -> set[tuple[str, ...]]:
    """A few combinations that pair every option of each group with every option of every other."""
    pairs = list(itertools.combinations(range(len(groups)), 2))

    def covers(combo: tuple[str, ...]) -> set:
        return {(i, combo[i], j, combo[j]) for i, j in pairs}

    todo = set().union(*(covers(c) for c in itertools.product(*groups)))
    chosen: set[tuple[str, ...]] = set()
    while todo:
        best = max(itertools.product(*groups), key=lambda c: len(covers(c) & todo))
        chosen.add(best)
        todo -= covers(best)
    return chosen


# Composing takes ~0.1 s: the fast suite composes a pairwise cover, the slow one everything.
ALL = list(itertools.product(*(options(g) for g in AXES)))
FAST = pairwise([options(g) for g in AXES])
COMBOS = [
    pytest.param(*c, id="-".join(c), marks=[] if c in FAST else [pytest.mark.slow]) for c in ALL
]


def _check_spec(cfg: DictConfig, spec: LDMSpec, scale: str) -> None:
    ref = cfg.dims[scale]
    n = cfg.dims.spatial_dims
    assert spec.scale == scale and spec.spatial_dims == n
    assert len(spec.image_size) == n == len(spec.latent_size)
    assert spec.image_size == tuple(cfg.dims.image_size or ref.image_size)
    down = 2 ** (len(spec.autoencoder["channels"]) - 1)
    assert spec.latent_downsample == down
    assert spec.latent_size == tuple(s // down for s in spec.image_size)
    assert all(s % down == 0 for s in spec.image_size)
    groups = spec.norm_num_groups
    assert groups == ref.norm_num_groups
    for built, reference in (
        (spec.autoencoder["channels"], ref.autoencoder.channels),
        (spec.unet["channels"], ref.unet.channels),
    ):
        assert len(built) == len(reference)
        assert all(c % groups == 0 for c in built), built
        assert all(c >= r * cfg.model.width for c, r in zip(built, reference, strict=True))
    attention = spec.unet["attention_levels"]
    assert attention == [bool(a) and cfg.model.attention for a in ref.unet.attention_levels]
    for c, a, heads in zip(
        spec.unet["channels"], attention, spec.unet["num_head_channels"], strict=True
    ):
        if a:
            assert heads == ref.unet.num_head_channels and c % heads == 0, (c, heads)
        else:
            assert heads == 0
    assert (
        spec.autoencoder["num_res_blocks"]
        == spec.unet["num_res_blocks"]
        == cfg.model.num_res_blocks
    )
    for phase, b in spec.batch.items():
        assert b == (cfg.batch[phase] or ref.batch[phase]) >= 1


@pytest.mark.parametrize(AXES, COMBOS)
def test_every_combination_composes_checks_and_resolves(
    model: str, dims: str, gpus: str, sampler: str, data: str, logger: str, folder_root: Path
) -> None:
    extra = [f"data.root={folder_root}"] if data == "folder" else []
    cfg = compose_cfg(
        f"model={model}", f"dims={dims}", f"gpus={gpus}", f"sampler={sampler}",
        f"data={data}", f"logger={logger}", *extra,
    )  # fmt: skip
    assert (cfg.model.name, cfg.dims.name, cfg.gpus.name) == (model, dims, gpus)
    assert (cfg.sampler.name, cfg.data.name) == (sampler, data)
    check(cfg, cuda=True)  # gpus=1gpu... ask for a GPU: checked apart, below
    for scale in ("paper", "cpu"):
        _check_spec(cfg, resolve_spec(cfg, scale), scale)


@pytest.mark.parametrize("model", options("model"))
def test_model_without_attention_drops_every_attention_block(model: str) -> None:
    cfg = compose_cfg(f"model={model}", "model.attention=false", "dims=3d")
    spec = resolve_spec(cfg, "paper")
    assert not any(spec.unet["attention_levels"])
    assert set(spec.unet["num_head_channels"]) == {0}


def test_explicit_image_size_and_batch_win_over_scale_defaults() -> None:
    cfg = compose_cfg("dims=3d", "dims.image_size=[32,64,48]", "batch.synthesis=5")
    spec = resolve_spec(cfg, "paper")
    assert spec.image_size == (32, 64, 48)
    assert spec.latent_size == (8, 16, 12)
    assert spec.batch["synthesis"] == 5
    assert spec.batch["diffusion"] == cfg.dims.paper.batch.diffusion


def test_resolve_scale() -> None:
    on_cpu = compose_cfg("gpus=cpu")
    assert resolve_scale(on_cpu, cuda=True) == "cpu"
    assert resolve_scale(on_cpu, cuda=False) == "cpu"
    auto = compose_cfg("gpus=auto", "scale=auto")
    assert resolve_scale(auto, cuda=True) == "paper"
    assert resolve_scale(auto, cuda=False) == "cpu"
    assert resolve_scale(compose_cfg("gpus=1gpu"), cuda=True) == "paper"
    for gpus in ("cpu", "auto"):
        for cuda in (True, False):
            assert resolve_scale(compose_cfg(f"gpus={gpus}", "scale=paper"), cuda=cuda) == "paper"
            assert resolve_scale(compose_cfg(f"gpus={gpus}", "scale=cpu"), cuda=cuda) == "cpu"


@pytest.mark.parametrize(
    ("overrides", "key", "allowed"),
    [
        (["sampler.steps=0"], "sampler.steps", ">= 1"),
        (["target.samples=-1"], "target.samples", ">= 1"),
        (["target.diffusion_iterations=0"], "target.diffusion_iterations", ">= 1"),
        (["dims=3d", "dims.image_size=[64]"], "dims.image_size", "3 entries"),
        (["dims.image_size=[0,16]"], "dims.image_size", ">= 1"),
        (["data=folder", "data.root=/does/not/exist"], "data.root", "directory"),
        (["data=folder"], "data.root", "directory"),
        (["measure.windows=0"], "measure.windows", ">= 3"),
        (["measure.windows=2"], "measure.windows", ">= 3 (3 give a robust centre"),
        (
            ["measure.windows=3", "measure.diffusion.iterations=4"],
            "measure.diffusion.iterations",
            "makes 2 window(s) of 2 with measure.windows=3; at least 3",
        ),
        (["measure.synthesis.decodes=2"], "measure.synthesis.decodes", "makes 2 window(s)"),
        (["sampler.steps=1001"], "sampler.steps", "<= 1000, the timesteps"),
        (["sampler=ddim", "sampler.steps=5000"], "sampler.steps", "<= 1000"),
        (["seed=-1"], "seed", ">= 0"),
        (["precision=16-bogus"], "precision", "32-true, 16-mixed, bf16-mixed"),
        (["precision=8"], "precision", "one of Lightning's"),
        (["measure.force_cpu_power_w=0"], "measure.force_cpu_power_w", "> 0 watts"),
        (["measure.force_ram_power_w=-3"], "measure.force_ram_power_w", "> 0 watts"),
        (["measure.tracking_mode=proc"], "measure.tracking_mode", "machine, process"),
        (["measure.noise.max_rel_half_width=0"], "measure.noise.max_rel_half_width", "> 0"),
        (["carbon.when=garbage"], "carbon.when", "a month (2024-03)"),
        (["carbon.when=2024-13"], "carbon.when", "a month (2024-03)"),
        (["carbon.fallback=monthly"], "carbon.fallback", "null, annual"),
        (["data.pool=0"], "data.pool", ">= 1"),
        (["+foo=1"], "foo", "not an lpm config key; known keys: batch, carbon"),
        (["+measure.windowz=5"], "measure.windowz", "not a key of measure; known keys: "),
        (["+dims.paper.unet.heads=4"], "dims.paper.unet.heads", "attention_levels, channels"),
        (
            ["+sampler.kwargs.eta=0.0", "sampler=ddim"],
            "sampler.kwargs.eta",
            "not an argument of DDIMScheduler; it takes num_train_timesteps, ",
        ),
        (["measure.diffusion.iterations=0"], "measure.diffusion.iterations", ">= 1"),
        (["measure.autoencoder.warmup=-1"], "measure.autoencoder.warmup", ">= 0"),
        (["measure.synthesis.decodes=0"], "measure.synthesis.decodes", ">= 1"),
        (["batch.autoencoder=0"], "batch.autoencoder", ">= 1"),
        (["gpus.scaling=bogus"], "gpus.scaling", "weak or strong"),
        (["gpus.devices=0"], "gpus.devices", ">= 1 or auto"),
        (["gpus.num_nodes=0"], "gpus.num_nodes", ">= 1"),
        (["scale=bogus"], "scale", "auto, paper, cpu"),
        (["model.width=0"], "model.width", "> 0"),
        (["model.num_res_blocks=0"], "model.num_res_blocks", ">= 1"),
    ],
)
def test_check_rejects_out_of_range(overrides: list[str], key: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        check(compose_cfg(*overrides))
    assert info.value.key == key
    message = str(info.value)
    assert message.startswith(f"{key}="), message
    assert allowed in message, message


@pytest.mark.parametrize(
    "overrides",
    [
        ["precision=16-mixed"],
        ["precision=bf16"],
        ["precision=64"],
        ["seed=0", "measure.windows=3"],
        ["measure.force_cpu_power_w=45", "measure.force_ram_power_w=3.5"],
        ["measure.tracking_mode=process", "carbon.fallback=annual"],
        ["carbon.when=2024"],
        ["carbon.when=2024-03"],
        ["carbon.when=2024-03-15T12:00Z"],
        ["sampler.steps=1000", "+sampler.kwargs.variance_type=fixed_large"],
        ["sampler=ddim", "+sampler.kwargs.timestep_spacing=trailing"],
        ["sampler.scheduler=NoSuchScheduler", "+sampler.kwargs.foo=1"],  # left to make_scheduler
        ["measure.windows=3", "measure.diffusion.iterations=5", "measure.synthesis.decodes=3"],
        ["measure.full=true", "measure.synthesis.decodes=1"],  # full runs split the budget
    ],
    ids=" ".join,
)
def test_check_accepts_valid_input(overrides: list[str]) -> None:
    check(compose_cfg(*overrides), cuda=False)


def test_check_accepts_hydras_own_section() -> None:
    """Hydra's config beside lpm's (compose(return_hydra_config=True)) is no unknown key."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", return_hydra_config=True)
    assert "hydra" in cfg
    check(cfg, cuda=False)


@pytest.mark.parametrize("gpus", ["1gpu", "2gpu", "4gpu", "8gpu"])
def test_gpus_without_a_visible_gpu_are_rejected(gpus: str) -> None:
    cfg = compose_cfg(f"gpus={gpus}")
    check(cfg, cuda=True)
    with pytest.raises(ConfigError) as info:
        check(cfg, cuda=False)
    assert info.value.key == "gpus"
    message = str(info.value)
    assert message.startswith(f"gpus={gpus}: asks for CUDA GPUs"), message
    assert "use gpus=cpu" in message


@pytest.mark.parametrize("gpus", ["cpu", "auto"])
def test_gpus_that_run_without_a_gpu_are_accepted(gpus: str) -> None:
    check(compose_cfg(f"gpus={gpus}"), cuda=False)


def test_cuda_visible_devices_hiding_every_gpu_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert cuda_visible() is False
    with pytest.raises(ConfigError):
        check(compose_cfg("gpus=1gpu"))  # asks NVML only when the config wants a GPU


def test_precisions_are_lightnings() -> None:
    """The static list is the one in Lightning's source (read, not imported: that takes 4 s)."""
    import ast
    import importlib.util

    origin = importlib.util.find_spec("lightning").origin
    source = Path(origin).parent / "fabric" / "plugins" / "precision" / "precision.py"
    values = {}
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            values[node.targets[0].id] = node.value
    literal = values["_PRECISION_INPUT_STR"]
    assert isinstance(literal, ast.Subscript)
    assert {e.value for e in literal.slice.elts} == set(PRECISIONS)
    assert ast.literal_eval(values["_PRECISION_INPUT_STR_ALIAS_CONVERSION"]) == PRECISION_ALIASES


def test_scheduler_arguments_read_from_source_match_the_classes() -> None:
    """The static read of every diffusers scheduler's `__init__` agrees with the imported class
    (or declines: None)."""
    import inspect

    import diffusers

    names = [
        n
        for n in dir(diffusers)
        if n.endswith("Scheduler")
        and n[0].isupper()
        # diffusers' placeholders for schedulers whose extra dependency is missing
        and type(getattr(diffusers, n)).__name__ != "DummyObject"
    ]
    read = {n: scheduler_arguments(n) for n in names}
    assert read["DDPMScheduler"] and read["DDIMScheduler"]
    assert sum(a is not None for a in read.values()) > len(names) / 2
    for name, arguments in read.items():
        if arguments is None:
            continue
        parameters = list(inspect.signature(getattr(diffusers, name).__init__).parameters)[1:]
        assert list(arguments) == parameters, name
    assert scheduler_arguments("NoSuchScheduler") is None


def test_check_imports_no_torch() -> None:
    """Bad input fails before torch, Lightning or diffusers load (it takes a second, not five)."""
    bad = [
        ["sampler.steps=1001"], ["seed=-1"], ["precision=8"], ["measure.windows=2"],
        ["measure.force_cpu_power_w=0"], ["measure.tracking_mode=proc"],
        ["carbon.when=garbage"], ["carbon.fallback=monthly"], ["+foo=1"],
        ["+sampler.kwargs.foo=1"], ["gpus=1gpu"],
    ]  # fmt: skip
    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from conftest import compose_cfg
from lpm.config import ConfigError, check
for overrides in {bad!r}:
    try:
        check(compose_cfg(*overrides), cuda=False)
        print("accepted", overrides)
    except ConfigError:
        pass
print(sorted(m for m in ("torch", "lightning", "diffusers", "monai") if m in sys.modules))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]", proc.stdout


def test_folder_data_needs_a_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`root: ???` makes the root mandatory: an unset root never passes, whatever the cwd holds."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "None").mkdir()
    with pytest.raises(ConfigError) as info:
        check(compose_cfg("data=folder"))
    assert info.value.key == "data.root"


@pytest.mark.parametrize(
    ("overrides", "divisor"),
    [
        (["dims.image_size=[20,20]"], 32),  # paper 2D: autoencoder ×4 × UNet ×8
        (["dims=3d", "dims.image_size=[144,176,120]"], 16),
    ],
)
def test_resolve_spec_rejects_indivisible_image_size(overrides: list[str], divisor: int) -> None:
    cfg = compose_cfg(*overrides)
    check(cfg)
    with pytest.raises(ConfigError) as info:
        resolve_spec(cfg, "paper")
    assert info.value.key == "dims.image_size"
    assert str(info.value).startswith("dims.image_size=[")
    assert f"divide by {divisor}" in str(info.value)


# --- the yaml files document themselves --------------------------------------------------------

GROUPS = sorted(
    p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra"
)  # hydra/: its own
GROUP_FILES = sorted(CONF.glob("*/*.yaml"))
SCALAR = re.compile(r"^(?P<key>[A-Za-z_]\w*):\s*(?P<rest>.*)$")


@pytest.mark.parametrize("path", GROUP_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_group_file_starts_with_a_comment(path: Path) -> None:
    assert path.read_text().startswith("#"), f"{path} needs a header comment"


@pytest.mark.parametrize(
    "path",
    [p for p in GROUP_FILES if p.parent.name in ("model", "gpus", "sampler", "data")],
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_scalar_fields_have_inline_comments(path: Path) -> None:
    for line in path.read_text().splitlines():
        m = SCALAR.match(line)
        if m is None or not m["rest"] or m["rest"].startswith("#"):
            continue  # comments, nested blocks
        if m["key"] == "name":
            assert m["rest"].split("#")[0].strip() == path.stem, f"{path}: name must be the stem"
            continue
        assert "#" in m["rest"], f"{path}: `{line}` has no comment"


def test_config_defaults_name_and_document_every_group() -> None:
    lines = (CONF / "config.yaml").read_text().splitlines()
    entries = {}
    for line in lines[lines.index("defaults:") + 1 :]:
        m = re.match(r"^\s+-\s+(\w+):\s*(\S+)\s*(#.*)?$", line)
        if m:
            entries[m[1]] = (m[2], m[3] or "")
        elif not line.strip().startswith("- "):
            break
    assert sorted(entries) == GROUPS
    for group, (default, comment) in entries.items():
        assert default in [*options(group), *(["null"] if group == "experiment" else [])], group
        for option in options(group):
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", comment), (group, option)
