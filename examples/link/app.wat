;; An application linked against lib.wat: it imports lib's function, memory and global.
(module
  (import "lib" "bump" (func $bump (param i32) (result i32)))
  (import "lib" "memory" (memory 1))
  (import "lib" "version" (global $version i32))
  (func (export "run") (param $times i32) (result i32)
    (local $last i32)
    (block $done
      (loop $again
        (br_if $done (i32.eqz (local.get $times)))
        (local.set $last (call $bump (global.get $version)))
        (local.set $times (i32.sub (local.get $times) (i32.const 1)))
        (br $again)))
    (i32.store (i32.const 0) (local.get $last))
    (local.get $last)))
