;; Resource bomb: unbounded recursion. `recurse` never returns; it must end in a stack-overflow trap, never crash the host.
(module
  ;; The add after the call keeps every frame live (no tail call possible).
  (func $recurse (export "recurse") (result i32)
    (i32.add (call $recurse) (i32.const 1)))
)
