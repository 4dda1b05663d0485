;; Demonstrates the memory limit: memory.grow fails (-1) at the policy limit instead of exhausting the host. Try: wasmsbx run examples/memory_hog.wat hog
;; hog() prints how many 64 KiB pages it got, in 64 MiB steps (1024 under a 64MB limit, 2048 under 128MB); grow N asks for N single pages: wasmsbx run examples/memory_hog.wat grow 100
(module
  ;; Starts empty (0 pages) with no maximum, so only the sandbox limit stops it.
  (memory (export "memory") 0)

  ;; grow(n): call memory.grow 1 page at a time, n times or until it fails
  ;; (returns -1); returns the number of pages obtained (0 .. n).
  (func $grow (export "grow") (param $n i32) (result i32)
    (local $got i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $got) (local.get $n)))
        (br_if $done (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
        (local.set $got (i32.add (local.get $got) (i32.const 1)))
        (br $next)))
    (local.get $got))

  ;; hog(): grow by 1024 pages (64 MiB) at a time, forever, writing a byte into
  ;; each new chunk; when memory.grow returns -1 (limit reached) it returns the
  ;; total number of pages the module holds (a multiple of 1024; never traps).
  ;; Without any limit it stops at the wasm32 ceiling of 65536 pages (4 GiB).
  (func $hog (export "hog") (result i32)
    (local $old i32)
    (block $done
      (loop $next
        (local.set $old (memory.grow (i32.const 1024)))
        (br_if $done (i32.eq (local.get $old) (i32.const -1)))
        ;; touch the first byte of the new chunk so the pages are really used
        (i32.store8 (i32.shl (local.get $old) (i32.const 16)) (i32.const 1))
        (br $next)))
    (memory.size))
)
