"""What the wasmer backend compiles, as data: shared by its availability probe and capability
declaration (wasmer_backend) and its engine fingerprint (wasmer_engine)."""

from __future__ import annotations

from typing import Optional

# Proposals each compiler of wasmer 2.1 compiles (tests/test_features_declared.py compiles
# one module per proposal and checks that exactly these are accepted). Two proposals have
# gaps inside them, which the engine refuses up front from the module's bytes (exit 104,
# naming what is missing; tests/test_features_declared.py checks each):
# - reference-types: element segments of externref fail on every compiler ("unsupported
#   table element type: Extern"); externref tables, params and table.get/grow work.
# - simd on cranelift: the operators added when SIMD was finished (CRANELIFT_MISSING_SIMD);
#   wasmer:llvm has them all.
# relaxed-simd is on no compiler.
FEATURES = frozenset(
    {
        "mutable-globals",
        "sign-extension",
        "saturating-float-to-int",
        "bulk-memory",
        "reference-types",
        "multi-value",
        "simd",
    }
)
CRANELIFT_FEATURES = FEATURES
SINGLEPASS_FEATURES = FEATURES - {"multi-value", "simd"}
# Measured with wasmer-compiler-cranelift 1.1.0: "Unsupported feature: proposed simd
# operator". The 0xfd sub-opcodes and their names (the refusal lists those used).
CRANELIFT_MISSING_SIMD = {
    0x5E: "f32x4.demote_f64x2_zero",
    0x5F: "f64x2.promote_low_f32x4",
    0x62: "i8x16.popcnt",
    0x7C: "i16x8.extadd_pairwise_i8x16_s",
    0x7D: "i16x8.extadd_pairwise_i8x16_u",
    0x7E: "i32x4.extadd_pairwise_i16x8_s",
    0x7F: "i32x4.extadd_pairwise_i16x8_u",
    0x82: "i16x8.q15mulr_sat_s",
    0x9C: "i16x8.extmul_low_i8x16_s",
    0x9D: "i16x8.extmul_high_i8x16_s",
    0x9E: "i16x8.extmul_low_i8x16_u",
    0x9F: "i16x8.extmul_high_i8x16_u",
    0xBC: "i32x4.extmul_low_i16x8_s",
    0xBD: "i32x4.extmul_high_i16x8_s",
    0xBE: "i32x4.extmul_low_i16x8_u",
    0xBF: "i32x4.extmul_high_i16x8_u",
    0xC7: "i64x2.extend_low_i32x4_s",
    0xC8: "i64x2.extend_high_i32x4_s",
    0xC9: "i64x2.extend_low_i32x4_u",
    0xCA: "i64x2.extend_high_i32x4_u",
    0xDC: "i64x2.extmul_low_i32x4_s",
    0xDD: "i64x2.extmul_high_i32x4_s",
    0xDE: "i64x2.extmul_low_i32x4_u",
    0xDF: "i64x2.extmul_high_i32x4_u",
    0xFC: "i32x4.trunc_sat_f64x2_s_zero",
    0xFD: "i32x4.trunc_sat_f64x2_u_zero",
    0xFF: "f64x2.convert_low_i32x4_u",
}


def features_for(compiler: Optional[str]) -> frozenset:
    """The proposals a wasmer compiler implements whole."""
    return {"singlepass": SINGLEPASS_FEATURES, "cranelift": CRANELIFT_FEATURES}.get(
        compiler or "cranelift", FEATURES
    )
