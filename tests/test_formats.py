"""Tests for trtq.formats: representable grids, rounding, encode/decode and 4-bit packing.

Grids are checked against hand-written value sets and, for FP8 E4M3, against torch.float8_e4m3fn itself
(every bit pattern, plus torch's cast as the rounding reference), so a wrong bias, subnormal rule, tie rule or
code layout fails here.
"""

import pytest
import torch

from trtq.errors import TrtqError
from trtq.formats import FORMATS, FloatFormat, IntFormat, get_format, pack_4bit, unpack_4bit


def _sym(pos):
    vals = set(pos) | {-v for v in pos}
    return sorted(vals)


E2M1 = _sym([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
E3M0 = _sym([0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0])
E1M2 = _sym([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5])
FP4 = {"fp4_e2m1": E2M1, "fp4_e3m0": E3M0, "fp4_e1m2": E1M2}


def _torch_e4m3_finite():
    """(bit patterns, float values) of every finite float8_e4m3fn code, -0.0 included."""
    bits = torch.arange(256, dtype=torch.uint8)
    vals = bits.view(torch.float8_e4m3fn).float()
    finite = torch.isfinite(vals)
    return bits[finite], vals[finite]


# ----------------------------------------------------------------------------------------- grids
@pytest.mark.parametrize("name", sorted(FP4))
def test_fp4_grid_exact(name):
    fmt = get_format(name)
    assert fmt.bits == 4 and fmt.kind == "float"
    assert fmt.grid().tolist() == FP4[name]
    assert fmt.max_value == max(FP4[name])


def test_fp4_max_values():
    assert get_format("fp4_e2m1").max_value == 6.0
    assert get_format("fp4_e3m0").max_value == 16.0
    assert get_format("fp4_e1m2").max_value == 3.5


def test_grid_is_strictly_ascending_and_symmetric():
    for fmt in FORMATS.values():
        g = fmt.grid()
        assert torch.all(g[1:] > g[:-1]), fmt.name
        if fmt.kind == "float":
            assert torch.equal(g, -g.flip(0)), fmt.name


def test_fp8_e4m3_grid_constants():
    fmt = get_format("fp8_e4m3")
    g = fmt.grid()
    assert fmt.bits == 8
    assert fmt.max_value == 448.0
    assert g.max().item() == 448.0 and g.min().item() == -448.0
    assert g.numel() == 253
    assert len(set(g.tolist())) == 253
    pos = g[g > 0]
    assert pos.min().item() == 2.0**-9
    # smallest normal 2^-6, largest subnormal 7 * 2^-9
    assert 2.0**-6 in pos.tolist() and 7 * 2.0**-9 in pos.tolist()
    assert 480.0 not in g.tolist()


def test_fp8_grid_equals_torch_float8_e4m3fn():
    _, vals = _torch_e4m3_finite()
    torch_set = set(vals.tolist())  # -0.0 == 0.0 folds into one entry
    ours = get_format("fp8_e4m3").grid().tolist()
    assert len(torch_set) == 253
    assert set(ours) == torch_set
    assert len(ours) == 253


def test_fp8_encode_matches_torch_bits():
    fmt = get_format("fp8_e4m3")
    bits, vals = _torch_e4m3_finite()
    assert bits.numel() == 254  # 256 minus the two NaN codes; includes +0 and -0
    codes = fmt.encode(vals)
    assert codes.dtype == torch.uint8
    assert torch.equal(codes, bits)
    # and decode inverts it, sign of zero included
    dec = fmt.decode(bits)
    assert torch.equal(dec, vals)
    assert torch.equal(torch.signbit(dec), torch.signbit(vals))


def _e4m3_test_inputs():
    g = torch.Generator().manual_seed(0)
    uniform = (torch.rand(20000, generator=g) * 2 - 1) * 448
    # log-uniform magnitudes spanning subnormals to max
    mags = torch.exp2(torch.rand(20000, generator=g) * (8.8 + 11) - 11).clamp(max=448)
    signs = torch.where(torch.rand(20000, generator=g) < 0.5, -1.0, 1.0)
    grid = get_format("fp8_e4m3").grid().double()
    mids = ((grid[1:] + grid[:-1]) / 2).float()  # exact ties (exactly representable in float32)
    assert torch.equal(mids.double(), (grid[1:] + grid[:-1]) / 2)
    specials = torch.tensor([0.0, -0.0, 448.0, -448.0, 2.0**-9, -(2.0**-9), 2.0**-10, -(2.0**-10),
                             3 * 2.0**-11, 1e-30, -1e-30])
    return torch.cat([uniform, mags * signs, mids, specials])


def test_fp8_round_matches_torch_cast():
    fmt = get_format("fp8_e4m3")
    x = _e4m3_test_inputs()
    ours = fmt.round(x)
    ref = x.to(torch.float8_e4m3fn).float()
    assert torch.equal(ours, ref)
    # sign of zero as well (torch keeps it)
    assert torch.equal(torch.signbit(ours), torch.signbit(ref))


def test_fp8_encode_of_round_matches_torch_bits():
    fmt = get_format("fp8_e4m3")
    x = _e4m3_test_inputs()
    ours = fmt.encode(fmt.round(x))
    ref = x.to(torch.float8_e4m3fn).view(torch.uint8)
    assert torch.equal(ours, ref)


def test_fp8_round_ties_to_even_examples():
    fmt = get_format("fp8_e4m3")
    # in [1, 2) the quantum is 1/8: 1 + 1/16 is a tie between 1 (mantissa 000) and 1.125 (001) -> 1
    assert fmt.round(torch.tensor([1 + 1 / 16])).item() == 1.0
    # 1.125 + 1/16 is a tie between 1.125 (001) and 1.25 (010) -> 1.25
    assert fmt.round(torch.tensor([1.125 + 1 / 16])).item() == 1.25
    # 464 is a tie between 448 (110) and 480 (not finite in fn): 448; beyond: saturates
    assert fmt.round(torch.tensor([464.0, 1000.0, -1e6])).tolist() == [448.0, 448.0, -448.0]
    # half the smallest subnormal ties to 0 (even), a bit more goes to 2^-9
    assert fmt.round(torch.tensor([2.0**-10, 2.0**-10 * 1.01])).tolist() == [0.0, 2.0**-9]


# ----------------------------------------------------------------------------------------- ints
def test_int_ranges():
    i8, i4 = get_format("int8"), get_format("int4")
    assert (i8.qmin, i8.qmax, i8.max_value) == (-128, 127, 127.0)
    assert (i4.qmin, i4.qmax, i4.max_value) == (-8, 7, 7.0)
    assert i8.grid().tolist() == list(range(-128, 128))
    assert i4.grid().tolist() == list(range(-8, 8))
    assert i8.kind == "int" and i4.kind == "int"


def test_int_round_ties_even_and_clamp():
    i4 = get_format("int4")
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.4, 3.6, 7.4, 7.5, 100.0, -8.4, -9.0, -100.0])
    assert i4.round(x).tolist() == [0, 2, 2, 0, -2, -2, 3, 4, 7, 7, 7, -8, -8, -8]
    x = torch.tensor([-3.0, -0.6, 0.0, 14.5, 15.5, 16.0, 300.0])
    assert i4.round(x, unsigned_range=True).tolist() == [0, 0, 0, 14, 15, 15, 15]
    i8 = get_format("int8")
    assert i8.round(torch.tensor([126.5, 127.5, -128.5, -129.0, 300.0])).tolist() == [126, 127, -128, -128, 127]
    assert i8.round(torch.tensor([254.5, 255.6, -1.0]), unsigned_range=True).tolist() == [254, 255, 0]


