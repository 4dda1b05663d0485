;; Resource bomb: `spin` is an endless loop (no calls, no memory); only fuel or a timeout/interrupt can stop it.
(module
  (func $spin (export "spin")
    (loop $forever
      (br $forever)))
)
