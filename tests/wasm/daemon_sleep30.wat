;; WASI command that runs until stopped: prints "first line" to stdout, then forever sleeps 30 s in
;; poll_oneoff (one relative CLOCK_MONOTONIC subscription) and prints "tick". A stop or the wall-time
;; limit must end it while it sleeps: the proplet's own poll_oneoff wakes for them (wasip1_poll).
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 200) "first line\n")
  (data (i32.const 220) "tick\n")
  (func $print (param $at i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $at))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func $sleep
    ;; one clock subscription at 64: userdata 0, tag 0 (clock) at +8, clock id 1 (monotonic) at +16,
    ;; timeout 30 s at +24, precision 0 at +32, flags 0 (relative) at +40; the event goes to 128
    (i64.store (i32.const 64) (i64.const 0))
    (i32.store8 (i32.const 72) (i32.const 0))
    (i32.store (i32.const 80) (i32.const 1))
    (i64.store (i32.const 88) (i64.const 30000000000))
    (i64.store (i32.const 96) (i64.const 0))
    (i32.store16 (i32.const 104) (i32.const 0))
    (drop (call $poll (i32.const 64) (i32.const 128) (i32.const 1) (i32.const 160))))
  (func (export "_start")
    (call $print (i32.const 200) (i32.const 11))
    (loop $forever
      (call $sleep)
      (call $print (i32.const 220) (i32.const 5))
      (br $forever))))
