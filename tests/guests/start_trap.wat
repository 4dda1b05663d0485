;; A module whose start function executes `unreachable`: instantiation itself traps, before any export can be called.
(module
  (func $start_fn
    unreachable)
  (start $start_fn)

  ;; f() = 1 (never reachable: instantiation fails first)
  (func $f (export "f") (result i32)
    (i32.const 1))
)
