"""Firmware artefacts: the C array holds exactly the model bytes, aligned, with its constants."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tflite_export.firmware import c_header, c_source, parse_c_array, write_c_array


@pytest.fixture(scope="module")
def tflite_bytes() -> bytes:
    keras = pytest.importorskip("keras")
    from tflite_export.convert import to_tflite_int8

    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 1))
    h = keras.layers.Conv2D(4, 3, activation="relu")(inp)
    out = keras.layers.Dense(3)(keras.layers.Flatten()(h))
    x = np.random.default_rng(0).random((16, 6, 6, 1), dtype=np.float32)
    return to_tflite_int8(keras.Model(inp, out), x, check=False)


def test_written_files_parse_back_to_the_model(tmp_path, tflite_bytes):
    src, hdr = write_c_array(tflite_bytes, tmp_path, arena_size=4321)
    assert (src.name, hdr.name) == ("model_data.cc", "model_data.h")
    text = src.read_text()
    assert parse_c_array(text) == tflite_bytes
    assert "alignas(16) const unsigned char g_model[] = {" in text
    assert f"const unsigned int g_model_len = {len(tflite_bytes)}u;" in text
    assert '#include "model_data.h"' in text
    header = hdr.read_text()
    assert "extern const unsigned char g_model[];" in header
    assert "constexpr unsigned int g_model_arena_size = 4321u;" in header
    assert f"constexpr unsigned int g_model_size = {len(tflite_bytes)}u;" in header
    assert header.count("#ifndef MODEL_DATA_H_") == 1 and "#endif" in header


def test_layout_matches_xxd(tflite_bytes):
    lines = c_source(tflite_bytes).splitlines()
    body = [ln for ln in lines if ln.startswith("  0x")]
    assert len(body) == -(-len(tflite_bytes) // 12)  # 12 bytes a line, as xxd -i
    assert body[0] == "  " + ", ".join(f"0x{b:02x}" for b in tflite_bytes[:12]) + ","


@settings(max_examples=30, deadline=None)
@given(data=st.binary(min_size=0, max_size=300), per_line=st.integers(1, 40))
def test_round_trip_any_bytes(data, per_line):
    assert parse_c_array(c_source(data, "model", bytes_per_line=per_line)) == data


def test_creates_the_folder(tmp_path):
    src, hdr = write_c_array(b"\x01\x02", tmp_path / "a" / "fw", name="net")
    assert src.parent == tmp_path / "a" / "fw" and parse_c_array(src.read_text()) == b"\x01\x02"
    assert "net_arena_size" not in hdr.read_text()


def test_no_arena_constant_when_unknown():
    header = c_header("net", length=10)
    assert "arena_size" not in header and "extern const unsigned int net_len;" in header


@pytest.mark.parametrize("name", ["1model", "g-model", "g model", ""])
def test_invalid_c_identifier_is_refused(name):
    with pytest.raises(ValueError, match="not a valid C identifier"):
        c_source(b"\x00", name)


def test_parse_rejects_text_without_array():
    with pytest.raises(ValueError, match="no array initializer"):
        parse_c_array("int x = 3;")


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")
def test_compiles_links_and_is_aligned(tmp_path, tflite_bytes):
    write_c_array(tflite_bytes, tmp_path, arena_size=2048)
    (tmp_path / "main.cc").write_text(
        '#include <cstdint>\n#include <cstdio>\n#include "model_data.h"\n'
        'static_assert(g_model_arena_size == 2048u, "arena constant");\n'
        "int main() {\n"
        "  if (reinterpret_cast<std::uintptr_t>(g_model) % 16 != 0) return 3;\n"
        "  if (g_model_len != g_model_size) return 4;\n"
        "  fwrite(g_model, 1, g_model_len, stdout);\n  return 0;\n}\n"
    )
    exe = tmp_path / "check"
    subprocess.run(
        [
            "g++",
            "-std=c++17",
            "-Wall",
            "-Werror",
            "-o",
            str(exe),
            str(tmp_path / "main.cc"),
            str(tmp_path / "model_data.cc"),
        ],
        check=True,
    )
    run = subprocess.run([str(exe)], capture_output=True, check=False)
    assert run.returncode == 0
    assert run.stdout == tflite_bytes
