;; Exports one function per value type, for argument parsing / result printing tests (v128 and externref cannot come from a command line).
(module
  (func $id_i32 (export "id_i32") (param i32) (result i32) (local.get 0))
  (func $id_i64 (export "id_i64") (param i64) (result i64) (local.get 0))
  (func $id_f32 (export "id_f32") (param f32) (result f32) (local.get 0))
  (func $id_f64 (export "id_f64") (param f64) (result f64) (local.get 0))

  ;; add_f32(a, b) = a + b in single precision (add_f32 0.1 0.2 -> 0.3 as f32, i.e. 0.30000001192...)
  (func $add_f32 (export "add_f32") (param f32 f32) (result f32)
    (f32.add (local.get 0) (local.get 1)))

  ;; takes_v128(v) = lane 0 of v as i32x4 (a SIMD parameter)
  (func $takes_v128 (export "takes_v128") (param v128) (result i32)
    (i32x4.extract_lane 0 (local.get 0)))

  ;; takes_ref(r) = 1 if r is null, else 0 (an externref parameter)
  (func $takes_ref (export "takes_ref") (param externref) (result i32)
    (ref.is_null (local.get 0)))

  ;; no_result(): takes nothing, returns nothing
  (func $no_result (export "no_result"))

  ;; two_results(x) = (x + 1, x * 10000000000 as i64)   e.g. two_results 3 -> 4 30000000000
  (func $two_results (export "two_results") (param i32) (result i32 i64)
    (i32.add (local.get 0) (i32.const 1))
    (i64.mul (i64.extend_i32_s (local.get 0)) (i64.const 10000000000)))
)