@pytest.mark.parametrize("name", ["int8", "int4"])
def test_int_encode_decode_roundtrip(name):
    fmt = get_format(name)
    q = fmt.grid()
    codes = fmt.encode(q)
    assert codes.dtype == torch.uint8
    # two's complement in the low `bits` bits
    expected = [(int(v) + 2**fmt.bits) % 2**fmt.bits for v in q.tolist()]
    assert codes.tolist() == expected
    assert torch.equal(fmt.decode(codes), q)
    if name == "int8":
        assert torch.equal(codes.view(torch.int8).float(), q)


def test_int4_code_examples():
    i4 = get_format("int4")
    assert i4.encode(torch.tensor([-1.0, -8.0, 7.0, 0.0])).tolist() == [0xF, 0x8, 0x7, 0x0]
    assert i4.decode(torch.tensor([0xF, 0x8, 0x7, 0x0], dtype=torch.uint8)).tolist() == [-1, -8, 7, 0]


# ----------------------------------------------------------------------------------------- fp4 rounding
def test_e2m1_rounding_examples():
    fmt = get_format("fp4_e2m1")
    x = torch.tensor([2.5, 3.5, 5.0, 0.25, 0.75, 1.25, 1.75, 2.4, 2.6, 4.9, 5.1, 0.2, 0.3,
                      6.0, 7.0, 100.0, 0.0])
    expected = [2.0, 4.0, 4.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 4.0, 6.0, 0.0, 0.5,
                6.0, 6.0, 6.0, 0.0]
    assert fmt.round(x).tolist() == expected
    # negatives are symmetric
    assert fmt.round(-x).tolist() == [-v for v in expected]


