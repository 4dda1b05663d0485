;; A reactor driven through memory: no _start; the host allocates guest memory with the
;; exported allocator, writes a string there, calls an export, reads the answer back.
;;   alloc(len) -> ptr          a bump allocator over the memory (grows it as needed)
;;   reset()                    frees everything
;;   upper(ptr, len) -> ptr     a new copy of the string, ASCII letters upper-cased
;;   count(ptr, len, byte) -> n how many times byte occurs
(module
  (memory (export "memory") 1)
  (global $next (mut i32) (i32.const 1024))
  (func $alloc (export "alloc") (param $len i32) (result i32)
    (local $ptr i32) (local $end i32)
    (local.set $ptr (global.get $next))
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (if (i32.eq (memory.grow
                      (i32.add (i32.div_u (i32.sub (local.get $end)
                                                   (i32.mul (memory.size) (i32.const 65536)))
                                          (i32.const 65536))
                               (i32.const 1)))
                    (i32.const -1))
          (then unreachable))))
    (global.set $next (local.get $end))
    (local.get $ptr))
  (func (export "reset") (global.set $next (i32.const 1024)))
  (func (export "upper") (param $src i32) (param $len i32) (result i32)
    (local $dst i32) (local $i i32) (local $c i32)
    (local.set $dst (call $alloc (local.get $len)))
    (block $done
      (loop $again
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (local.set $c (i32.load8_u (i32.add (local.get $src) (local.get $i))))
        (if (i32.and (i32.ge_u (local.get $c) (i32.const 97))
                     (i32.le_u (local.get $c) (i32.const 122)))
          (then (local.set $c (i32.sub (local.get $c) (i32.const 32)))))
        (i32.store8 (i32.add (local.get $dst) (local.get $i)) (local.get $c))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $again)))
    (local.get $dst))
  (func (export "count") (param $src i32) (param $len i32) (param $byte i32) (result i32)
    (local $i i32) (local $n i32)
    (block $done
      (loop $again
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (if (i32.eq (i32.load8_u (i32.add (local.get $src) (local.get $i))) (local.get $byte))
          (then (local.set $n (i32.add (local.get $n) (i32.const 1)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $again)))
    (local.get $n)))
