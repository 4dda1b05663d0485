;; A plugin that calls back into its host: the host grants env.log (a string by pointer
;; and length) and env.random (an i64), nothing else. README "Python API" runs it:
;;   wasmsbx.Sandbox("examples/plugin.wat", imports={"env": {"log": log, "random": rnd}})
;; greet(n): logs "hello from the plugin" n times, returns host random() + n.
(module
  (import "env" "log" (func $log (param i32 i32)))
  (import "env" "random" (func $random (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 64) "hello from the plugin")
  (func (export "greet") (param $n i32) (result i64)
    (local $i i32)
    (block $done
      (loop $again
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (call $log (i32.const 64) (i32.const 21))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $again)))
    (i64.add (call $random) (i64.extend_i32_u (local.get $n)))))
