;; Resource bomb: grows a funcref table (no maximum) one slot at a time until table.grow fails; must stop at the policy's table limit.
(module
  (table $t 0 funcref)

  ;; grow_table(): table.grow by 1 in a loop until it returns -1; returns the
  ;; final table size (elements). Never traps.
  (func $grow_table (export "grow_table") (result i32)
    (block $done
      (loop $next
        (br_if $done
          (i32.eq (table.grow $t (ref.null func) (i32.const 1)) (i32.const -1)))
        (br $next)))
    (table.size $t))

  ;; size(): current table size, for checks after grow_table.
  (func $size (export "size") (result i32)
    (table.size $t))
)