def test_e1m2_rounding_examples():
    fmt = get_format("fp4_e1m2")
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.25, 3.75, 10.0, 0.3, 2.2])
    expected = [0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 3.5, 3.5, 0.5, 2.0]
    assert fmt.round(x).tolist() == expected
    assert fmt.round(-x).tolist() == [-v for v in expected]


def test_e3m0_rounding_examples():
    fmt = get_format("fp4_e3m0")
    x = torch.tensor([2.9, 3.1, 0.1, 0.2, 0.3, 0.37, 0.38, 5.9, 6.1, 20.0, 1e9, 0.0])
    expected = [2.0, 4.0, 0.0, 0.25, 0.25, 0.25, 0.5, 4.0, 8.0, 16.0, 16.0, 0.0]
    assert fmt.round(x).tolist() == expected
    assert fmt.round(-x).tolist() == [-v for v in expected]


@pytest.mark.parametrize("name", ["fp4_e2m1", "fp4_e3m0", "fp4_e1m2", "fp8_e4m3"])
def test_float_round_is_nearest_grid_value(name):
    """Brute force: round(x) is a grid value at minimal distance (the nearest; exact ties checked elsewhere)."""
    fmt = get_format(name)
    grid = fmt.grid()
    g = torch.Generator().manual_seed(1)
    m = fmt.max_value
    x = (torch.rand(5000, generator=g) * 2 - 1) * m * 1.2
    r = fmt.round(x)
    assert torch.isin(r, grid).all()
    dist = (x[:, None] - grid[None, :]).abs()
    best = dist.min(1).values
    assert torch.allclose((x - r).abs(), best, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["fp4_e2m1", "fp4_e3m0", "fp4_e1m2", "fp8_e4m3"])
def test_float_round_fixed_points_and_saturation(name):
    fmt = get_format(name)
    grid = fmt.grid()
    assert torch.equal(fmt.round(grid), grid)
    big = torch.tensor([fmt.max_value * 1.5, fmt.max_value * 100, float("inf")])
    assert fmt.round(big).tolist() == [fmt.max_value] * 3
    assert fmt.round(-big).tolist() == [-fmt.max_value] * 3


def test_float_round_keeps_dtype():
    fmt = get_format("fp4_e2m1")
    x = torch.tensor([2.5, 5.0], dtype=torch.float16)
    r = fmt.round(x)
    assert r.dtype == torch.float16 and r.tolist() == [2.0, 4.0]


# ----------------------------------------------------------------------------------------- fp4 codes
@pytest.mark.parametrize("name", sorted(FP4))
def test_fp4_all_codes_roundtrip(name):
    fmt = get_format(name)
    codes = torch.arange(16, dtype=torch.uint8)
    vals = fmt.decode(codes)
    # 0..7 are the non-negative magnitudes ascending, 8..15 the same with the sign bit
    pos = [v for v in FP4[name] if v >= 0]
    assert vals[:8].tolist() == pos
    assert vals[8:].tolist() == [-v for v in pos]
    # code 0b1000 is -0.0
    assert vals[8].item() == 0.0 and torch.signbit(vals[8])
    assert not torch.signbit(vals[0])
    assert torch.equal(fmt.encode(vals), codes)


