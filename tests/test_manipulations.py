import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from featbench.data import manipulations as manip
from featbench.core.errors import FeatbenchError, UnknownNameError
from featbench.core.hashing import canonical_json
from featbench.data.manipulations import get_manipulation, list_manipulations, register_manipulation

GEOMETRIC = ["rot90", "rot180", "rot270", "hflip", "vflip"]
PHOTOMETRIC = ["noise40", "hue60", "grayscale"]
LOCAL = ["mask_tl_red", "mask_br_green", "mask_center_big_blue", "mask_center_small_yellow"]
# Need the real saliency model and pinned images (tests/test_semantic.py) or edit pairs (tests/test_edit_pairs.py).
SEMANTIC = ["object_removal", "object_only", "background_swap", "edit_pairs"]


def random_images(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Float images in [0, 255], deliberately not integer-valued."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 3, h, w), generator=g) * 255


def random_uint8(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 array -> 1×3×H×W float32 tensor."""
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).float()


def to_array(t: torch.Tensor) -> np.ndarray:
    return t[0].permute(1, 2, 0).round().to(torch.uint8).numpy()


@pytest.fixture
def scratch_registry(monkeypatch):
    """User registrations in a test go to a copy of the registry, not the shared one."""
    monkeypatch.setattr(manip, "_REGISTRY", manip._REGISTRY.copy())


def test_builtins_are_listed_by_category():
    assert list_manipulations() == GEOMETRIC + PHOTOMETRIC + LOCAL + SEMANTIC
    assert list_manipulations("geometric") == GEOMETRIC
    assert list_manipulations("photometric") == PHOTOMETRIC
    assert list_manipulations("local") == LOCAL
    assert list_manipulations("semantic") == SEMANTIC
    for name in list_manipulations():
        m = get_manipulation(name)
        assert m.name == name
        assert m.is_geometric == (m.category == "geometric")
    with pytest.raises(FeatbenchError, match="geometric"):
        list_manipulations("colour")


@pytest.mark.parametrize("name", GEOMETRIC + PHOTOMETRIC + LOCAL)
@pytest.mark.parametrize("h, w", [(32, 48), (224, 224)])
def test_every_manipulation_keeps_shape_dtype_range(name, h, w):
    images = random_images(2, h, w)
    before = images.clone()
    out = get_manipulation(name)(images, seeds=[1, 2])
    quarter_turn = name in ("rot90", "rot270")
    assert out.shape == ((2, 3, w, h) if quarter_turn else (2, 3, h, w))
    assert out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 255
    assert torch.equal(images, before)  # the input is not modified in place


def test_images_must_be_float32_nchw_rgb():
    m = get_manipulation("hflip")
    with pytest.raises(FeatbenchError, match="float32"):
        m(random_images(1, 8, 8).to(torch.uint8))
    with pytest.raises(FeatbenchError, match="N×3×H×W"):
        m(torch.zeros(1, 1, 8, 8))


def test_rotations_compose():
    x = random_images(2, 32, 48)
    rot90, rot270 = get_manipulation("rot90"), get_manipulation("rot270")
    assert torch.equal(rot90(rot90(rot90(rot90(x)))), x)
    assert torch.equal(rot90(rot270(x)), x)
    assert torch.equal(rot90(rot90(x)), get_manipulation("rot180")(x))
    assert torch.equal(get_manipulation("rot90", k=2)(x), get_manipulation("rot180")(x))


@pytest.mark.parametrize(
    "name, pil_op",
    [
        ("hflip", Image.FLIP_LEFT_RIGHT),
        ("vflip", Image.FLIP_TOP_BOTTOM),
        ("rot90", Image.ROTATE_90),
        ("rot180", Image.ROTATE_180),
        ("rot270", Image.ROTATE_270),
    ],
)
def test_geometric_matches_pil(name, pil_op):
    arr = random_uint8(20, 30)  # non-square, so a transposed or mirrored rotation would not match
    expected = np.array(Image.fromarray(arr).transpose(pil_op))
    np.testing.assert_array_equal(to_array(get_manipulation(name)(to_tensor(arr))), expected)


@pytest.mark.parametrize("name", GEOMETRIC)
def test_grid_action_commutes_with_average_downsampling(name):
    # A feature grid cell summarises a 4×4 patch; acting on the grid must match acting on the image.
    m = get_manipulation(name)
    x = random_images(2, 32, 48)
    assert torch.allclose(F.avg_pool2d(m(x), 4), m.grid_action(F.avg_pool2d(x, 4)))


@pytest.mark.parametrize("name", GEOMETRIC)
@pytest.mark.parametrize("h, w", [(7, 7), (5, 9)])
def test_grid_permutation_agrees_with_grid_action(name, h, w):
    m = get_manipulation(name)
    fmap = torch.randn(2, 6, h, w)
    idx = m.grid_permutation(h, w)
    assert idx.dtype == torch.long and idx.shape == (h * w,)
    assert torch.equal(m.grid_action(fmap).flatten(2), fmap.flatten(2)[..., idx])


@pytest.mark.parametrize("name", PHOTOMETRIC + LOCAL)
def test_grid_action_only_for_geometric(name):
    m = get_manipulation(name)
    with pytest.raises(FeatbenchError, match="not geometric"):
        m.grid_action(torch.zeros(1, 4, 7, 7))
    with pytest.raises(FeatbenchError, match="not geometric"):
        m.grid_permutation(7, 7)


def test_noise_is_deterministic_per_seed_and_batch_independent():
    noise = get_manipulation("noise40")
    x = random_images(3, 16, 16)
    out = noise(x, seeds=[5, 6, 7])
    assert torch.equal(out, noise(x, seeds=[5, 6, 7]))
    # An image's result depends on its own seed only, not on the other images in the batch.
    assert torch.equal(out[1:2], noise(x[1:2], seeds=[6]))
    assert torch.equal(out[[2, 0]], noise(x[[2, 0]], seeds=[7, 5]))
    assert not torch.equal(noise(x[:1], seeds=[5]), noise(x[:1], seeds=[8]))
    assert not torch.equal(out, out.round())  # clamped, not rounded


def test_noise_has_requested_sigma():
    grey = torch.full((1, 3, 224, 224), 128.0)
    for sigma in (40.0, 10.0):
        delta = get_manipulation("noise40", sigma=sigma)(grey, seeds=[0]) - grey
        assert abs(delta.std().item() - sigma) < 0.05 * sigma
        assert abs(delta.mean().item()) < 0.5
    assert torch.equal(get_manipulation("noise40", sigma=0)(grey, seeds=[0]), grey)


def test_noise_needs_one_seed_per_image():
    noise = get_manipulation("noise40")
    x = random_images(2, 8, 8)
    with pytest.raises(FeatbenchError, match="seeds"):
        noise(x)
    with pytest.raises(FeatbenchError, match="1 seeds for 2 images"):
        noise(x, seeds=[1])
    with pytest.raises(FeatbenchError, match="ints"):
        noise(x, seeds=[1.5, 2])


def test_unseeded_manipulations_ignore_seeds():
    x = random_images(2, 8, 8)
    m = get_manipulation("grayscale")
    assert torch.equal(m(x), m(x, seeds=[1, 2]))


def pil_hue_shift(arr: np.ndarray, shift: int) -> np.ndarray:
    """One H×W×3 uint8 image through PIL's HSV round trip with the hue shifted."""
    hsv = np.array(Image.fromarray(arr).convert("HSV")).astype(np.int32)
    hsv[..., 0] = (hsv[..., 0] + shift) % 256
    return np.array(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB"))


def test_hue60_matches_pil():
    x = random_images(2, 24, 40)
    out = get_manipulation("hue60")(x)
    for img, got in zip(x, out):
        arr = img.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(got.permute(1, 2, 0).numpy(), pil_hue_shift(arr, 60).astype(np.float32))


@pytest.mark.parametrize("shift", [60, 201])
def test_the_hue_shift_matches_pil_on_every_colour(shift):
    # The shift looks colours up in a table made once: every one of the 2**24 must be PIL's.
    channel = np.arange(256, dtype=np.uint8)
    arr = np.stack(np.meshgrid(channel, channel, channel, indexing="ij"), axis=-1).reshape(4096, 4096, 3)
    arr = arr[::-1].copy()  # an image is not the table itself
    got = get_manipulation("hue60", shift=shift)(to_tensor(arr))
    np.testing.assert_array_equal(to_array(got), pil_hue_shift(arr, shift))


def test_grayscale_matches_pil_exactly():
    arr = random_uint8(64, 96, seed=3)
    out = get_manipulation("grayscale")(to_tensor(arr))
    expected = np.array(Image.fromarray(arr).convert("L")).astype(np.float32)
    for c in range(3):
        np.testing.assert_array_equal(out[0, c].numpy(), expected)


def test_mask_box_bounds_at_224():
    x = random_images(2, 224, 224)
    out = get_manipulation("mask_tl_red")(x)
    # round(26*224/288) = 20, round(104*224/288) = 81 (exclusive)
    inside = torch.zeros(224, 224, dtype=torch.bool)
    inside[20:81, 20:81] = True
    red = torch.tensor([255.0, 0, 0]).view(1, 3, 1)
    assert torch.equal(out[:, :, inside], red.expand(2, 3, int(inside.sum())))
    assert torch.equal(out[:, :, ~inside], x[:, :, ~inside])


def test_mask_box_scales_each_axis():
    x = random_images(1, 224, 144)
    out = get_manipulation("mask_br_green")(x)
    # rows: round(180*224/288)=140 .. round(271*224/288)=211 exclusive;
    # cols: 90 .. round(271*144/288)=136 exclusive (135.5: Python's round takes the even neighbour)
    changed = (out != x).any(dim=1)[0]
    rows, cols = changed.any(dim=1).nonzero().flatten(), changed.any(dim=0).nonzero().flatten()
    assert (rows.min().item(), rows.max().item() + 1) == (140, 211)
    assert (cols.min().item(), cols.max().item() + 1) == (90, 136)
    green = torch.tensor([0.0, 255, 0]).view(3, 1, 1)
    assert torch.equal(out[0, :, 140:211, 90:136], green.expand(3, 71, 46))


def test_mask_colours_and_custom_params():
    x = random_images(1, 288, 288)
    for name, colour in [("mask_center_big_blue", (0, 0, 255)), ("mask_center_small_yellow", (255, 255, 0))]:
        assert get_manipulation(name)(x)[0, :, 140, 140].tolist() == list(colour)
    custom = get_manipulation("mask_tl_red", box=[0, 287], color=[1, 2, 3])  # lists are accepted
    assert torch.equal(custom(x), torch.tensor([1.0, 2, 3]).view(1, 3, 1, 1).expand_as(x))


def test_unknown_name_lists_known_names():
    with pytest.raises(UnknownNameError) as info:
        get_manipulation("rot45")
    assert isinstance(info.value, KeyError)
    for name in ("rot45", "rot90", "mask_tl_red", "grayscale"):
        assert name in str(info.value)


@pytest.mark.parametrize(
    "name, params, fragment",
    [
        ("noise40", {"std": 10}, "'std'.*allowed: sigma"),
        ("grayscale", {"k": 1}, "'k'"),
        ("noise40", {"sigma": -1.0}, "'sigma'.*>= 0"),
        ("noise40", {"sigma": float("nan")}, "sigma"),
        ("rot90", {"k": 0}, r"'k'.*\[1, 3\]"),
        ("rot90", {"k": 4}, r"'k'.*\[1, 3\]"),
        ("rot90", {"k": 1.0}, "'k'"),
        ("hflip", {"axis": "depth"}, "'axis'"),
        ("hue60", {"shift": 256}, "'shift'"),
        ("mask_tl_red", {"color": (256, 0, 0)}, r"'color'.*\[0, 255\]"),
        ("mask_tl_red", {"color": (-1, 0, 0)}, "'color'"),
        ("mask_tl_red", {"color": (255, 0)}, "'color'"),
        ("mask_tl_red", {"box": (0, 288)}, r"'box'.*\[0, 287\]"),
        ("mask_tl_red", {"box": (-1, 10)}, "'box'"),
        ("mask_tl_red", {"box": (100, 50)}, "'box'.*a0 <= a1"),
    ],
)
def test_bad_parameters_are_named(name, params, fragment):
    with pytest.raises(FeatbenchError, match=fragment):
        get_manipulation(name, **params)


def test_spec_is_json_and_tracks_params():
    spec = get_manipulation("mask_tl_red").spec()
    assert json.loads(canonical_json(spec)) == {
        "name": "mask_tl_red",
        "category": "local",
        "params": {"box": [26, 103], "color": [255, 0, 0]},
        "version": 1,
    }
    # Compared as JSON text: the hash sees "40" and "40.0" as different even though 40 == 40.0.
    assert canonical_json(get_manipulation("noise40", sigma=40).spec()) == canonical_json(
        get_manipulation("noise40").spec()
    )
    assert get_manipulation("noise40").spec() != get_manipulation("noise40", sigma=20.0).spec()
    assert get_manipulation("rot90").spec() != get_manipulation("rot90", k=3).spec()


def test_manipulation_is_immutable_and_hashable():
    m = get_manipulation("mask_tl_red")
    with pytest.raises(TypeError):
        m.params["box"] = (0, 1)
    assert m == get_manipulation("mask_tl_red", color=[255, 0, 0])
    assert m != get_manipulation("mask_tl_red", color=(0, 0, 0))
    assert len({m, get_manipulation("mask_tl_red")}) == 1


def _invert(images: torch.Tensor, amount: float) -> torch.Tensor:
    return images + amount * (255 - 2 * images)


def _check_amount(p):
    if not 0 <= p["amount"] <= 1:
        raise FeatbenchError(f"parameter 'amount' must be in [0, 1], got {p['amount']!r}")


def test_register_user_manipulation(scratch_registry):
    register_manipulation("invert", "semantic", _invert, {"amount": 1.0}, version=2, check=_check_amount)
    assert list_manipulations("semantic") == SEMANTIC + ["invert"]
    m = get_manipulation("invert")
    x = random_images(1, 8, 8)
    assert torch.allclose(m(x), 255 - x)
    assert torch.allclose(get_manipulation("invert", amount=0.0)(x), x)
    assert m.spec()["version"] == 2 and not m.is_geometric
    with pytest.raises(FeatbenchError, match="amount"):
        get_manipulation("invert", amount=2.0)
    with pytest.raises(FeatbenchError, match="already registered"):
        register_manipulation("invert", "semantic", _invert, {"amount": 0.5})
    with pytest.raises(FeatbenchError, match="already registered"):
        register_manipulation("rot90", "semantic", _invert, {"amount": 0.5})


def test_register_rejects_inconsistent_entries(scratch_registry):
    with pytest.raises(FeatbenchError, match="grid_fn"):
        register_manipulation("transpose", "geometric", lambda x: x.transpose(-2, -1), {})
    with pytest.raises(FeatbenchError, match="grid_fn"):
        register_manipulation("inv", "photometric", _invert, {"amount": 1.0}, grid_fn=_invert)
    with pytest.raises(FeatbenchError, match="category"):
        register_manipulation("inv", "colour", _invert, {"amount": 1.0})
    with pytest.raises(FeatbenchError, match="amount"):
        register_manipulation("inv", "semantic", _invert, {"amount": 3.0}, check=_check_amount)
    assert "inv" not in list_manipulations() and "transpose" not in list_manipulations()


def test_user_geometric_manipulation_gets_grid_permutation(scratch_registry):
    def transpose(x: torch.Tensor) -> torch.Tensor:
        return x.transpose(-2, -1)

    register_manipulation("transpose", "geometric", transpose, {}, grid_fn=transpose)
    m = get_manipulation("transpose")
    fmap = torch.randn(1, 3, 4, 6)
    assert torch.equal(m.grid_action(fmap).flatten(2), fmap.flatten(2)[..., m.grid_permutation(4, 6)])
