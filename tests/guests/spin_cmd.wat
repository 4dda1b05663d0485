;; Resource bomb as a command: exports `_start` (no imports, no WASI) that loops forever; only fuel or a timeout can stop it.
(module
  (memory (export "memory") 1)
  (func $_start (export "_start")
    (loop $forever
      (br $forever)))
)
