;; Traps with symbolic backtraces: `boom` -> outer -> middle -> inner -> unreachable; `oob` loads out of bounds; `div0` divides by zero.
(module $trap
  (memory (export "memory") 1)

  (func $inner
    unreachable)
  (func $middle
    (call $inner))
  (func $outer
    (call $middle))

  ;; boom(): trap "unreachable"; backtrace (innermost first): inner, middle, outer, boom
  (func $boom (export "boom")
    (call $outer))

  ;; oob(): i32.load at byte 65536 of a 1-page (65536-byte) memory: "out of bounds memory access"
  (func $oob (export "oob") (result i32)
    (i32.load (i32.const 65536)))

  ;; div0(): 1 / 0 (signed): "integer divide by zero"
  (func $div0 (export "div0") (result i32)
    (i32.div_s (i32.const 1) (i32.const 0)))
)
