;; WASI reactor (what `go build -buildmode=c-shared` or `tinygo -buildmode=c-shared` make): its exports
;; only work after `_initialize`, like a Go runtime that must exist first; otherwise they trap.
;; `report` prints JSON on stdout and returns nothing; `answer` returns 42; both log to stderr.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $ready (mut i32) (i32.const 0))
  (data (i32.const 100) "init done\n")                  ;; 10 bytes
  (data (i32.const 200) "{\"shape\":\"reactor\"}")        ;; 19 bytes
  (data (i32.const 300) "computing the answer\n")       ;; 21 bytes
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func $need_init (if (i32.eqz (global.get $ready)) (then unreachable)))
  (func (export "_initialize")
    (global.set $ready (i32.const 1))
    (call $write (i32.const 2) (i32.const 100) (i32.const 10)))
  (func (export "report")
    (call $need_init)
    (call $write (i32.const 1) (i32.const 200) (i32.const 19)))
  (func (export "answer") (result i32)
    (call $need_init)
    (call $write (i32.const 2) (i32.const 300) (i32.const 21))
    (i32.const 42)))
