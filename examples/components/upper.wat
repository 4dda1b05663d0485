;; A component for `wasmsbx run --stream`: process(chunk: list<u8>) -> list<u8> is
;; called once per chunk of stdin, and what it returns is written to stdout. This one
;; upper-cases ASCII letters in place. build.sh turns it into upper.wasm.
;;   echo 'shout this' | wasmsbx run examples/components/upper.wasm --stream   -> SHOUT THIS
(component
  (core module $m
    (memory (export "memory") 1)
    (global $heap (mut i32) (i32.const 1024))
    ;; cabi_realloc(old, old_size, align, new_size): a bump allocator that process
    ;; empties after each chunk, so memory stays one chunk large however long the stream
    (func $realloc (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32) (local $end i32)
      (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
                             (i32.sub (i32.const 0) (local.get 2))))
      (local.set $end (i32.add (local.get $p) (local.get 3)))
      (block $ok (loop $grow
        (br_if $ok (i32.le_u (local.get $end) (i32.mul (memory.size) (i32.const 65536))))
        (if (i32.eq (memory.grow (i32.const 16)) (i32.const -1)) (then unreachable))
        (br $grow)))
      (global.set $heap (local.get $end))
      (local.get $p))
    ;; process(ptr, len): the chunk upper-cased in place; returns its (ptr, len) at 0
    (func (export "process") (param $p i32) (param $n i32) (result i32)
      (local $i i32) (local $c i32)
      (block $done (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $c (i32.load8_u (i32.add (local.get $p) (local.get $i))))
        (if (i32.lt_u (i32.sub (local.get $c) (i32.const 97)) (i32.const 26))
          (then (i32.store8 (i32.add (local.get $p) (local.get $i))
                            (i32.sub (local.get $c) (i32.const 32)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
      (global.set $heap (i32.const 1024))  ;; the next chunk reuses the same bytes
      (i32.store (i32.const 0) (local.get $p))
      (i32.store (i32.const 4) (local.get $n))
      (i32.const 0))
  )
  (core instance $i (instantiate $m))
  (alias core export $i "memory" (core memory $mem))
  (alias core export $i "cabi_realloc" (core func $realloc))
  (func (export "process") (param "chunk" (list u8)) (result (list u8))
    (canon lift (core func $i "process") (memory $mem) (realloc $realloc)))
)
