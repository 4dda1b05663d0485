;; The core module of the amplify component (wit/world.wit). Memory: 1 MiB of 'a' (or
;; U+001F) at 0, the result's (ptr, len) at 0x100000, its elements from 0x100010,
;; cabi_realloc's arena from 0x300000, floats and enum cases from 0x400000.
(module
  (memory (export "memory") 200)
  (global $top (mut i32) (i32.const 0x300000))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $r i32)
    global.get $top local.set $r
    global.get $top local.get 3 i32.add global.set $top
    local.get $r)
  ;; n elements (ptr 0, len 1 MiB of $byte) and the list of them: the return area
  (func $aliased (param $n i32) (param $byte i32) (result i32)
    (local $i i32)
    (memory.fill (i32.const 0) (local.get $byte) (i32.const 0x100000))
    (block $done
      (loop $l
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (i32.store (i32.add (i32.const 0x100010) (i32.shl (local.get $i) (i32.const 3)))
          (i32.const 0))
        (i32.store offset=4 (i32.add (i32.const 0x100010) (i32.shl (local.get $i) (i32.const 3)))
          (i32.const 0x100000))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $l)))
    (i32.store (i32.const 0x100000) (i32.const 0x100010))
    (i32.store (i32.const 0x100004) (local.get $n))
    (i32.const 0x100000))
  (func (export "strings") (param i32) (result i32) (call $aliased (local.get 0) (i32.const 0x61)))
  (func (export "lists") (param i32) (result i32) (call $aliased (local.get 0) (i32.const 0x61)))
  (func (export "controls") (param i32) (result i32) (call $aliased (local.get 0) (i32.const 0x1f)))
  (func (export "floats") (param $n i32) (result i32)
    (local $i i32)
    (block $done
      (loop $l
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (f64.store (i32.add (i32.const 0x400000) (i32.shl (local.get $i) (i32.const 3)))
          (f64.const -1.2345678901234567e-300))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $l)))
    (i32.store (i32.const 0x100000) (i32.const 0x400000))
    (i32.store (i32.const 0x100004) (local.get $n))
    (i32.const 0x100000))
  (func (export "names") (param $n i32) (result i32)
    (memory.fill (i32.const 0x400000) (i32.const 0) (local.get $n))
    (i32.store (i32.const 0x100000) (i32.const 0x400000))
    (i32.store (i32.const 0x100004) (local.get $n))
    (i32.const 0x100000))
  (func (export "bytes") (param $n i32) (result i32)
    (i32.store (i32.const 0x100000) (i32.const 0x300000))
    (i32.store (i32.const 0x100004) (local.get $n))
    (i32.const 0x100000))
)
