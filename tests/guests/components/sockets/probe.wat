;; The core module of the sockets probe (tests/component_guests.py makes it a component
;; with wasm-tools component embed + new): asks for the instance network, then resolves
;; "localhost"; lookup returns 0 when allowed, else 1 + the error code.
(module
  (import "wasi:sockets/instance-network@0.2.0" "instance-network" (func $network (result i32)))
  (import "wasi:sockets/ip-name-lookup@0.2.0" "resolve-addresses"
    (func $resolve (param i32 i32 i32 i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (data (i32.const 16) "localhost")
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get 3)))
    (local.get $p))
  (func (export "lookup") (result i32)
    (call $resolve (call $network) (i32.const 16) (i32.const 9) (i32.const 256))
    (if (result i32) (i32.eqz (i32.load8_u (i32.const 256)))
      (then (i32.const 0))
      (else (i32.add (i32.const 1) (i32.load8_u (i32.const 260))))))
)
