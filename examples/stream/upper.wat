;; A streaming guest in WAT: uppercases ASCII letters, chunk by chunk (stateless, so a
;; --checkpoint resume is exact). It returns its output location as two i32 results
;; (multi-value). Try:
;;   printf 'hello, stream\n' | wasmsbx run examples/stream/upper.wat process --stream
;; ABI: see examples/stream/README.md.
(module
  (memory (export "memory") 1)

  ;; alloc(len) -> ptr: grows memory by enough pages for len bytes and returns the
  ;; start of the new pages (never 0; 0 would mean "could not allocate").
  (func (export "alloc") (param $len i32) (result i32)
    (local $old i32)
    (local.set $old
      (memory.grow (i32.shr_u (i32.add (local.get $len) (i32.const 65535)) (i32.const 16))))
    (if (i32.eq (local.get $old) (i32.const -1)) (then (return (i32.const 0))))
    (i32.shl (local.get $old) (i32.const 16)))

  ;; process(ptr, len) -> (out_ptr, out_len): uppercase in place, output = input.
  (func (export "process") (param $ptr i32) (param $len i32) (result i32 i32)
    (local $p i32) (local $end i32) (local $c i32)
    (local.set $p (local.get $ptr))
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $c (i32.load8_u (local.get $p)))
        ;; 'a' <= c <= 'z'  <=>  (c - 'a') <u 26
        (if (i32.lt_u (i32.sub (local.get $c) (i32.const 97)) (i32.const 26))
          (then (i32.store8 (local.get $p) (i32.sub (local.get $c) (i32.const 32)))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $next)))
    (local.get $ptr)
    (local.get $len))
)
