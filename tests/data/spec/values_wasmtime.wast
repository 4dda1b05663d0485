;; References wasmer-python cannot make: a non-null externref from the host.
(module
  (func (export "eid") (param externref) (result externref) (local.get 0))
  (func (export "enull") (param externref) (result i32) (ref.is_null (local.get 0)))
  (func (export "fref") (result funcref) (ref.func 0))
  (elem declare func 0))
(assert_return (invoke "eid" (ref.extern 7)) (ref.extern 7))
(assert_return (invoke "enull" (ref.extern 1)) (i32.const 0))
