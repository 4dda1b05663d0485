;; Demonstrates fuel/timeout limits on CPU-bound code. Try: wasmsbx run examples/loop.wat spin   (never returns; stopped by the policy's fuel or timeout limit)
;; Bounded work: wasmsbx run examples/loop.wat count 1000000   (prints 1000000; the fuel it burns grows with n)
(module
  ;; spin() never returns: an endless loop with no calls and no memory access.
  (func $spin (export "spin")
    (loop $forever
      (br $forever)))

  ;; count(n) loops n times and returns the number of iterations done (n, or 0 if n <= 0).
  (func $count (export "count") (param $n i64) (result i64)
    (local $i i64)
    (block $done
      (loop $next
        (br_if $done (i64.ge_s (local.get $i) (local.get $n)))
        (local.set $i (i64.add (local.get $i) (i64.const 1)))
        (br $next)))
    (local.get $i))
)
