;; Demonstrates typed exports (i32/i64/f64, multi-value, traps). Try: wasmsbx run examples/add.wat add 5 3   (prints 8)
;; More: wasmsbx run examples/add.wat mul64 4000000000 3 | hypot 3 4 | divmod 17 5 | div 1 0 (traps: integer divide by zero)
(module
  ;; add(a, b) = a + b  (wrapping 32-bit)
  (func $add (export "add") (param $a i32) (param $b i32) (result i32)
    (i32.add (local.get $a) (local.get $b)))

  ;; mul64(a, b) = a * b  (wrapping 64-bit)
  (func $mul64 (export "mul64") (param $a i64) (param $b i64) (result i64)
    (i64.mul (local.get $a) (local.get $b)))

  ;; hypot(a, b) = sqrt(a*a + b*b)
  (func $hypot (export "hypot") (param $a f64) (param $b f64) (result f64)
    (f64.sqrt
      (f64.add
        (f64.mul (local.get $a) (local.get $a))
        (f64.mul (local.get $b) (local.get $b)))))

  ;; divmod(a, b) = (a / b, a % b), signed; returns two values (multi-value)
  (func $divmod (export "divmod") (param $a i32) (param $b i32) (result i32 i32)
    (i32.div_s (local.get $a) (local.get $b))
    (i32.rem_s (local.get $a) (local.get $b)))

  ;; div(a, b) = a / b, signed; traps ("integer divide by zero") when b == 0
  (func $div (export "div") (param $a i32) (param $b i32) (result i32)
    (i32.div_s (local.get $a) (local.get $b)))
)
