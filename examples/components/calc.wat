;; A small WebAssembly component written by hand with the canonical ABI: strings, a
;; list, a record, a result, and one function inside an interface. The README's
;; component examples run it; build.sh turns it into calc.wasm (wasm-tools parse).
;;   wasmsbx run examples/components/calc.wasm greet World      -> Hello, World
(component
  (core module $m
    (memory (export "memory") 1)
    (global $heap (mut i32) (i32.const 4096))
    ;; a bump allocator: cabi_realloc(old, old_size, align, new_size)
    (func $realloc (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
                             (i32.sub (i32.const 0) (local.get 2))))
      (global.set $heap (i32.add (local.get $p) (local.get 3)))
      (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
        (then (drop (memory.grow (i32.const 16)))))
      (local.get $p))
    (data (i32.const 16) "Hello, ")
    (data (i32.const 32) "division by zero")
    ;; greet(name) -> "Hello, " + name
    (func (export "greet") (param $p i32) (param $n i32) (result i32)
      (local $out i32) (local $ret i32)
      (local.set $out (call $realloc (i32.const 0) (i32.const 0) (i32.const 1)
                                     (i32.add (local.get $n) (i32.const 7))))
      (memory.copy (local.get $out) (i32.const 16) (i32.const 7))
      (memory.copy (i32.add (local.get $out) (i32.const 7)) (local.get $p) (local.get $n))
      (local.set $ret (call $realloc (i32.const 0) (i32.const 0) (i32.const 4) (i32.const 8)))
      (i32.store (local.get $ret) (local.get $out))
      (i32.store offset=4 (local.get $ret) (i32.add (local.get $n) (i32.const 7)))
      (local.get $ret))
    (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
    ;; sum(list<f64>) -> f64
    (func (export "sum") (param $p i32) (param $n i32) (result f64)
      (local $acc f64)
      (block $done (loop $next
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $acc (f64.add (local.get $acc) (f64.load (local.get $p))))
        (local.set $p (i32.add (local.get $p) (i32.const 8)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $next)))
      (local.get $acc))
    ;; area(rect) -> u64: width * height
    (func (export "area") (param $w i32) (param $h i32) (result i64)
      (i64.mul (i64.extend_i32_u (local.get $w)) (i64.extend_i32_u (local.get $h))))
    ;; divide(a: s64, b: s64) -> result<s64, string>
    (func (export "divide") (param $a i64) (param $b i64) (result i32)
      (if (i64.eqz (local.get $b))
        (then
          (i32.store8 (i32.const 256) (i32.const 1))
          (i32.store (i32.const 264) (i32.const 32))
          (i32.store (i32.const 268) (i32.const 16)))
        (else
          (i32.store8 (i32.const 256) (i32.const 0))
          (i64.store (i32.const 264) (i64.div_s (local.get $a) (local.get $b)))))
      (i32.const 256))
    (func (export "double") (param i64) (result i64) (i64.mul (local.get 0) (i64.const 2)))
  )
  (core instance $i (instantiate $m))
  (alias core export $i "memory" (core memory $mem))
  (alias core export $i "cabi_realloc" (core func $realloc))

  (type $rect' (record (field "width" u32) (field "height" u32)))
  (export $rect "rect" (type $rect'))

  (func (export "greet") (param "name" string) (result string)
    (canon lift (core func $i "greet") (memory $mem) (realloc $realloc) string-encoding=utf8))
  (func (export "add") (param "a" s32) (param "b" s32) (result s32)
    (canon lift (core func $i "add")))
  (func (export "sum") (param "xs" (list f64)) (result f64)
    (canon lift (core func $i "sum") (memory $mem) (realloc $realloc)))
  (func (export "area") (param "r" $rect) (result u64)
    (canon lift (core func $i "area")))
  (func (export "divide") (param "a" s64) (param "b" s64) (result (result s64 (error string)))
    (canon lift (core func $i "divide") (memory $mem) (realloc $realloc) string-encoding=utf8))

  (func $double (param "x" s64) (result s64) (canon lift (core func $i "double")))
  (instance $api (export "double" (func $double)))
  (export "example:calc/api@0.1.0" (instance $api))
)
