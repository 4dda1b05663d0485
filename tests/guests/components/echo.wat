;; Echo functions for variant-like WIT types (canonical ABI by hand): each returns its
;; argument, so a round trip checks how wasmsbx passes and reads every case through
;; wasmtime-py (tagged or untagged forms).
(component
  (core module $m
    (memory (export "memory") 1)
    (global $heap (mut i32) (i32.const 4096))
    (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
                             (i32.sub (i32.const 0) (local.get 2))))
      (global.set $heap (i32.add (local.get $p) (local.get 3)))
      (local.get $p))
    ;; disc at 0, two 32-bit payload words at 4 and 8
    (func (export "three") (param i32 i32 i32) (result i32)
      (i32.store8 (i32.const 64) (local.get 0))
      (i32.store (i32.const 68) (local.get 1))
      (i32.store (i32.const 72) (local.get 2))
      (i32.const 64))
    ;; disc at 0, one 32-bit payload word at 4
    (func (export "two") (param i32 i32) (result i32)
      (i32.store8 (i32.const 128) (local.get 0))
      (i32.store (i32.const 132) (local.get 1))
      (i32.const 128))
    ;; option<option<u8>>: bytes 0, 1, 2
    (func (export "nested") (param i32 i32 i32) (result i32)
      (i32.store8 (i32.const 192) (local.get 0))
      (i32.store8 (i32.const 193) (local.get 1))
      (i32.store8 (i32.const 194) (local.get 2))
      (i32.const 192))
    ;; variant { x(u8), y(u16) }: disc at 0, payload at 2
    (func (export "small") (param i32 i32) (result i32)
      (i32.store8 (i32.const 256) (local.get 0))
      (i32.store16 (i32.const 258) (local.get 1))
      (i32.const 256))
    ;; result<s64, bool>: disc at 0, payload at 8
    (func (export "wide") (param i32 i64) (result i32)
      (i32.store8 (i32.const 320) (local.get 0))
      (i64.store (i32.const 328) (local.get 1))
      (i32.const 320))
  )
  (core instance $i (instantiate $m))
  (alias core export $i "memory" (core memory $mem))
  (alias core export $i "cabi_realloc" (core func $realloc))

  (type $shape' (variant (case "num" s32) (case "text" string) (case "empty")))
  (export $shape "shape-type" (type $shape'))
  (type $size' (variant (case "x" u8) (case "y" u16)))
  (export $size "size-type" (type $size'))

  (func (export "maybe-fail") (param "r" (result (error string))) (result (result (error string)))
    (canon lift (core func $i "three") (memory $mem) (realloc $realloc) string-encoding=utf8))
  (func (export "either") (param "r" (result u32 (error u32))) (result (result u32 (error u32)))
    (canon lift (core func $i "two") (memory $mem)))
  (func (export "nested") (param "o" (option (option u8))) (result (option (option u8)))
    (canon lift (core func $i "nested") (memory $mem)))
  (func (export "shape") (param "s" $shape) (result $shape)
    (canon lift (core func $i "three") (memory $mem) (realloc $realloc) string-encoding=utf8))
  (func (export "size") (param "s" $size) (result $size)
    (canon lift (core func $i "small") (memory $mem)))
  (func (export "wide") (param "r" (result s64 (error bool))) (result (result s64 (error bool)))
    (canon lift (core func $i "wide") (memory $mem)))
)
