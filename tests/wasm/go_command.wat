;; Shaped like a Go (GOOS=wasip1) command that also has a //go:wasmexport `run` (upstream's FL client):
;; a `go:buildid` custom section, `_start` brings the "runtime" up and runs main, and `run` called
;; before that traps with Go's own message, as Go's runtime does.
(module
  (@custom "go:buildid" "propeller-test")
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $runtime (mut i32) (i32.const 0))
  (data (i32.const 100) "runtime: wasmexport function called before runtime initialization\n\tcall _start first\n") ;; 85
  (data (i32.const 300) "main: training\n")                 ;; 15 bytes
  (data (i32.const 400) "{\"from\":\"go main\"}\n")         ;; 19 bytes
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func $main
    (call $write (i32.const 2) (i32.const 300) (i32.const 15))
    (call $write (i32.const 1) (i32.const 400) (i32.const 19)))
  (func (export "_start") (global.set $runtime (i32.const 1)) (call $main))
  (func (export "run")
    (if (i32.eqz (global.get $runtime))
      (then (call $write (i32.const 2) (i32.const 100) (i32.const 85)) unreachable))
    (call $main)))
