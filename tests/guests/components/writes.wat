;; Non-blocking writes to stdout (tests/test_component_writes_and_exits.py, red team round
;; 76): [method]output-stream.write, never flushed, never checked with check-write. Its
;; wasi:cli/run writes 600 bytes of "A" twice; go(n, len) writes len bytes n times and
;; gives the number of writes that failed. wasmtime queued such writes for a task that ran
;; after the call had returned: `wasmsbx run` printed nothing.
(component
  (import "wasi:io/error@0.2.0" (instance $err (export "error" (type (sub resource)))))
  (alias export $err "error" (type $error))
  (import "wasi:io/streams@0.2.0" (instance $streams
    (alias outer 1 $error (type $e))
    (export "error" (type $e2 (eq $e)))
    (export "output-stream" (type $os (sub resource)))
    (type $se (variant (case "last-operation-failed" (own $e2)) (case "closed")))
    (export "stream-error" (type $se2 (eq $se)))
    (export "[method]output-stream.write"
      (func (param "self" (borrow $os)) (param "contents" (list u8)) (result (result (error $se2)))))))
  (alias export $streams "output-stream" (type $output-stream))
  (import "wasi:cli/stdout@0.2.0" (instance $stdout
    (alias outer 1 $output-stream (type $os))
    (export "output-stream" (type $t (eq $os)))
    (export "get-stdout" (func (result (own $t))))))
  (core module $mem (memory (export "memory") 1))
  (core instance $m (instantiate $mem))
  (alias core export $m "memory" (core memory $memory))
  (core func $get (canon lower (func $stdout "get-stdout")))
  (core func $write (canon lower (func $streams "[method]output-stream.write") (memory $memory)))
  (core module $writer
    (import "h" "get" (func $get (result i32)))
    (import "h" "write" (func $write (param i32 i32 i32 i32)))
    (import "m" "memory" (memory 1))
    ;; n writes of len bytes at 1024; the result of each at 16 (tag 1: an error)
    (func $go (export "go") (param $n i32) (param $len i32) (result i32)
      (local $out i32) (local $failed i32)
      (local.set $out (call $get))
      (memory.fill (i32.const 1024) (i32.const 65) (local.get $len))
      (block $done
        (loop $again
          (br_if $done (i32.eqz (local.get $n)))
          (call $write (local.get $out) (i32.const 1024) (local.get $len) (i32.const 16))
          (local.set $failed (i32.add (local.get $failed) (i32.load8_u (i32.const 16))))
          (local.set $n (i32.sub (local.get $n) (i32.const 1)))
          (br $again)))
      (local.get $failed))
    (func (export "run") (result i32)
      (drop (call $go (i32.const 2) (i32.const 600)))
      (i32.const 0)))
  (core instance $w (instantiate $writer
    (with "h" (instance (export "get" (func $get)) (export "write" (func $write))))
    (with "m" (instance $m))))
  (func $run (result (result)) (canon lift (core func $w "run")))
  (instance $run-instance (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $run-instance))
  (func (export "go") (param "n" u32) (param "len" u32) (result u32)
    (canon lift (core func $w "go"))))
