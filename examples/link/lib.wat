;; A library module for linking (README "Linking"): a counter with a shared memory.
(module
  (memory (export "memory") 1)
  (global $count (mut i32) (i32.const 0))
  (global (export "version") i32 (i32.const 3))
  (func (export "bump") (param $by i32) (result i32)
    (global.set $count (i32.add (global.get $count) (local.get $by)))
    (global.get $count)))
