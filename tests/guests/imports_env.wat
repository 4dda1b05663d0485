;; Imports a non-WASI host function env.host_log; a sandbox that provides only WASI must refuse to link it (module error), not crash.
(module
  (import "env" "host_log" (func $host_log (param i32)))

  ;; f(): calls host_log(42), then returns 42.
  (func $f (export "f") (result i32)
    (call $host_log (i32.const 42))
    (i32.const 42))
)