def test_e2m1_specific_codes():
    fmt = get_format("fp4_e2m1")
    assert fmt.encode(torch.tensor([6.0, -6.0, 0.5, -0.5, 1.0, 3.0])).tolist() == [0x7, 0xF, 0x1, 0x9, 0x2, 0x5]
    assert fmt.encode(torch.tensor([-0.0])).item() == 0x8
    assert fmt.encode(torch.tensor([0.0])).item() == 0x0


def test_encode_rejects_off_grid_values():
    with pytest.raises(ValueError):
        get_format("fp4_e2m1").encode(torch.tensor([2.5]))
    with pytest.raises(ValueError):
        get_format("fp8_e4m3").encode(torch.tensor([1000.0]))


def test_negative_zero_sign_after_round_and_encode():
    fmt = get_format("fp4_e2m1")
    r = fmt.round(torch.tensor([-0.1, -0.0]))
    assert r.tolist() == [0.0, 0.0]
    assert torch.signbit(r).tolist() == [True, True]
    assert fmt.encode(r).tolist() == [0x8, 0x8]


# ----------------------------------------------------------------------------------------- packing
def test_pack_low_nibble_first():
    packed = pack_4bit(torch.tensor([1, 2], dtype=torch.uint8))
    assert packed.dtype == torch.uint8
    assert packed.tolist() == [0x21]
    assert pack_4bit(torch.tensor([0xF, 0x0, 0x0, 0xF], dtype=torch.uint8)).tolist() == [0x0F, 0xF0]


def test_pack_unpack_roundtrip():
    g = torch.Generator().manual_seed(2)
    codes = torch.randint(0, 16, (3, 5, 8), generator=g).to(torch.uint8)
    packed = pack_4bit(codes)
    assert packed.shape == (3, 5, 4)
    assert torch.equal(packed, codes[..., 0::2] | (codes[..., 1::2] << 4))
    assert torch.equal(unpack_4bit(packed), codes)
    # every byte value unpacks and re-packs to itself
    allbytes = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(pack_4bit(unpack_4bit(allbytes)), allbytes)


def test_pack_odd_length_raises():
    with pytest.raises(TrtqError):
        pack_4bit(torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(TrtqError):
        pack_4bit(torch.zeros(2, 5, dtype=torch.uint8))


def test_unknown_format_raises():
    with pytest.raises(TrtqError, match="fp5"):
        get_format("fp5")


def test_format_registry_types():
    assert isinstance(get_format("int8"), IntFormat)
    assert isinstance(get_format("fp8_e4m3"), FloatFormat)
    assert set(FORMATS) == {"int8", "int4", "fp8_e4m3", "fp4_e2m1", "fp4_e3m0", "fp4_e1m2"}


# =============================================================================== review defects
def test_fp8_decode_nan_codes_are_nan():
    fmt = get_format("fp8_e4m3")
    dec = fmt.decode(torch.tensor([0x7F, 0xFF, 0x7E, 0xFE], dtype=torch.uint8))
    assert torch.isnan(dec[:2]).all()
    assert dec[2:].tolist() == [448.0, -448.0]
    # torch's own float8_e4m3fn agrees on the NaN codes
    ref = torch.tensor([0x7F, 0xFF], dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    assert torch.isnan(ref).all()


@pytest.mark.parametrize("name", ["fp4_e2m1", "fp4_e3m0", "fp4_e1m2", "fp8_e4m3"])
def test_float_round_float64_rounds_once(name):
    fmt = get_format(name)
    grid = fmt.grid().double()
    pos = grid[grid >= 0]
    mids = (pos[:-1] + pos[1:]) / 2
    tiny = 2.0 ** -40  # below float32's resolution at these magnitudes: float32 would land on the tie
    up, down = fmt.round(mids + tiny * mids), fmt.round(mids - tiny * mids)
    assert up.dtype == torch.float64
    assert torch.equal(up, pos[1:]) and torch.equal(down, pos[:-1])
    assert torch.equal(fmt.round(-(mids + tiny * mids)), -pos[1:])


def test_fp4_e2m1_quarter_plus_epsilon_is_half():
    x = torch.tensor([0.25 + 2.0 ** -40], dtype=torch.float64)
    assert get_format("fp4_e2m1").round(x).item() == 0.5
