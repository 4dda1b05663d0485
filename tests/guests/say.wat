;; A guest that prints "hi\n" to WASI stdout while working: say(x) prints, returns x;
;; it also speaks the streaming ABI (process echoes each chunk and prints "hi").
;; Batch and stream results must not be mixed with what a guest prints.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hi\n")
  (func $hi
    (i32.store (i32.const 0) (i32.const 16))  ;; iovec.buf
    (i32.store (i32.const 4) (i32.const 3))   ;; iovec.len
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "say") (param $x i32) (result i32)
    (call $hi)
    (local.get $x))
  (func (export "alloc") (param $len i32) (result i32)
    (i32.shl
      (memory.grow (i32.shr_u (i32.add (local.get $len) (i32.const 65535)) (i32.const 16)))
      (i32.const 16)))
  (func (export "process") (param $ptr i32) (param $len i32) (result i32 i32)
    (call $hi)
    (local.get $ptr)
    (local.get $len))
)
