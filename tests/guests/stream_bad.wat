;; Streaming-ABI misbehaviour: process returns an output range past the end of memory
;; (the host must refuse it); bad_sig has the wrong signature for a process function.
(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "process") (param i32 i32) (result i64)
    (i64.const 0x0000FFF000001000))  ;; ptr 0xFFF0 (65520), len 4096: beyond 64 KiB
  (func (export "bad_sig") (param i32 i32) (result i32) (i32.const 0))
)
