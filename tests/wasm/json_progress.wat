;; WASI command shaped like a real workload (upstream's FL client): progress lines on stderr, one JSON
;; object on stdout, exit 0. Memory map: 0 iov, 8 nwritten, 100.. texts.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "progress: loading model\n")            ;; 24 bytes
  (data (i32.const 200) "progress: epoch 1/2 loss=0.50\n")      ;; 30 bytes
  (data (i32.const 300) "progress: epoch 2/2 loss=0.25\n")      ;; 30 bytes
  (data (i32.const 400) "{\"round_id\":\"r1\",\"num_samples\":32,\"metrics\":{\"loss\":0.25}}\n")  ;; 59 bytes
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start")
    (call $write (i32.const 2) (i32.const 100) (i32.const 24))
    (call $write (i32.const 2) (i32.const 200) (i32.const 30))
    (call $write (i32.const 2) (i32.const 300) (i32.const 30))
    (call $write (i32.const 1) (i32.const 400) (i32.const 59))))
