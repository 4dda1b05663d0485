;; A streaming module whose alloc returns an address past the end of its memory.
(module (memory (export "memory") 1)
 (func (export "alloc") (param i32) (result i32) (i32.const 70000))
 (func (export "process") (param i32 i32) (result i32 i32) (i32.const 0) (i32.const 0)))
