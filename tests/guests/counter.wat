;; Batch tests: per-instance state. next() counts calls on this instance; bump(trap)
;; counts too, then traps when trap != 0 (so the caller must not reuse the instance).
(module
  (global $n (mut i32) (i32.const 0))
  (func (export "next") (result i32)
    (global.set $n (i32.add (global.get $n) (i32.const 1)))
    (global.get $n))
  (func (export "bump") (param $trap i32) (result i32)
    (global.set $n (i32.add (global.get $n) (i32.const 1)))
    (if (local.get $trap) (then unreachable))
    (global.get $n))
)
