;; Resource bomb: memory.grow 1 page at a time (no maximum) until it returns -1; must stop at the policy's memory limit.
(module
  (memory (export "memory") 1)

  ;; run(): grows until memory.grow fails, then returns the total number of
  ;; 64 KiB pages (so pages * 65536 <= the memory limit). Never traps.
  ;; With no limit at all it stops at the wasm32 ceiling: 65536 pages (4 GiB).
  (func $run (export "run") (result i32)
    (block $done
      (loop $next
        (br_if $done (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
        (br $next)))
    (memory.size))
)
